"""Model shapes from `config.json` alone: exact parameter counts and LoRA targets, without torch.

A `ModelShape` is everything the planner needs to know about an architecture: the size of every linear layer, which
ones carry biases, the norms, the attention kind (MHA / MQA / GQA) and whether the head is tied to the embeddings.
`load_shape` reads it from a built-in preset (offline), a local directory, or a Hugging Face id (config.json only).
The counts equal `sum(p.numel() for p in model.parameters())` of the transformers model (tests/test_shapes.py
builds each architecture on the meta device and compares).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from falcon_desktop.errors import UserError

SUPPORTED_MODEL_TYPES = ("falcon", "llama", "mistral", "qwen2")

# Falcon's first checkpoints shipped custom code under these model types; transformers' `falcon` reads the same
# weights once the keys are renamed. The value is the `new_decoder_architecture` each type implies: RefinedWeb is
# Falcon-40B's code, which always builds the new layout (grouped K/V, two layer norms); RefinedWebModel is
# Falcon-7B's, the old one. transformers' own converter (models/falcon/convert_custom_code_checkpoint.py) agrees on
# the published checkpoints: it sets the flag exactly when `n_head_kv` is present, which only the 40B configs have.
LEGACY_FALCON_TYPES = {"RefinedWebModel": False, "RefinedWeb": True}
# Legacy key -> current key (transformers' FalconConfig attribute names).
LEGACY_FALCON_KEYS = {"n_head": "num_attention_heads", "n_layer": "num_hidden_layers", "n_head_kv": "num_kv_heads",
                      "n_embed": "hidden_size"}


def native_falcon_config(config: dict[str, Any]) -> dict[str, Any]:
    """A legacy RefinedWeb / RefinedWebModel config.json as transformers' FalconConfig reads it (without `auto_map`,
    so no remote code is asked for); any other config comes back unchanged. The planner and the loader both use it."""
    model_type = config.get("model_type")
    if model_type not in LEGACY_FALCON_TYPES:
        return dict(config)
    native = {LEGACY_FALCON_KEYS.get(key, key): value for key, value in config.items() if key != "auto_map"}
    native["model_type"] = "falcon"
    native["architectures"] = ["FalconForCausalLM"]
    native.setdefault("new_decoder_architecture", LEGACY_FALCON_TYPES[model_type])
    return native


# LoRA-targetable linear layers of one decoder layer, by leaf name (what peft's `target_modules` matches), in
# forward order, each with its block ("attention" or "mlp").
LORA_TARGETS: dict[str, dict[str, str]] = {
    "falcon": {"query_key_value": "attention", "dense": "attention", "dense_h_to_4h": "mlp", "dense_4h_to_h": "mlp"},
    **{
        model_type: {"q_proj": "attention", "k_proj": "attention", "v_proj": "attention", "o_proj": "attention",
                     "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
        for model_type in ("llama", "mistral", "qwen2")
    },
}
# Every linear kind: adapters on all of them are what lets QLoRA match full fine-tuning (Dettmers et al. 2023, 4.1).
DEFAULT_LORA_TARGETS: dict[str, tuple[str, ...]] = {kind: tuple(names) for kind, names in LORA_TARGETS.items()}
ALL_LINEAR = "all-linear"  # peft's shorthand for every linear layer but the head; accepted here too


@dataclass(frozen=True)
class Preset:
    """A model known offline: its published config.json is shipped in `assets/presets/<name>.json`."""

    hub_id: str | None
    summary: str
    asset: str  # path under falcon_desktop/assets


PRESETS: dict[str, Preset] = {
    "falcon-7b": Preset("tiiuae/falcon-7b", "Falcon-7B, multi-query attention (legacy RefinedWebModel config)",
                        "presets/falcon-7b.json"),
    "falcon-40b": Preset("tiiuae/falcon-40b", "Falcon-40B, new decoder architecture, 8 KV heads",
                         "presets/falcon-40b.json"),
    "falcon-rw-1b": Preset("tiiuae/falcon-rw-1b", "Falcon-RW-1B, ALiBi, biases, sequential attention",
                           "presets/falcon-rw-1b.json"),
    "llama-3-8b": Preset("meta-llama/Meta-Llama-3-8B", "Llama 3 8B, GQA 32/8, 128k vocabulary",
                         "presets/llama-3-8b.json"),
    "llama-3-70b": Preset("meta-llama/Meta-Llama-3-70B", "Llama 3 70B, GQA 64/8", "presets/llama-3-70b.json"),
    "llama-3.2-1b": Preset("meta-llama/Llama-3.2-1B", "Llama 3.2 1B, tied embeddings", "presets/llama-3.2-1b.json"),
    "mistral-7b": Preset("mistralai/Mistral-7B-v0.1", "Mistral 7B v0.1, GQA 32/8", "presets/mistral-7b.json"),
    "qwen2-7b": Preset("Qwen/Qwen2-7B", "Qwen2 7B, GQA 28/4, q/k/v biases", "presets/qwen2-7b.json"),
    "smollm2-135m": Preset("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2 135M Instruct (Llama architecture)",
                           "presets/smollm2-135m.json"),
    "tiny-falcon": Preset(None, "2-layer random Falcon of the demo and the tests", "tiny-falcon/config.json"),
}


@dataclass(frozen=True)
class ModelShape:
    """One architecture's sizes, read from config.json; every count below derives from these fields."""

    name: str                        # preset name, hub id or directory
    model_type: str                  # "falcon" | "llama" | "mistral" | "qwen2"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int                # key/value heads as the weights store them (Falcon-7B's multi-query: 1)
    head_dim: int
    intermediate_size: int
    tie_word_embeddings: bool        # lm_head shares the embedding matrix: counted once
    biased_linears: tuple[str, ...]  # linear leaf names that carry a bias
    norm_kind: str                   # "layernorm" (weight + bias) | "rmsnorm" (weight)
    norms_per_layer: int
    gated_mlp: bool                  # SiLU(gate) * up -> down (Llama family) vs GELU MLP (Falcon)
    alibi: bool = False
    parallel_attention: bool = False  # attention and MLP both read the layer input (Falcon), not one another
    new_decoder_architecture: bool = False  # Falcon-40B's layout: grouped K/V, two layer norms
    kv_heads_in_attention: int = 0   # K/V heads as SDPA gets them (Falcon-40B broadcasts to all); 0: num_kv_heads
    max_position_embeddings: int | None = None
    source: str = "config"           # "preset" | "directory" | "file" | "hub"

    def linear_modules(self) -> dict[str, tuple[int, int]]:
        """LoRA-targetable leaf name -> (in_features, out_features), one decoder layer."""
        h, q_dim, kv_dim, f = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, \
            self.intermediate_size
        if self.model_type == "falcon":
            return {"query_key_value": (h, q_dim + 2 * kv_dim), "dense": (q_dim, h), "dense_h_to_4h": (h, f),
                    "dense_4h_to_h": (f, h)}
        return {"q_proj": (h, q_dim), "k_proj": (h, kv_dim), "v_proj": (h, kv_dim), "o_proj": (q_dim, h),
                "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}

    def linear_inputs(self) -> dict[str, str]:
        """Leaf name -> the activation it reads; linears that read the same tensor share one saved copy."""
        if self.model_type == "falcon":
            mlp_input = "attention_norm" if self.norms_per_layer == 1 else "mlp_norm"
            return {"query_key_value": "attention_norm", "dense": "attention_output",
                    "dense_h_to_4h": mlp_input, "dense_4h_to_h": "mlp_hidden"}
        return {"q_proj": "attention_norm", "k_proj": "attention_norm", "v_proj": "attention_norm",
                "o_proj": "attention_output", "gate_proj": "mlp_norm", "up_proj": "mlp_norm",
                "down_proj": "mlp_hidden"}

    @property
    def attention_kind(self) -> str:
        if self.num_kv_heads == self.num_heads:
            return "MHA"
        return "MQA" if self.num_kv_heads == 1 else "GQA"

    @property
    def attention_kv_heads(self) -> int:
        return self.kv_heads_in_attention or self.num_kv_heads

    @property
    def norm_parameters(self) -> int:
        return self.hidden_size * (2 if self.norm_kind == "layernorm" else 1)

    def layer_parameters(self, block: str) -> int:
        """Weights and biases of one decoder layer's `block` ("attention" or "mlp")."""
        kinds = LORA_TARGETS[self.model_type]
        return sum(n_in * n_out + (n_out if name in self.biased_linears else 0)
                   for name, (n_in, n_out) in self.linear_modules().items() if kinds[name] == block)

    def parameter_counts(self) -> dict[str, int]:
        """embeddings / attention / mlp / norms / head -> parameters (a tied head counts 0: it is the embedding)."""
        return {
            "embeddings": self.vocab_size * self.hidden_size,
            "attention": self.num_layers * self.layer_parameters("attention"),
            "mlp": self.num_layers * self.layer_parameters("mlp"),
            "norms": (self.num_layers * self.norms_per_layer + 1) * self.norm_parameters,
            "head": 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size,
        }

    @property
    def total_params(self) -> int:
        return sum(self.parameter_counts().values())

    @property
    def linear_weight_params(self) -> int:
        """Weights of every decoder linear layer (what NF4 quantizes; the bulk of the FLOPs)."""
        return self.num_layers * sum(n_in * n_out for n_in, n_out in self.linear_modules().values())

    @property
    def largest_linear_params(self) -> int:
        return max(n_in * n_out for n_in, n_out in self.linear_modules().values())

    def lora_tensors(self, targets: tuple[str, ...], r: int) -> list[int]:
        """Element counts of every LoRA A (r x in) and B (out x r) matrix, all layers."""
        modules = self.linear_modules()
        per_layer = [size for name in targets for size in (r * modules[name][0], modules[name][1] * r)]
        return per_layer * self.num_layers

    def lora_parameters(self, targets: tuple[str, ...], r: int) -> int:
        return sum(self.lora_tensors(targets, r))

    def summary(self) -> str:
        tied = "tied head" if self.tie_word_embeddings else "separate head"
        return (f"{self.model_type}, {self.num_layers} layers, hidden {self.hidden_size}, {self.num_heads} heads / "
                f"{self.num_kv_heads} KV ({self.attention_kind}), MLP {self.intermediate_size}, "
                f"vocab {self.vocab_size:,}, {tied}")


def _require(config: dict[str, Any], key: str, where: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(f"{where}: config.json needs a positive integer {key!r} (found {value!r}).",
                        "Pass the model's own config.json, unedited.")
    return value


def _falcon_shape(config: dict[str, Any], name: str, source: str) -> ModelShape:
    config = native_falcon_config(config)
    heads = _require(config, "num_attention_heads", name)
    hidden = _require(config, "hidden_size", name)
    new_arch = bool(config.get("new_decoder_architecture", False))
    multi_query = bool(config.get("multi_query", True))
    # transformers' FalconAttention: new architecture -> num_kv_heads groups; else multi-query -> 1; else all heads.
    if new_arch:
        kv_heads = int(config.get("num_kv_heads") or heads)
    else:
        kv_heads = 1 if multi_query else heads
    parallel = bool(config.get("parallel_attn", True))
    lns_in_parallel = config.get("num_ln_in_parallel_attn") or (2 if new_arch else 1)
    return ModelShape(
        name=name, model_type="falcon", vocab_size=_require(config, "vocab_size", name), hidden_size=hidden,
        num_layers=_require(config, "num_hidden_layers", name), num_heads=heads, num_kv_heads=kv_heads,
        head_dim=hidden // heads, intermediate_size=int(config.get("ffn_hidden_size") or 4 * hidden),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
        biased_linears=tuple(LORA_TARGETS["falcon"]) if config.get("bias", False) else (),
        norm_kind="layernorm", norms_per_layer=2 if (not parallel or lns_in_parallel == 2) else 1, gated_mlp=False,
        alibi=bool(config.get("alibi", False)), new_decoder_architecture=new_arch,
        parallel_attention=parallel,
        # `_split_heads` broadcasts the new architecture's K/V groups to every head before attention.
        kv_heads_in_attention=heads if new_arch else kv_heads,
        max_position_embeddings=config.get("max_position_embeddings", 2048), source=source,
    )


# num_key_value_heads when config.json leaves it out, as each transformers config class defaults it.
_DEFAULT_KV_HEADS = {"mistral": 8, "qwen2": 32}


def _llama_family_shape(config: dict[str, Any], name: str, source: str, model_type: str) -> ModelShape:
    heads = _require(config, "num_attention_heads", name)
    hidden = _require(config, "hidden_size", name)
    kv_heads = config.get("num_key_value_heads") or _DEFAULT_KV_HEADS.get(model_type, heads)
    if model_type == "qwen2":
        biased: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    elif model_type == "llama":
        biased = (("q_proj", "k_proj", "v_proj", "o_proj") if config.get("attention_bias") else ()) + \
                 (("gate_proj", "up_proj", "down_proj") if config.get("mlp_bias") else ())
    else:
        biased = ()
    return ModelShape(
        name=name, model_type=model_type, vocab_size=_require(config, "vocab_size", name), hidden_size=hidden,
        num_layers=_require(config, "num_hidden_layers", name), num_heads=heads, num_kv_heads=int(kv_heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        intermediate_size=_require(config, "intermediate_size", name),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)), biased_linears=biased,
        norm_kind="rmsnorm", norms_per_layer=2, gated_mlp=True,
        max_position_embeddings=config.get("max_position_embeddings"), source=source,
    )


def shape_from_config(config: dict[str, Any], name: str, source: str = "config") -> ModelShape:
    """The shape described by a parsed config.json; UserError for an architecture we cannot plan."""
    model_type = config.get("model_type")
    if model_type == "falcon" or model_type in LEGACY_FALCON_TYPES:
        return _falcon_shape(config, name, source)
    if model_type in ("llama", "mistral", "qwen2"):
        return _llama_family_shape(config, name, source, model_type)
    raise UserError(
        f"{name}: model_type {model_type!r} is not supported by the planner.",
        f"Supported: {', '.join(SUPPORTED_MODEL_TYPES)} (and Falcon's legacy RefinedWebModel / RefinedWeb).",
    )


def _read_config(path: Path, name: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"Cannot read {path}: {error.strerror or error}.", "Check the path and its permissions.")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}.",
                        f"Fix {path.name}, or download the model's config.json again.")
    if not isinstance(config, dict):
        raise UserError(f"{path} holds a JSON {type(config).__name__}, not an object.", f"Is {name} a model config?")
    return config


