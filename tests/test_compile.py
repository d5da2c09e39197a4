"""`train --compile`: torch.compile of each decoder layer changes how the step runs, never what it computes.

On the CPU (inductor's C++ backend) with the tiny random Falcon: the same losses as the eager run, step by step, and
a clear refusal where no compiler exists. Its speed on a GPU is a benchmark's business (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from falcon_desktop.tiny import asset_path

DEMO = str(asset_path("demo-squad.json"))


def _train(model: Path, output: Path, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "falcon_desktop", "train", "--model", str(model), "--data", DEMO, "--output",
               str(output), "--max-steps", "3", "--batch-size", "4", "--device", "cpu", "--eval-examples", "0",
               "--no-quantize", *flags]
    return subprocess.run(command, capture_output=True, text=True, encoding="utf-8", timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})})


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def _losses(run: Path) -> list[float]:
    return [row["loss"] for row in _metrics(run)]


def test_compiled_layers_train_the_same_losses(tiny_model_dir: Path, tmp_path: Path):
    eager = _train(tiny_model_dir, tmp_path / "eager")
    compiled = _train(tiny_model_dir, tmp_path / "compiled", "--compile")
    assert eager.returncode == 0, eager.stderr[-3000:]
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert "Compiling 2 decoder layers" in compiled.stdout + compiled.stderr
    expected, got = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert len(got) == len(expected) == 3
    # Lengths are padded to multiples of 8, so a new remainder never recompiles the layers mid-run.
    assert all(row["padded_tokens"] % 8 == 0 for row in _metrics(tmp_path / "compiled"))
    for step, (a, b) in enumerate(zip(expected, got), 1):  # fused kernels round differently, nothing more
        assert abs(a - b) <= 1e-3 * abs(a), f"step {step}: eager {a}, compiled {b}"
    # The adapter is saved under the same names (compiling in place adds no `_orig_mod.`): ask, eval, merge read it.
    from safetensors import safe_open

    def names(run: Path) -> set[str]:
        with safe_open(str(run / "adapter" / "adapter_model.safetensors"), "pt") as adapter:
            return set(adapter.keys())
    assert names(tmp_path / "compiled") == names(tmp_path / "eager")


def test_a_compile_error_mid_run_continues_eagerly(tiny_model_dir: Path, tmp_path: Path):
    """A compiler that fails (here a C++ compiler that is not there, as on a broken install) costs speed, not the
    run: the step is redone with eager layers, and the run trains exactly as an eager one and says what happened."""
    eager = _train(tiny_model_dir, tmp_path / "eager", "--lora-dropout", "0")  # the failed try draws random numbers
    broken = _train(tiny_model_dir, tmp_path / "broken", "--compile", "--lora-dropout", "0",
                    env={"CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")})
    assert eager.returncode == 0 and broken.returncode == 0, broken.stderr[-3000:]
    output = " ".join((broken.stdout + broken.stderr).split())
    assert "torch.compile failed at step 1" in output and "Continuing without it" in output
    # Redone unpadded, as the card's compile_style "eager" says (a rebuild of its batches, unsloth_compare.py, pads
    # as the card says): the eager run's batches, the same losses to rounding.
    assert _losses(tmp_path / "broken") == pytest.approx(_losses(tmp_path / "eager"), rel=1e-5)
    padded = [[row["padded_tokens"] for row in _metrics(tmp_path / run)] for run in ("broken", "eager")]
    assert padded[0] == padded[1]
    card = json.loads((tmp_path / "broken" / "run.json").read_text(encoding="utf-8"))
    assert card["status"] == "finished" and card["train"]["compile_style"] == "eager"
    assert [event["event"] for event in card["events"]] == ["compile_failed"]


def test_compile_is_refused_for_alibi_falcon(tiny_model_dir: Path, tmp_path: Path):
    """ALiBi Falcon layers run transformers' attention, whose compiled gradients were off: refused before loading."""
    import shutil

    alibi = tmp_path / "alibi"
    shutil.copytree(tiny_model_dir, alibi)
    config = json.loads((alibi / "config.json").read_text(encoding="utf-8"))
    (alibi / "config.json").write_text(json.dumps({**config, "alibi": True}), encoding="utf-8")
    result = _train(alibi, tmp_path / "run", "--compile")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "--compile is not supported for Falcon models with ALiBi" in result.stderr
    assert "Train without --compile" in result.stderr and "Traceback" not in result.stderr


def test_compile_without_a_compiler_is_refused_with_the_fix(tiny_model_dir: Path, tmp_path: Path):
    empty = tmp_path / "no-tools"
    empty.mkdir()
    result = _train(tiny_model_dir, tmp_path / "run", "--compile", env={"PATH": str(empty)})
    assert result.returncode == 1, result.stderr[-3000:]
    assert "--compile cannot run here: no C++ compiler" in result.stderr
    assert "Train without --compile" in result.stderr and "Traceback" not in result.stderr


