"""Write a merged model as one GGUF file (f16 or q8_0) that llama.cpp, Ollama and LM Studio load.

Follows llama.cpp's `convert_hf_to_gguf.py`: tensor names from the `gguf` package's own name map, Llama's query and
key rows permuted into llama.cpp's rotary layout, Falcon's fused QKV regrouped as all queries, then keys, then values,
1-D tensors (norms, biases) kept in f32, and a matrix whose rows do not split into Q8_0 blocks of 32 kept in f16.
The byte-level BPE tokenizer goes in as llama.cpp's "gpt2" model (tokens, types, merges, special ids), with the
pre-tokenizer recognised the way llama.cpp recognises it (the hash of a check text's token ids). Our Q&A template
goes in as the chat template: a system message is the passage, the user message the question (`chat_template`).
Tensors are read one at a time from the safetensors files, so a 7B model needs no second copy in 32-bit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np

from falcon_desktop import __version__
from falcon_desktop.atomic import write_file
from falcon_desktop.console import info, warn
from falcon_desktop.errors import UserError
from falcon_desktop.prompts import QAPrompt

OUTTYPES = ("f16", "q8_0")
_Q8_BLOCK = 32

# llama.cpp's pre-tokenizer check (convert_hf_to_gguf.py, get_vocab_base_pre): the sha256 of the token ids of this
# text names the pre-tokenizer regex llama.cpp must use. Only the families falcon-desktop trains are listed.
_PRE_CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 "
    "333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= "
    "нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure "
    "I'll make it, 'D you like some tea? We'Ve a'lL"
)
_PRE_BY_HASH = {
    "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed": "falcon",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}


@dataclass(frozen=True)
class ExportReport:
    path: Path
    outtype: str
    architecture: str
    tensors: int
    parameters: int
    bytes: int
    tokenizer_pre: str


def chat_template() -> str:
    """Our Q&A prompt as a Jinja chat template: the system message is the passage, each user message a question.

    Built from `QAPrompt.render` itself (with markers where the passage and question go), so the template in the
    file cannot drift from the one the model was trained on.
    """
    passage, question = "\x00PASSAGE\x00", "\x00QUESTION\x00"
    expressions = {passage: "ns.context", question: "(message['content'] | trim)"}

    def jinja(text: str) -> str:
        pieces = re.split(f"({passage}|{question})", text)
        return "{{ " + " + ".join(expressions.get(piece) or json.dumps(piece) for piece in pieces if piece) + " }}"

    with_context, without_context = jinja(QAPrompt(question, passage).render()), jinja(QAPrompt(question).render())
    return (
        "{%- set ns = namespace(context='') -%}"
        "{%- for message in messages -%}{%- if message['role'] == 'system' -%}"
        "{%- set ns.context = message['content'] | trim -%}{%- endif -%}{%- endfor -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        "{%- if ns.context -%}" + with_context + "{%- else -%}" + without_context + "{%- endif -%}"
        "{%- elif message['role'] == 'assistant' -%}{{ message['content'] | trim }}{{ eos_token }}{{ '\\n\\n' }}"
        "{%- endif -%}{%- endfor -%}"
    )


# ------------------------------------------------------------------------------------------------ tensors
def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise UserError(f"{str(directory)!r} holds no config.json.",
                        "Pass a merged model directory (`falcon-desktop merge --output DIR`).")
    return json.loads(path.read_text(encoding="utf-8"))


def _iter_tensors(directory: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 array) for every tensor of the model's safetensors files, one at a time."""
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise UserError(f"{str(directory)!r} holds no *.safetensors weights.",
                        "Merge the adapter first: `falcon-desktop merge --adapter RUN --output DIR`.")
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name).float().numpy()


