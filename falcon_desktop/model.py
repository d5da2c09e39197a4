"""Load a base model really quantized to 4-bit, verify it, and wrap it with strictly-targeted LoRA.

The trap this module exists for: with transformers 5, `BitsAndBytesConfig(load_in_4bit=True)` swaps only modules
whose type is exactly `nn.Linear`, so Falcon's `FalconLinear` (an `nn.Linear` subclass that adds its bias after the
matmul) stays in bf16: Falcon-7B's `get_memory_footprint()` is 13.8 GB instead of 3.9 GB (H100, transformers
5.17, bitsandbytes 0.50.2), and its QLoRA peak 29.3 GB instead of 6.4 GB. We build Falcon with plain `nn.Linear`
while loading (same weights, same maths up to one bf16 rounding of the bias add, and Falcon-7B has no
biases), then `verify_quantization` checks every linear layer and fails loudly if any stayed unquantized.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from falcon_desktop.attention import install_fast_attention
from falcon_desktop.errors import UserError
from falcon_desktop.shapes import LEGACY_FALCON_TYPES, native_falcon_config

# Layers that stay in 16-bit on purpose: the output head (quantizing it hurts quality and it is often tied to the
# embeddings) - the same default transformers uses.
KEEP_UNQUANTIZED = ("lm_head",)


@dataclass(frozen=True)
class ModelSettings:
    model: str                       # hub id or local directory
    quantize: bool = True            # NF4 with double quantization (QLoRA); False loads 16-bit (LoRA)
    compute_dtype: str = "bfloat16"  # bfloat16 on compute capability >= 8.0, float16 before; float32 on the CPU
    device: str = "auto"             # "auto" -> cuda:0 when available, else cpu
    trust_remote_code: bool = False  # off: remote code runs arbitrary Python from the hub
    # FSDP shards parameters of one dtype: 4-bit weights packed into bfloat16 storage (not uint8) can be flattened
    # and sharded with the 16-bit ones, as in the Answer.AI / Hugging Face FSDP-QLoRA recipe. None: uint8.
    quant_storage: str | None = None


@dataclass(frozen=True)
class QuantizationReport:
    linear_layers: int
    quantized_layers: int
    unquantized: tuple[str, ...]
    footprint_bytes: int

    def to_json(self) -> dict:
        return {
            "linear_layers": self.linear_layers,
            "quantized_layers": self.quantized_layers,
            "unquantized": list(self.unquantized),
            "footprint_bytes": self.footprint_bytes,
        }


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    device: torch.device
    compute_dtype: torch.dtype
    quantization: QuantizationReport | None = None
    notes: list[str] = field(default_factory=list)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"Device {device!r} was asked for, but PyTorch sees no CUDA GPU.",
            "Run `falcon-desktop doctor` to see why, or pass --device cpu.",
        )
    return resolved


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if device.type == "cpu":
        # bf16 matmuls on most CPUs are emulated and slow; the CPU path is for tiny models and mechanics.
        return torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def check_model_reference(reference: str) -> None:
    path = Path(reference).expanduser()
    looks_like_path = path.is_absolute() or reference.startswith((".", "~")) or path.exists()
    if looks_like_path and not (path / "config.json").is_file():
        if not path.exists():
            raise UserError(f"Model directory {reference!r} does not exist.", "Check the path, or pass a hub id.")
        found = sorted(p.name for p in path.iterdir())[:12]
        raise UserError(
            f"{reference!r} holds no config.json (found: {', '.join(found) or 'nothing'}).",
            "Pass the directory that holds config.json and the weights (*.safetensors).",
        )


def load_config(reference: str, trust_remote_code: bool = False):
    """The model's config; Falcon's original `RefinedWebModel` / `RefinedWeb` configs load as transformers' native
    FalconConfig.

    Early Falcon checkpoints name custom code in `auto_map`, which transformers refuses without trust_remote_code.
    transformers' own Falcon implements the same architecture, so `shapes.native_falcon_config` (the planner's
    translation too) renames the legacy keys and drops `auto_map` rather than run the repository's Python.
    """
    from transformers import AutoConfig, FalconConfig
    from transformers.utils import cached_file

    if not trust_remote_code:
        import json

        config_file = cached_file(reference, "config.json")
        raw = json.loads(Path(config_file).read_text(encoding="utf-8"))
        if raw.get("model_type") in LEGACY_FALCON_TYPES:
            return FalconConfig.from_dict(native_falcon_config(raw))
    return AutoConfig.from_pretrained(reference, trust_remote_code=trust_remote_code)


def load_causal_lm(reference: str, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False,
                   config=None, **options):
    """`AutoModelForCausalLM.from_pretrained` on one device with the config `load_config` reads, so every verb that
    loads a base (train, ask, eval, merge) opens a legacy Falcon config the same way."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        reference, config=config or load_config(reference, trust_remote_code), dtype=dtype,
        device_map={"": str(device)}, trust_remote_code=trust_remote_code, **options,
    )