def preset_config(name: str) -> dict[str, Any]:
    """The shipped config.json of a preset."""
    asset = Path(str(resources.files("falcon_desktop") / "assets" / PRESETS[name].asset))
    return _read_config(asset, name)


def _hub_config_path(repo_id: str) -> Path:
    """config.json of a Hub repository: the HF cache first, the network unless HF_HUB_OFFLINE is set."""
    from falcon_desktop.errors import explain
    from falcon_desktop.paths import hf_offline

    import huggingface_hub

    cached = huggingface_hub.try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return Path(cached)
    if hf_offline():
        raise UserError(f"{repo_id}'s config.json is not in the Hugging Face cache and HF_HUB_OFFLINE is set.",
                        f"Unset HF_HUB_OFFLINE, or use a preset: {', '.join(PRESETS)}.")
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, "config.json"))
    except Exception as error:  # noqa: BLE001 - known Hub errors keep their own message; the rest become one
        if explain(error) is not None:
            raise
        raise UserError(f"Could not fetch config.json of {repo_id!r}: {error}",
                        "Check the id and your connection, or pass a local directory holding config.json.") from error


def preset_name(model: str) -> str | None:
    """The preset `model` names (case-insensitive), or None."""
    return {name.lower(): name for name in PRESETS}.get(model.strip().lower())