def _permute_rotary(weights: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotary halves -> llama.cpp's interleaved pairs, per head (convert_hf_to_gguf's LlamaModel.permute)."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _falcon_qkv(weights: np.ndarray, heads: int, kv_heads: int, head_dim: int) -> np.ndarray:
    """Falcon's per-group [q..., k, v] rows -> all queries, then all keys, then all values (llama.cpp's layout)."""
    grouped = weights.reshape(kv_heads, heads // kv_heads + 2, head_dim, -1)
    q = grouped[:, :-2].reshape(heads * head_dim, -1)
    k = grouped[:, -2:-1].reshape(kv_heads * head_dim, -1)
    v = grouped[:, -1:].reshape(kv_heads * head_dim, -1)
    return np.concatenate([q, k, v]).reshape(weights.shape)


@dataclass(frozen=True)
class _Architecture:
    gguf_arch: Any        # gguf.MODEL_ARCH
    name: str             # general.architecture
    heads: int
    kv_heads: int
    head_dim: int


def _architecture(config: dict[str, Any]) -> _Architecture:
    import gguf

    model_type = config.get("model_type")
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    if model_type in ("llama", "mistral"):
        scaling = config.get("rope_scaling") or {}
        if (scaling.get("rope_type") or scaling.get("type") or "default") != "default":
            raise UserError(f"Exporting a model with {scaling.get('rope_type') or scaling.get('type')!r} rope "
                            "scaling to GGUF is not supported yet.",
                            "Convert the merged directory with llama.cpp's convert_hf_to_gguf.py.")
        kv = int(config.get("num_key_value_heads") or heads)
        return _Architecture(gguf.MODEL_ARCH.LLAMA, "llama", heads, kv, int(config.get("head_dim") or hidden // heads))
    if model_type == "qwen2":
        kv = int(config.get("num_key_value_heads") or heads)
        return _Architecture(gguf.MODEL_ARCH.QWEN2, "qwen2", heads, kv, hidden // heads)
    if model_type == "falcon":
        if config.get("alibi") or not (config.get("new_decoder_architecture") or config.get("multi_query", True)):
            raise UserError("llama.cpp runs Falcon models with rotary positions and grouped or multi-query "
                            "attention only (Falcon-7B/40B/180B), not this one (ALiBi or full multi-head).",
                            "Serve the merged safetensors directory with transformers instead.")
        kv = int(config.get("num_kv_heads") or 1) if config.get("new_decoder_architecture") else 1
        return _Architecture(gguf.MODEL_ARCH.FALCON, "falcon", heads, kv, hidden // heads)
    raise UserError(f"Exporting model_type {model_type!r} to GGUF is not supported.",
                    "Supported: Llama (and Mistral, SmolLM), Qwen2, Falcon.")


def _transformed(name: str, weights: np.ndarray, arch: _Architecture) -> np.ndarray:
    if arch.name == "llama" and name.endswith("q_proj.weight"):
        return _permute_rotary(weights, arch.heads)
    if arch.name == "llama" and name.endswith("k_proj.weight"):
        return _permute_rotary(weights, arch.kv_heads)
    if arch.name == "falcon" and "query_key_value" in name and weights.ndim == 2:
        return _falcon_qkv(weights, arch.heads, arch.kv_heads, arch.head_dim)
    return weights


def _encoded(weights: np.ndarray, outtype: str) -> tuple[np.ndarray, Any]:
    """(data, GGML type): 1-D in f32; matrices in f16, or Q8_0 where each row splits into blocks of 32."""
    from gguf import GGMLQuantizationType, quants

    if weights.ndim <= 1:
        return weights.astype(np.float32), GGMLQuantizationType.F32
    if outtype == "q8_0" and weights.shape[-1] % _Q8_BLOCK == 0:
        return quants.quantize(weights.astype(np.float32), GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return weights.astype(np.float16), GGMLQuantizationType.F16


# ------------------------------------------------------------------------------------------------ metadata
def _add_hyperparameters(writer: Any, config: dict[str, Any], arch: _Architecture, ffn: int) -> None:
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(arch.heads)
    writer.add_head_count_kv(arch.kv_heads)
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    if arch.name == "falcon":
        writer.add_layer_norm_eps(float(config.get("layer_norm_epsilon", 1e-5)))
        return
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_freq_base(float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get(
        "rope_theta", 10000.0)))
    writer.add_rope_dimension_count(arch.head_dim)
    if arch.head_dim * arch.heads != int(config["hidden_size"]):
        writer.add_key_length(arch.head_dim)
        writer.add_value_length(arch.head_dim)
    writer.add_vocab_size(int(config["vocab_size"]))


def tokenizer_pre(tokenizer: Any) -> str:
    """llama.cpp's name for this tokenizer's pre-tokenizer, recognised as llama.cpp recognises it."""
    digest = sha256(str(tokenizer.encode(_PRE_CHECK_TEXT)).encode()).hexdigest()
    if digest in _PRE_BY_HASH:
        return _PRE_BY_HASH[digest]
    pre = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"  # a lone byte-level step with GPT-2's regex is llama.cpp's "gpt-2" pre-tokenizer
    warn("llama.cpp does not know this tokenizer's pre-tokenizer; the file says 'default' (its generic split), "
         "so llama.cpp may cut some words differently from training.")
    return "default"


def _add_tokenizer(writer: Any, directory: Path, vocab_size: int) -> str:
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = json.loads(tokenizer.backend_tokenizer.to_str()).get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UserError("Only byte-level BPE tokenizers (Falcon, Llama 3, SmolLM, Qwen2) can be exported to GGUF yet.",
                        "Convert the merged directory with llama.cpp's convert_hf_to_gguf.py.")
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    tokens, types = [], []
    for index in range(vocab_size):  # embedding rows past the tokenizer's last id are padding
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        special = token in added and tokenizer.added_tokens_decoder[index].special
        tokens.append(token)
        types.append(gguf.TokenType.CONTROL if special else
                     gguf.TokenType.USER_DEFINED if token in added else gguf.TokenType.NORMAL)
    pre = tokenizer_pre(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special_vocab = gguf.SpecialVocab(directory, load_merges=True, n_vocab=vocab_size)
    special_vocab.chat_template = chat_template()
    for kind in ("bos", "eos", "pad"):  # the ids training used, wherever the files keep them
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is None and kind == "pad":
            token_id = tokenizer.eos_token_id
        if token_id is not None:
            special_vocab.special_token_ids[kind] = int(token_id)
    special_vocab.add_special_token = {"bos": False, "eos": False}  # our prompts are encoded without either
    special_vocab.add_to_gguf(writer, quiet=True)
    return pre


# ------------------------------------------------------------------------------------------------ export
def export_gguf(directory: str | Path, output: str | Path, outtype: str = "q8_0", name: str | None = None) -> ExportReport:
    """Write the model directory `directory` (safetensors + tokenizer) to the GGUF file `output`."""
    import gguf

    if outtype not in OUTTYPES:
        raise UserError(f"Unknown GGUF type {outtype!r}.", f"Choose one of: {', '.join(OUTTYPES)}.")
    directory, output = Path(directory).expanduser(), Path(output).expanduser()
    config = _read_config(directory)
    arch = _architecture(config)
    names = gguf.get_tensor_name_map(arch.gguf_arch, int(config["num_hidden_layers"]))
    file_type = gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0

    output.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(None, arch.name)  # the path comes at writing: a temporary one, renamed when complete
    writer.add_name(name or directory.name)
    writer.add_string("general.quantized_by", f"falcon-desktop {__version__}")
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    count, parameters, ffn, embedding_rows = 0, 0, 0, int(config["vocab_size"])
    for hf_name, weights in _iter_tensors(directory):
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserError(f"No GGUF name for tensor {hf_name!r}.", "This layout is not supported by the exporter.")
        if gguf_name == "token_embd.weight":
            embedding_rows = weights.shape[0]
        if gguf_name == "blk.0.ffn_up.weight":
            ffn = weights.shape[0]
        data, kind = _encoded(_transformed(hf_name, weights, arch), outtype)
        writer.add_tensor(gguf_name, data, raw_dtype=kind)
        count, parameters = count + 1, parameters + weights.size
    _add_hyperparameters(writer, config, arch, ffn)
    pre = _add_tokenizer(writer, directory, embedding_rows)

    info(f"Writing {count} tensors ({parameters:,} parameters, {outtype}) to {output} ...")

    def write(staging: Path) -> None:
        try:
            writer.write_header_to_file(staging)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    write_file(output, write)
    return ExportReport(output, outtype, arch.name, count, parameters, output.stat().st_size, pre)


def modelfile(gguf_path: Path, stop_tokens: list[str]) -> str:
    """An Ollama Modelfile for the exported file: our template (system = passage), greedy, stop at the next block."""
    example = QAPrompt("{{ .Prompt }}", "{{ .System }}").render()
    bare = QAPrompt("{{ .Prompt }}").render()
    template = "{{ if .System }}" + example + "{{ else }}" + bare + "{{ end }}"
    lines = [f"FROM ./{gguf_path.name}", f'TEMPLATE """{template}"""', 'PARAMETER stop "###"']  # no answer contains it
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens]
    lines += ["PARAMETER temperature 0", "PARAMETER num_predict 64", ""]
    return "\n".join(lines)
