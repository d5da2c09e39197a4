"""GGUF files as a base model: the planner's shape from the header, and a Hugging Face copy for loading.

A `.gguf` file (llama.cpp's format: Ollama, LM Studio and most quantized downloads use it) is accepted wherever a
base model is. The planner reads only the header's key/values and tensor table (`read_gguf_shape`), with the
standard library alone: no numpy, no torch. Loading goes through transformers' own GGUF reader, which
dequantizes every tensor; the result is saved once as a plain safetensors directory in falcon-desktop's cache
(`hf_directory`), so 4-bit NF4 and 16-bit loading, LoRA targets, Falcon's quantization fix and `merge` all work on
it exactly as on any downloaded model. The copy's weights keep the file's precision where it is a float type, and
are bfloat16 where the file is quantized (a 4-bit block format has no exact 16-bit equivalent; bf16 is what
training computes in).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
from pathlib import Path
from typing import Any

from falcon_desktop.errors import UserError

GGUF_SUFFIX = ".gguf"
SOURCE_RECORD = "falcon-desktop-gguf-source.json"  # written into the cached copy: which file it came from

# llama.cpp architecture name -> the model_type the planner and transformers use. Mistral and SmolLM are "llama".
_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "falcon": "falcon"}


def is_gguf_file(reference: str | Path) -> bool:
    """True for a path that names a `.gguf` file (existing or not: a typo should say "no such file", not "no hub id")."""
    return str(reference).lower().endswith(GGUF_SUFFIX)


def _check_file(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"GGUF file {str(path)!r} does not exist.", "Check the path of the .gguf file.")
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise UserError(f"{str(path)!r} is not a GGUF file (it does not start with the GGUF magic).",
                            "Pass a model file written by llama.cpp's converters (*.gguf).")
    return path


# GGUF value types (ggml's gguf.h): little-endian scalars, length-prefixed strings, typed arrays.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_SMALL_ARRAY = 16  # longer arrays (the tokenizer's vocabulary and merges) are skipped, only their length kept


class _HeaderReader:
    """Reads a GGUF header field by field, skipping what the planner does not need."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = self.handle.read(size)
        if len(data) != size:
            raise ValueError("the header ends early")
        return struct.unpack(fmt, data)[0]

    def string(self) -> str:
        length = self.unpack("<Q")
        data = self.handle.read(length)
        if len(data) != length:
            raise ValueError("the header ends early")
        return data.decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise ValueError(f"unknown value type {kind}")
        item_kind, count = self.unpack("<I"), self.unpack("<Q")
        if count <= _SMALL_ARRAY:
            return [self.value(item_kind) for _ in range(count)]
        if item_kind in _SCALARS:  # fixed size: one seek
            self.handle.seek(count * struct.calcsize(_SCALARS[item_kind]), 1)
        else:
            for _ in range(count):
                self.value(item_kind)
        return _Skipped(count)


class _Skipped(int):
    """A long array the header reader skipped: only its length."""


def read_gguf_header(path: str | Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """(key/values without the tokenizer's large arrays, tensor name -> shape in PyTorch order); no weights read."""
    metadata, tensors, _ = _scan_header(path)
    return metadata, tensors


def _scan_header(path: str | Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]], set[int]]:
    """`read_gguf_header`'s two values, and the ggml types of the file's matrices (2 or more dimensions).

    A direct scan of the header (the GGUF layout: magic, version, counts, key/values, tensor table) rather than the
    `gguf` package's reader, which parses every array into numpy: 1.8 s for SmolLM2-135M's 49,152-token vocabulary
    on the CPU machine, where this takes milliseconds. `plan` stays instant.
    """
    path = _check_file(Path(path).expanduser())
    try:
        with path.open("rb") as handle:
            reader = _HeaderReader(io.BufferedReader(handle, buffer_size=1 << 20))
            reader.handle.read(4)  # the magic, checked above
            version = reader.unpack("<I")
            if version < 2:
                raise ValueError(f"GGUF version {version} is too old (2 and later are read)")
            tensor_count, field_count = reader.unpack("<Q"), reader.unpack("<Q")
            metadata: dict[str, Any] = {}
            for _ in range(field_count):
                key = reader.string()
                metadata[key] = reader.value(reader.unpack("<I"))
            tensors, matrix_types = {}, set()
            for _ in range(tensor_count):
                name = reader.string()
                dims = [reader.unpack("<Q") for _ in range(reader.unpack("<I"))]
                kind = reader.unpack("<I")
                reader.unpack("<Q")  # the offset: weights are not read here
                # GGUF lists dimensions innermost first (ne0 = columns); PyTorch's order is the reverse.
                tensors[name] = tuple(reversed(dims))
                if len(dims) > 1:
                    matrix_types.add(kind)
    except (ValueError, OSError, struct.error) as error:
        raise UserError(f"Cannot read the GGUF file {str(path)!r}: {error}.",
                        "The file may be truncated; download or convert it again.") from error
    tokens = metadata.get("tokenizer.ggml.tokens")  # a list when short, else _Skipped: its length
    if tokens is not None:
        metadata["tokenizer.ggml.tokens.count"] = len(tokens) if isinstance(tokens, list) else int(tokens)
    metadata = {key: value for key, value in metadata.items() if not isinstance(value, _Skipped)}
    return metadata, tensors, matrix_types