def model_reference(model: str) -> str:
    """What to hand `from_pretrained`: a preset's Hub id, else `model` itself (a directory or a Hub id)."""
    preset = preset_name(model)
    return (PRESETS[preset].hub_id or model) if preset else model


def load_shape(model: str) -> ModelShape:
    """A preset name, a directory (or file) holding config.json, a .gguf file, or a Hugging Face id."""
    from falcon_desktop.gguf_io import is_gguf_file, read_gguf_shape

    preset = preset_name(model)
    if preset:
        return shape_from_config(preset_config(preset), preset, "preset")
    path = Path(model).expanduser()
    if is_gguf_file(model):
        return read_gguf_shape(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} holds no config.json.", "Pass the directory of a Hugging Face model.")
        return shape_from_config(_read_config(path / "config.json", model), model, "directory")
    if path.is_file():
        return shape_from_config(_read_config(path, model), model, "file")
    by_hub_id = {p.hub_id.lower(): name for name, p in PRESETS.items() if p.hub_id}
    if model.lower() in by_hub_id:  # the shipped copy of its published config: no network needed
        return shape_from_config(preset_config(by_hub_id[model.lower()]), model, "preset")
    if model.count("/") == 1 and not model.startswith((".", "/", "~")) and "\\" not in model:
        return shape_from_config(_read_config(_hub_config_path(model), model), model, "hub")
    close = difflib.get_close_matches(model.lower(), list(PRESETS), n=3, cutoff=0.5)
    raise UserError(
        f"Unknown model {model!r}: not a preset, a directory or a Hugging Face id."
        + (f" Did you mean {', '.join(close)}?" if close else ""),
        f"Presets: {', '.join(PRESETS)}; or a Hub id such as tiiuae/falcon-7b, or a directory holding config.json.",
    )


def valid_lora_targets(shape: ModelShape) -> tuple[str, ...]:
    return tuple(LORA_TARGETS[shape.model_type])