def load_tokenizer(reference: str, trust_remote_code: bool = False):
    """The model's tokenizer, with a pad token and right padding for training."""
    from transformers import AutoTokenizer

    from falcon_desktop.data import configure_tokenizer
    from falcon_desktop.gguf_io import hf_directory

    reference = hf_directory(reference)  # a .gguf file loads through its cached safetensors copy
    check_model_reference(reference)
    tokenizer = AutoTokenizer.from_pretrained(reference, trust_remote_code=trust_remote_code)
    return configure_tokenizer(tokenizer)


@contextlib.contextmanager
def _falcon_linear_as_nn_linear() -> Iterator[None]:
    """While a Falcon model is constructed, make its FalconLinear layers plain nn.Linear so bitsandbytes swaps them."""
    from transformers.models.falcon import modeling_falcon

    original = modeling_falcon.FalconLinear
    modeling_falcon.FalconLinear = nn.Linear
    try:
        yield
    finally:
        modeling_falcon.FalconLinear = original


def _quantization_config(compute_dtype: torch.dtype, quant_storage: str | None = None):
    from transformers import BitsAndBytesConfig

    storage = {"bnb_4bit_quant_storage": getattr(torch, quant_storage)} if quant_storage else {}
    return BitsAndBytesConfig(
        **storage,
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=list(KEEP_UNQUANTIZED),
    )


def verify_quantization(model: nn.Module) -> QuantizationReport:
    """Count linear layers that are 4-bit; raise when any layer meant to be quantized is not."""
    import bitsandbytes as bnb

    linear, quantized, unquantized = 0, 0, []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name.split(".")[-1] in KEEP_UNQUANTIZED:
            continue
        if "lora_" in name:  # adapters are trainable 32-bit layers by design
            continue
        linear += 1
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module.weight, "quant_state", None) is not None:
            quantized += 1
        else:
            unquantized.append(name)
    report = QuantizationReport(linear, quantized, tuple(unquantized), int(model.get_memory_footprint()))
    if unquantized:
        raise UserError(
            f"{len(unquantized)} of {linear} linear layers were left unquantized "
            f"(e.g. {', '.join(unquantized[:3])}); the model would need ~4x the planned VRAM.",
            "Report this with `falcon-desktop doctor --json`; meanwhile pass --no-quantize with a GPU that fits 16-bit.",
        )
    return report


def load_base_model(settings: ModelSettings) -> LoadedModel:
    """Tokenizer and base model on the chosen device; 4-bit NF4 when `settings.quantize`, verified."""
    from falcon_desktop.gguf_io import hf_directory

    settings = replace(settings, model=hf_directory(settings.model))  # a .gguf file: its cached safetensors copy
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.compute_dtype, device)
    tokenizer = load_tokenizer(settings.model, settings.trust_remote_code)
    config = load_config(settings.model, settings.trust_remote_code)
    options: dict = ({"quantization_config": _quantization_config(dtype, settings.quant_storage)}
                     if settings.quantize else {})
    is_falcon = config.model_type == "falcon"
    patch = _falcon_linear_as_nn_linear() if (settings.quantize and is_falcon) else contextlib.nullcontext()
    with patch:
        model = load_causal_lm(settings.model, dtype, device, settings.trust_remote_code, config,
                               attn_implementation="sdpa", **options)
    model.config.use_cache = False
    install_fast_attention(model)
    if dtype != torch.float32:
        cast_norm_outputs(model, dtype)
    report = verify_quantization(model) if settings.quantize else None
    return LoadedModel(model, tokenizer, device, dtype, report)