def _config_from_header(metadata: dict[str, Any], tensors: dict[str, tuple[int, ...]], name: str) -> dict[str, Any]:
    """The config.json keys the planner's `shape_from_config` reads, from llama.cpp's metadata names."""
    architecture = metadata.get("general.architecture")
    model_type = _ARCHITECTURES.get(str(architecture))
    if model_type is None:
        raise UserError(f"{name}: GGUF architecture {architecture!r} is not supported.",
                        f"Supported GGUF architectures: {', '.join(_ARCHITECTURES)}.")

    def key(suffix: str, default: Any = None) -> Any:
        return metadata.get(f"{architecture}.{suffix}", default)

    vocab = key("vocab_size") or metadata.get("tokenizer.ggml.tokens.count") or tensors["token_embd.weight"][0]
    config: dict[str, Any] = {
        "model_type": model_type, "vocab_size": int(vocab), "hidden_size": key("embedding_length"),
        "num_hidden_layers": key("block_count"), "num_attention_heads": key("attention.head_count"),
        "max_position_embeddings": key("context_length"),
        # llama.cpp leaves the output matrix out when it is the embedding (tied)
        "tie_word_embeddings": "output.weight" not in tensors,
    }
    kv_heads = key("attention.head_count_kv") or config["num_attention_heads"]
    if model_type == "falcon":
        config.update(
            num_kv_heads=kv_heads, multi_query=kv_heads == 1, ffn_hidden_size=key("feed_forward_length"),
            new_decoder_architecture="blk.0.attn_norm_2.weight" in tensors, bias="blk.0.attn_qkv.bias" in tensors,
            parallel_attn=True,
        )
    else:
        config.update(
            num_key_value_heads=kv_heads, intermediate_size=key("feed_forward_length"),
            head_dim=key("attention.key_length") or None,
            attention_bias="blk.0.attn_q.bias" in tensors, mlp_bias="blk.0.ffn_up.bias" in tensors,
        )
    return config


def read_gguf_shape(path: str | Path):
    """The planner's ModelShape of a GGUF file, from its header alone."""
    from falcon_desktop.shapes import shape_from_config

    metadata, tensors = read_gguf_header(path)
    name = str(path)
    return shape_from_config(_config_from_header(metadata, tensors, name), name, "gguf")


# ------------------------------------------------------------------------------------------- loading (torch)
def _cache_key(path: Path) -> str:
    stat = path.stat()
    identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return f"{path.stem}-{hashlib.sha256(identity.encode('utf-8')).hexdigest()[:12]}"


def _saved_dtype(matrix_types: set[int]):
    """The float type the file stores its weights in, or bfloat16 when it quantizes them."""
    import torch
    from gguf import GGMLQuantizationType

    for kind, dtype in ((GGMLQuantizationType.F32, torch.float32), (GGMLQuantizationType.F16, torch.float16)):
        if matrix_types == {kind}:
            return dtype
    return torch.bfloat16


def convert_gguf(path: str | Path, directory: Path) -> Path:
    """Write `path` (a GGUF file) as a safetensors model directory with its tokenizer; returns `directory`.

    transformers' loader marks the model it returns as GGUF-quantized, and `save_pretrained` refuses such a model,
    so the dequantized weights are copied into a fresh model of the same config first.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser()
    metadata, _, matrix_types = _scan_header(path)  # checks the file too
    dtype = _saved_dtype(matrix_types)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, NotImplementedError) as error:
        raise UserError(f"transformers cannot load {path.name}: {error}",
                        f"Supported GGUF architectures: {', '.join(_ARCHITECTURES)}.") from error
    config = loaded.config
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    fresh.load_state_dict(loaded.state_dict(), assign=True)
    fresh.tie_weights()
    directory.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    record = {"gguf_file": str(path.resolve()), "architecture": metadata.get("general.architecture"),
              "tokenizer_pre": metadata.get("tokenizer.ggml.pre"), "file_type": metadata.get("general.file_type")}
    (directory / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return directory


def hf_directory(reference: str) -> str:
    """`reference` itself, unless it names a .gguf file: then the cached safetensors copy of it (made once)."""
    if not is_gguf_file(reference):
        return reference
    from falcon_desktop.console import info
    from falcon_desktop.paths import cache_dir

    path = _check_file(Path(reference).expanduser())
    target = cache_dir() / "gguf" / _cache_key(path)
    if (target / SOURCE_RECORD).is_file():
        return str(target)
    from falcon_desktop.atomic import publish_directory

    if target.exists() and not (target / SOURCE_RECORD).is_file():  # an incomplete copy from an older version
        shutil.rmtree(target, ignore_errors=True)
    info(f"Converting {path.name} to a Hugging Face model (once; cached in {target}) ...")
    publish_directory(target, lambda staging: convert_gguf(path, staging))  # complete, or not there at all
    return str(target)


def gguf_source(directory: str | Path) -> dict[str, Any]:
    """What `convert_gguf` recorded about the file a model directory came from; {} for any other directory."""
    record = Path(directory) / SOURCE_RECORD
    return json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