def test_cuda_graphs_only_on_a_gpu_with_no_checkpointed_layer():
    """A checkpointed layer replays its graph inside backward and overwrote outputs backward still needed (Falcon-7B
    on the H200); the CPU has no CUDA graphs. Graphs pad to a coarser multiple: each new shape compiles again."""
    from falcon_desktop.model import PAD_MULTIPLE, compile_style

    assert compile_style(False, "cuda", 0) == "eager"
    assert compile_style(True, "cuda", 0) == "graphs"
    assert compile_style(True, "cuda", 1) == "kernels"
    assert compile_style(True, "cpu", 0) == "kernels"
    assert PAD_MULTIPLE["eager"] == 1 and PAD_MULTIPLE["kernels"] == 8
    assert PAD_MULTIPLE["graphs"] % PAD_MULTIPLE["kernels"] == 0  # graphs keep Inductor's alignment too
    assert 512 // PAD_MULTIPLE["graphs"] <= 8  # at most 8 lengths (each a compile) at the default --seq-len


def test_a_long_gpu_run_without_compile_is_told_how_to_switch():
    from falcon_desktop.model import COMPILE_PAYS_AFTER_STEPS, compile_tip

    long = COMPILE_PAYS_AFTER_STEPS

    def available() -> None:
        return None

    def not_asked() -> None:
        raise AssertionError("compile_unavailable (a Triton import) asked for a run the tip does not suit")

    tip = compile_tip(False, "cuda", 0, long, available, False, False, "runs/squad")
    assert tip and f"{long:,} steps" in tip and "falcon-desktop train --resume runs/squad --compile" in tip
    assert compile_tip(True, "cuda", 0, long, not_asked, False, False, "r") is None  # already compiling
    assert compile_tip(False, "cuda", 0, long - 1, not_asked, False, False, "r") is None  # too short to earn it back
    assert compile_tip(False, "cpu", 0, long, not_asked, False, False, "r") is None
    assert compile_tip(False, "cuda", 9, long, not_asked, False, False, "r") is None  # checkpointed: fused kernels
    assert compile_tip(False, "cuda", 0, long, lambda: "Triton is not installed", False, False, "r") is None
    assert compile_tip(False, "cuda", 0, long, available, True, False, "r") is None  # ALiBi Falcon: refused
    assert compile_tip(False, "cuda", 0, long, available, False, True, "r") is None  # several GPUs: refused


def _answer_loss_gradients(model_dir: Path, targets: tuple[str, ...], compiled: bool, dtype,
                           dropout: float = 0.0) -> dict:
    """One forward and backward of the trainer's loss (AnswerLoss inside causal_fast_path, as optimizer_step runs
    it) with the first layer checkpointed; the LoRA gradients."""
    import torch

    from falcon_desktop.attention import causal_fast_path
    from falcon_desktop.distributed import AnswerLoss
    from falcon_desktop.loss import answer_targets
    from falcon_desktop.model import ModelSettings, add_lora, compile_layers, load_base_model, set_checkpointing

    torch.manual_seed(0)
    model = add_lora(load_base_model(ModelSettings(str(model_dir), quantize=False, device="cpu")).model, targets, 4, 8,
                     dropout)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would leave A without a gradient
            torch.nn.init.normal_(parameter, std=0.02)
    model.to(dtype)  # after drawing the weights: float64 draws other numbers
    set_checkpointing(model, 1)
    if compiled:
        compile_layers(model, "kernels")
    model.train()
    input_ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    labels = input_ids.clone()
    labels[:, :8] = -100
    torch.manual_seed(1)  # the dropout masks
    with causal_fast_path(model):
        AnswerLoss(model)(input_ids, *answer_targets(labels)).backward()
    return {name: p.grad.double() for name, p in model.named_parameters() if p.requires_grad}


def _tiny_llama(directory: Path, tokenizer_dir: Path) -> Path:
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(directory)
    for tokenizer_file in tokenizer_dir.glob("tokenizer*"):
        shutil.copy(tokenizer_file, directory)
    return directory


@pytest.mark.parametrize("architecture", ["falcon", "llama"])
def test_compiled_layers_compute_the_true_gradients(architecture: str, tiny_model_dir: Path, tmp_path: Path):
    """Equal losses over a few steps would hide a wrong backward (Adam hides a gradient's scale). Against float64,
    eager float32 and the compiled layers must both be within 1e-4, checkpointed layer or not. The fast path matters:
    compiling transformers' own Falcon attention instead gave gradients 0.4-4% off (torch 2.13, CPU)."""
    import torch

    if architecture == "falcon":
        model_dir, targets = tiny_model_dir, ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
    else:
        model_dir = _tiny_llama(tmp_path / "llama", tiny_model_dir)
        targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    truth = _answer_loss_gradients(model_dir, targets, False, torch.float64)
    assert len(truth) == 2 * 2 * len(targets)  # A and B of every target in both layers
    for compiled in (False, True):
        gradients = _answer_loss_gradients(model_dir, targets, compiled, torch.float32)
        for name, gradient in truth.items():
            error = (gradients[name] - gradient).abs().max() / gradient.abs().max()
            assert error < 1e-4, f"compiled={compiled} {name}: {error:.1e}"