def cast_norm_outputs(model: nn.Module, dtype: torch.dtype) -> int:
    """Make every LayerNorm return `dtype`, as it does in a 16-bit model without autocast; returns how many.

    CUDA autocast runs layer_norm in fp32 and returns fp32, and bitsandbytes' `Linear4bit` returns its input's dtype:
    in a 4-bit Falcon the projections a LayerNorm feeds come out fp32, and through GELU and the residual add so does
    every later layer - MLP activations kept at 4 bytes, not 2, the residual stream fp32, and each LoRA adapter
    reading a norm casting its own bf16 copy. One cast of the norm's output is what every consumer would do anyway;
    its backward keeps nothing. RMSNorm models (Llama, Mistral, Qwen) already return the weights' dtype.
    """

    def to_compute_dtype(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output.to(dtype)

    norms = [module for module in model.modules() if isinstance(module, nn.LayerNorm)]
    for norm in norms:
        norm.register_forward_hook(to_compute_dtype)
    return len(norms)


def linear_leaf_names(model: nn.Module) -> list[str]:
    """The distinct leaf names of linear layers (what LoRA `target_modules` match against)."""
    import bitsandbytes as bnb

    names = {
        name.split(".")[-1]
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, bnb.nn.Linear4bit)) and "lora_" not in name
    }
    return sorted(names)


def check_lora_targets(model: nn.Module, targets: Sequence[str]) -> None:
    """Every requested target must name real layers: peft alone drops one misspelt name among valid ones."""
    available = linear_leaf_names(model)
    unknown = [target for target in targets if target not in available]
    if unknown:
        raise UserError(
            f"LoRA target(s) {', '.join(repr(t) for t in unknown)} match no layer of this model.",
            f"Valid targets: {', '.join(available)}.",
        )


def add_lora(model: nn.Module, targets: Sequence[str], r: int, alpha: int, dropout: float):
    """Freeze the base and add LoRA adapters on exactly `targets`; returns the peft model."""
    from peft import LoraConfig, get_peft_model

    check_lora_targets(model, targets)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none", task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, config)
    hit = {name.split(".")[-1] for name in peft_model.targeted_module_names}
    missed = set(targets) - hit
    if missed:  # cannot happen after check_lora_targets unless peft changes its matching rules
        raise UserError(f"peft did not wrap {sorted(missed)}.", "Report this as a bug.")
    return peft_model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers (Falcon `transformer.h`, Llama-style `model.layers`)."""
    best: nn.ModuleList | None = None
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and (best is None or len(module) > len(best)):
            if all(hasattr(layer, "gradient_checkpointing") for layer in module):
                best = module
    if best is None:
        raise UserError("Could not find this model's decoder layers.", "This architecture is not supported yet.")
    return best


def set_checkpointing(model: nn.Module, checkpoint_layers: int, graphless_forward: bool = False) -> None:
    """Recompute the first `checkpoint_layers` decoder layers in backward; keep the others' activations.

    Checkpointing costs one extra forward of each checkpointed layer (+50% of its compute), so we checkpoint only as
    many layers as the memory plan needs. With `graphless_forward` (eager steps on one device: `GraphlessCheckpoint`)
    their first forward builds no autograd graph.
    """
    layers = decoder_layers(model)
    # transformers renamed gradient_* to activation_checkpointing_* after 5.17; support both.
    if checkpoint_layers <= 0:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
        return
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    graphless = GraphlessCheckpoint() if graphless_forward else None
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = index < checkpoint_layers
        if graphless is not None and layer.gradient_checkpointing:
            layer._gradient_checkpointing_func = graphless


class GraphlessCheckpoint:
    """A checkpointed layer whose forward runs without autograd and is recomputed with it in backward (PyTorch's
    reentrant checkpoint).

    torch.utils.checkpoint's default (non-reentrant) form builds the layer's whole graph in forward and drops what
    it saves through a Python hook per saved tensor, then hooks every tensor of the recomputation again: host work an
    eager step of a big model, whose layers are mostly checkpointed, pays. `benchmarks/checkpoint_host_cost.py` (the
    host's side of a 32-layer 4-bit Llama micro-batch, 30 layers checkpointed, on the 2-core CPU box): 158 ms
    non-reentrant, 137 ms graphless, 95 ms with nothing checkpointed. On an H200 the difference was inside the run
    to run spread (docs/benchmarks.md, session 13). torch.compile, FSDP/DDP and recorded steps keep the
    non-reentrant form, which they need.

    The reentrant form runs backward only for outputs of an input that requires grad, which the first layer's input
    (frozen embeddings) does not; an `anchor` that requires grad, unused by the layer, stands in for it
    (`enable_input_require_grads` would make backward compute the embeddings' gradient as well). The random state is
    saved and restored around the recomputation, so LoRA dropout draws the forward's masks.
    """

    def __init__(self) -> None:
        self.anchor = torch.ones((), requires_grad=True)

    def __call__(self, function: Callable, *args):
        return checkpoint(_without_anchor, function, self.anchor, *args, use_reentrant=True)


def _without_anchor(function: Callable, anchor: torch.Tensor, *args):
    return function(*args)


# How `train --compile` runs the decoder layers, and the multiple every micro-batch's length is padded to for it.
# "kernels": torch.compile's fused kernels. Inductor specialises on whether a length is aligned, and an unaligned
# length recompiled every layer mid-run (9-12 s on an H200), so lengths round up to 8. "graphs": the same kernels
# replayed as CUDA graphs (mode="reduce-overhead"), one launch per layer instead of hundreds. CUDA graphs specialise
# on every shape: each new micro-batch shape compiles again (~12 s for SmolLM2 on an H200), so lengths round up to
# 64: at most 8 lengths at 512 tokens for each number of rows a micro-batch meets. docs/benchmarks.md,
# "`train --compile` on the H200", has the measurements.
PAD_MULTIPLE = {"eager": 1, "kernels": 8, "graphs": 64}


def compile_style(requested: bool, device_type: str, checkpoint_layers: int) -> str:
    """"eager", "kernels" or "graphs" (PAD_MULTIPLE's keys) for a run on `device_type` with that many checkpointed
    layers. CUDA graphs only where no layer is checkpointed. Before transformers 5.24 a checkpointed layer runs its
    graph again inside backward while the forward's replay still holds the outputs backward needs ("accessing
    tensor output of CUDAGraphs that has been overwritten", Falcon-7B at a 24 GiB plan on an H200). From 5.24 the
    checkpoint is inside the compiled region and graphs run, but a plan that checkpoints is a big model's, mostly GPU
    work, where padding to 64 costs more than the launches save (Falcon-7B: 8,862 against 9,424 tokens/s)."""
    if not requested:
        return "eager"
    return "graphs" if device_type == "cuda" and checkpoint_layers == 0 else "kernels"


# A run this long earns back `--compile`'s minutes of compiling on any size measured with CUDA graphs: ~500 steps on
# SmolLM2, on an H200.
COMPILE_PAYS_AFTER_STEPS = 2000


def compile_tip(requested: bool, device_type: str, checkpoint_layers: int, total_steps: int,
                unavailable_reason: Callable[[], str | None], alibi: bool, distributed: bool,
                run_dir: str) -> str | None:
    """A suggestion to add `--compile`, for a long single-GPU run it would speed up, or None. Only where it would run
    as CUDA graphs (no checkpointed layer): fused kernels on a checkpointed Falcon-7B plan were no faster than eager
    once their dropout drew PyTorch's random numbers (docs/benchmarks.md, session 8). `unavailable_reason`
    (compile_unavailable, which imports Triton) is asked last, only for a run the tip would suit."""
    if requested or compile_style(True, device_type, checkpoint_layers) != "graphs" \
            or total_steps < COMPILE_PAYS_AFTER_STEPS or alibi or distributed or unavailable_reason():
        return None
    return (f"This run has {total_steps:,} steps: `--compile` trained 1.7-4.1x faster on an H200 where no layer is "
            "checkpointed (the most on small models) after 1-3 minutes of compiling (docs/benchmarks.md). To switch, "
            f"stop with Ctrl-C (it saves a checkpoint) and run `falcon-desktop train --resume {run_dir} --compile`.")


def compile_layers(model: nn.Module, style: str) -> int:
    """torch.compile each decoder layer as one region in `style` ("kernels" or "graphs"); returns how many.

    Eager training launches a few thousand small kernels per step (norms, rotary, LoRA's down/up/scale/add, the
    4-bit dequantize), so on a small model the GPU waits for Python most of the step (docs/benchmarks.md, "The fixed
    cost of a step"). A compiled layer fuses them; as a CUDA graph it is also launched at once. Layer by layer, not
    the whole model: every layer shares one compiled graph (same code, same shapes), checkpointing still wraps each
    layer, and the loss's gather of answer positions, whose size changes every batch, stays outside. Rows and
    lengths change too: the first recompile marks those two dynamic and nothing else (`dynamic=True` made every size
    symbolic and a SmolLM2 step 1.5x slower on an H200). Compilation happens at the first forward, where a missing
    compiler would fail: `compile_unavailable` says so before the model loads.

    In fused kernels, random numbers (LoRA dropout) come from PyTorch's generator as in eager code, not from
    Inductor's own (`fallback_random`): torch.utils.checkpoint saves and replays that generator's state, so a
    recomputed layer draws its forward's masks by construction. With Inductor's, a layer's gradients changed when it
    was checkpointed (H200, SmolLM2's shape, dropout 0.05: 1.1% relative L2; exact with dropout 0, and exact with the
    generator's numbers). CUDA graphs run only where nothing is checkpointed.
    """
    layers = decoder_layers(model)
    for layer in layers:
        if style == "graphs":
            layer.compile(mode="reduce-overhead")
        else:
            layer.compile(options={"fallback_random": True})
    return len(layers)


def uncompile_layers(model: nn.Module) -> int:
    """Undo `compile_layers`: every decoder layer runs eagerly again; returns how many were compiled."""
    compiled = 0
    for layer in decoder_layers(model):
        if getattr(layer, "_compiled_call_impl", None) is not None:  # where nn.Module.compile keeps it
            layer._compiled_call_impl = None
            compiled += 1
    torch._dynamo.reset()  # drops the compiled code and its CUDA graphs
    return compiled


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile's default backend cannot build kernels for `device`, or None when it can."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed (Windows: pip install triton-windows)"
    compilers = ("cl",) if os.name == "nt" else ("g++", "clang++", "c++")
    return None if any(shutil.which(c) for c in compilers) else "no C++ compiler found for the CPU backend"


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run compiled layers as plain eager code inside this block (generation during training)."""
    with torch.compiler.set_stance("force_eager"):
        yield


def backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer without its LM head, and the head, for a (peft-wrapped) causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix), base.get_output_embeddings()


def load_adapter(model: nn.Module, adapter_dir: Path, name: str = "default"):
    """Attach a trained LoRA adapter (peft format) to a base model; returns the peft model."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(
            f"{str(adapter_dir)!r} holds no adapter_config.json.",
            "Pass a run directory made by `falcon-desktop train` or its adapter/ folder.",
        )
    from falcon_desktop.checkpoint import check_adapter_fits

    check_adapter_fits(model, adapter_dir)  # before peft changes the model: a bad adapter leaves it as it was
    if hasattr(model, "load_adapter") and hasattr(model, "peft_config"):
        model.load_adapter(str(adapter_dir), adapter_name=name)
        model.set_adapter(name)
        return model
    return PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=name, is_trainable=False)