def test_compiled_layers_draw_eagers_dropout_masks(tiny_model_dir: Path):
    """Compiled layers take their random numbers from PyTorch's generator, as eager code does, not from Inductor's
    own: torch.utils.checkpoint saves and replays that generator, so a recomputed layer gets its forward's masks.
    With the same seed, dropout 0.3 and the first layer checkpointed, the compiled gradients are eager's (with
    Inductor's own numbers they were 93% apart here)."""
    import torch

    targets = ("query_key_value", "dense_h_to_4h")
    eager = _answer_loss_gradients(tiny_model_dir, targets, False, torch.float32, dropout=0.3)
    compiled = _answer_loss_gradients(tiny_model_dir, targets, True, torch.float32, dropout=0.3)
    for name, gradient in eager.items():
        assert ((compiled[name] - gradient).norm() / gradient.norm()).item() < 1e-4, name


def test_a_run_resumes_with_or_without_compile(tiny_model_dir: Path, tmp_path: Path):
    """--compile is speed, not maths: a resumed run takes it or leaves it as its command says, and the card says so."""
    run = tmp_path / "run"
    first = _train(tiny_model_dir, run, "--max-steps", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = subprocess.run([sys.executable, "-m", "falcon_desktop", "train", "--resume", str(run), "--max-steps", "3",
                              "--compile"], capture_output=True, text=True, encoding="utf-8", timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Compiling 2 decoder layers" in resumed.stdout + resumed.stderr
    card = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert card["train"]["compile"] is True and card["train"]["compile_style"] == "kernels"
    assert len(_losses(run)) == 3


def _dropout_gradients(model_dir: Path, checkpoint_layers: int, dropout: float = 0.3) -> dict:
    """LoRA gradients of the trainer's loss through compiled layers on CUDA under bf16 autocast (adapters with
    `dropout`): the third step of three, each drawn from the same seed."""
    import torch

    from falcon_desktop.attention import causal_fast_path
    from falcon_desktop.distributed import AnswerLoss
    from falcon_desktop.loss import answer_targets
    from falcon_desktop.model import ModelSettings, add_lora, compile_layers, load_base_model, set_checkpointing

    torch.manual_seed(0)
    loaded = load_base_model(ModelSettings(str(model_dir), quantize=False, device="cuda"))
    model = add_lora(loaded.model, ("q_proj", "v_proj", "gate_proj", "down_proj"), 4, 8, dropout)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    set_checkpointing(model, checkpoint_layers)
    compile_layers(model, "kernels")
    model.train()
    input_ids = torch.randint(0, 100, (4, 32), generator=torch.Generator().manual_seed(1))
    labels = input_ids.clone()
    labels[:, :16] = -100
    input_ids, targets = input_ids.cuda(), [t.cuda() for t in answer_targets(labels)]
    for _ in range(3):  # the first calls compile
        torch.manual_seed(123)
        model.zero_grad(set_to_none=True)
        with causal_fast_path(model), torch.autocast("cuda", dtype=torch.bfloat16):
            AnswerLoss(model)(input_ids, *targets).backward()
    gradients = {name: p.grad.float().cpu() for name, p in model.named_parameters() if p.requires_grad}
    torch._dynamo.reset()
    return gradients


@pytest.mark.gpu
def test_a_checkpointed_compiled_layer_recomputes_its_own_dropout_masks(tiny_model_dir: Path, tmp_path: Path):
    """The same seed draws the same masks, so checkpointing a compiled layer may change its gradients only by the
    rounding it changes without dropout. With Inductor's own random numbers it changed them more (H200, SmolLM2's
    shape, dropout 0.05: 1.1% where dropout 0 was exact). Here (tiny, bf16) rounding alone moves them 0.91%, and
    dropout 0.3 0.86% (H200, transformers 5.17)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (Inductor's CUDA random numbers)")
    model_dir = _tiny_llama(tmp_path / "llama", tiny_model_dir)

    def checkpointing_error(dropout: float) -> float:
        kept, recomputed = _dropout_gradients(model_dir, 0, dropout), _dropout_gradients(model_dir, 1, dropout)
        return max(((recomputed[name] - gradient).norm() / gradient.norm()).item() for name, gradient in kept.items())

    rounding = checkpointing_error(0.0)
    assert checkpointing_error(0.3) <= 1.5 * rounding + 1e-3
