"""The plan: what fits on this GPU, the training settings that use it best, and what it will cost.

`make_plan(shape, gpu, request)` prices configurations with the memory model (`plan_memory.py`) and chooses, for
the requested method: the largest micro-batch that fits with a safety margin, gradient accumulation up to the
effective batch, as few checkpointed layers as fit, the optimizer, the compute dtype, and the longest sequence that
fits when the requested one does not. When nothing fits it says so and lists the nearest settings that do.
The time it takes, and the one choice speed decides (recorded steps), are `plan_time.py`'s.
Pure Python: no torch or transformers import anywhere in this module.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from falcon_desktop.errors import UserError
from falcon_desktop.hardware import (
    CLOUD_PRICES, CLOUD_PRICES_DATE, GIB, GPUS, GpuModel, compute_dtype_for_capability, gpu_model, match_gpu,
)
from falcon_desktop.plan_memory import COEFFICIENTS, INFERENCE_DTYPES, METHODS, PlannerCoefficients, memory_breakdown
from falcon_desktop.plan_parallel import (
    SCALING_EFFICIENCY, SHARDINGS, ShardedPricer, choose_sharding, per_gpu_request, speed_reason,
)
from falcon_desktop.plan_search import Choice, Pricer, choose_training, least_memory, longest_fitting_seq
from falcon_desktop.plan_time import choose_recording, estimate_reason
from falcon_desktop.shapes import ALL_LINEAR, DEFAULT_LORA_TARGETS, ModelShape, valid_lora_targets

if TYPE_CHECKING:
    from falcon_desktop.probe_gpu import GpuInfo

METHOD_COMPARISON = {    # methods-dict key -> (method, inference dtype)
    "inference_fp32": ("inference", "fp32"), "inference_bf16": ("inference", "bf16"),
    "inference_nf4": ("inference", "nf4"), "full": ("full", "nf4"), "lora": ("lora", "nf4"),
    "qlora": ("qlora", "nf4"),
}
# The seeds' rules of thumb, bytes per parameter, printed beside the detailed figures.
RULES_OF_THUMB: dict[str, tuple[float, str]] = {
    "inference_fp32": (4.0, "4 B/param: 1B -> 4 GB, 70B -> 280 GB"),
    "inference_bf16": (2.0, "2 B/param"),
    "inference_nf4": (0.5, "0.5 B/param"),
    "full": (24.0, "~6x fp32 inference: 16+ B/param + activations"),
    "lora": (2.0, "2 B/param + adapters + activations"),
    "qlora": (0.5, "0.5 B/param + adapters + activations"),
}


@dataclass(frozen=True)
class PlanRequest:
    """What the user asks for; every field has a CLI flag (`falcon-desktop plan --help`)."""

    method: str = "qlora"                     # inference | full | lora | qlora
    inference_dtype: str = "nf4"              # for method=inference: fp32 | bf16 | fp16 | int8 | nf4
    lora_r: int = 16                          # adapter rank: higher learns more, costs a little more memory
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] | None = None   # None -> DEFAULT_LORA_TARGETS[model_type]
    max_seq_len: int = 512                    # longest row in tokens; activations grow with it
    effective_batch_size: int = 16            # examples per optimizer step
    examples: int | None = None               # dataset size, for time and cost ...
    tokens: int | None = None                 # ... or its size in tokens
    mean_tokens_per_example: int = 207        # SQuAD v2 as `train` tokenizes it (Falcon tokenizer, 512)
    epochs: float = 1.0
    micro_batch_size: int | None = None       # force instead of choosing
    gradient_checkpointing: bool | None = None    # force on (all layers) / off instead of choosing
    price_per_kwh: float = 0.30               # electricity, in your currency per kWh
    gpus: int = 1                             # GPUs of one run; effective_batch_size is the global batch
    sharding: str = "auto"                    # auto | ddp | fsdp (auto: ddp when the model fits one GPU)
    cuda_graphs: bool = True                  # train records its steps where it can (train --no-cuda-graphs: off)
    fused_kernels: bool = True                # train's fused_lora.py kernels (False: peft's and transformers' own
                                              # modules, as the runs measured before session 11 had)
    rotary_fast_path: bool = True             # attention.py's Llama-family training attention (False:
                                              # transformers' own, as the runs measured before session 14 had)

    def __post_init__(self) -> None:
        if self.lora_targets is not None and not isinstance(self.lora_targets, tuple):
            object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        problems = [message for wrong, message in (
            (self.method not in METHODS, f"method {self.method!r} is not one of {', '.join(METHODS)}"),
            (self.inference_dtype not in INFERENCE_DTYPES,
             f"inference dtype {self.inference_dtype!r} is not one of {', '.join(INFERENCE_DTYPES)}"),
            (self.lora_r < 1, f"LoRA rank must be at least 1 (got {self.lora_r})"),
            (self.lora_alpha < 1, f"LoRA alpha must be at least 1 (got {self.lora_alpha})"),
            (not 0 <= self.lora_dropout < 1, f"LoRA dropout must be in [0, 1) (got {self.lora_dropout})"),
            (self.max_seq_len < 16, f"sequence length must be at least 16 tokens (got {self.max_seq_len})"),
            (self.effective_batch_size < 1, f"batch size must be at least 1 (got {self.effective_batch_size})"),
            (self.examples is not None and self.examples < 1, f"examples must be positive (got {self.examples})"),
            (self.tokens is not None and self.tokens < 1, f"tokens must be positive (got {self.tokens})"),
            (self.examples is not None and self.tokens is not None,
             "give the dataset size as examples or tokens, not both"),
            (self.mean_tokens_per_example < 1, "mean tokens per example must be positive"),
            (self.epochs <= 0, f"epochs must be positive (got {self.epochs})"),
            (self.micro_batch_size is not None and self.micro_batch_size < 1,
             f"micro-batch must be at least 1 (got {self.micro_batch_size})"),
            (self.price_per_kwh < 0, f"price per kWh cannot be negative (got {self.price_per_kwh})"),
            (self.gpus < 1, f"GPUs must be at least 1 (got {self.gpus})"),
            (self.sharding not in SHARDINGS, f"sharding {self.sharding!r} is not one of {', '.join(SHARDINGS)}"),
        ) if wrong]
        if problems:
            raise UserError("Invalid plan request: " + "; ".join(problems) + ".", "See `falcon-desktop plan --help`.")

    @property
    def dataset_tokens(self) -> int | None:
        """Tokens in one epoch, when the dataset size is known."""
        if self.tokens is not None:
            return self.tokens
        return None if self.examples is None else self.examples * self.mean_tokens_per_example


@dataclass(frozen=True)
class GpuSpec:
    """What the planner knows of the card."""

    name: str
    vram_bytes: int                          # the budget: free VRAM (NVML) or the card's size
    compute_capability: tuple[int, int] | None
    bf16_tflops: float | None                # dense 16-bit tensor peak; None: no time estimate
    watts: float | None
    source: str                              # "nvml" | "--vram" | "--gpu" | "table"

    @classmethod
    def from_table(cls, model: GpuModel, source: str = "table", vram_bytes: int | None = None) -> GpuSpec:
        return cls(model.name, vram_bytes if vram_bytes is not None else int(model.vram_gib * GIB),
                   model.compute_capability, model.bf16_tflops, model.watts, source)

    @classmethod
    def from_probe(cls, info: GpuInfo) -> GpuSpec:
        """A GPU as NVML reports it: its FREE memory is the budget; the table adds the speed and what NVML lacks."""
        known = match_gpu(info.name, info.total_bytes)
        known = known if isinstance(known, GpuModel) else None
        return cls(
            name=info.name, vram_bytes=info.free_bytes,
            compute_capability=info.compute_capability or (known.compute_capability if known else None),
            bf16_tflops=known.bf16_tflops if known else None,
            watts=info.power_limit_watts or (known.watts if known else None), source="nvml",
        )


# Adapter learning rates. Measured on SmolLM2-135M-Instruct (H200, 2 epochs, 4,298 SQuAD v2 questions, 1,000
# held-out; docs/quality.md): 2e-4 scored 57.9 held-out F1, under the abstain-always 58.3; 1e-3 scored 61.4-63.1,
# with 5e-4 (rank 64) and 2e-3 within 2 F1 of it. Above 1B parameters the QLoRA papers' 2e-4 stays: no real model of
# that size could be trained here to check a higher rate.
SMALL_MODEL_PARAMS = 1_000_000_000
SMALL_MODEL_LEARNING_RATE = 1e-3
LARGE_MODEL_LEARNING_RATE = 2e-4


def adapter_learning_rate(total_params: int) -> tuple[float, str]:
    """The LoRA/QLoRA learning rate for a base of `total_params` parameters, with its reason."""
    if total_params < SMALL_MODEL_PARAMS:
        return SMALL_MODEL_LEARNING_RATE, (f"{SMALL_MODEL_LEARNING_RATE:g} for a base under 1B parameters: on "
                                           "SmolLM2-135M it beat 2e-4 by 3.5-5 held-out F1 (docs/quality.md)")
    return LARGE_MODEL_LEARNING_RATE, f"{LARGE_MODEL_LEARNING_RATE:g}, the QLoRA recipe's rate for bases of 1B and more"


def detected_gpu() -> GpuSpec | None:
    """The first GPU NVML reports; None without one (or without a working probe)."""
    try:
        from falcon_desktop.probe import detect_gpus

        gpus = detect_gpus()
    except Exception:  # noqa: BLE001 - no probe, no driver, a wedged NVML: all mean "plan without a GPU"
        return None
    return GpuSpec.from_probe(gpus[0]) if gpus else None


@dataclass(frozen=True)
class Alternative:
    """A nearby setting that fits when the requested one does not."""

    summary: str          # "QLoRA instead of LoRA"
    flags: str            # "--method qlora": what to pass to get it
    peak_vram_bytes: int


@dataclass(frozen=True)
class Plan:
    """The planner's decision; the trainer reads only these fields. Each choice has a line in `reasons`."""

    model: str
    model_type: str
    method: str
    compute_dtype: str                 # "bfloat16" (compute capability >= 8.0) | "float16"
    total_params: int
    trainable_params: int
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_targets: tuple[str, ...]
    max_seq_len: int                   # longer rows hold more context; activations grow with it
    micro_batch_size: int              # rows of max_seq_len tokens per forward; token budget = this x max_seq_len
    gradient_accumulation_steps: int   # ceil(effective_batch_size / micro_batch_size)
    effective_batch_size: int
    gradient_checkpointing: bool
    checkpoint_layers: int             # the first N decoder layers recompute in backward: less memory, +50% compute
    optimizer: str                     # paged_adamw_8bit | adamw_8bit | adamw_fused | adamw | none (inference)
    peak_vram_bytes: int
    vram_budget_bytes: int
    fits: bool
    breakdown: dict[str, int]          # component -> bytes at the peak
    methods: dict[str, int]            # inference_fp32/bf16/nf4, full, lora, qlora -> peak bytes, same settings
    estimated_tokens_per_second: float | None
    estimated_hours: float | None
    reasons: dict[str, str]
    gpu: GpuSpec | None
    alternatives: tuple[Alternative, ...] = ()   # when it does not fit: nearest settings that do
    parameter_counts: dict[str, int] = field(default_factory=dict)  # embeddings / attention / mlp / norms / head
    learning_rate: float | None = None  # adapter learning rate train uses unless --learning-rate; None: inference
    gpus: int = 1                      # GPUs of the run: memory figures are per GPU, speed and hours for all
    sharding: str = "none"             # none (one GPU) | ddp | fsdp (plan_parallel.py)
    records_steps: bool = False        # train records its steps as CUDA graphs (plan_time.choose_recording)

    def to_json(self) -> dict[str, Any]:
        """Every field, JSON-safe (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        """The plan of `to_json`; keys this version does not know are named in a warning and ignored."""
        from falcon_desktop.console import warn

        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            warn(f"The saved plan has keys this version of falcon-desktop does not know: {', '.join(unknown)} (ignored).")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise UserError(f"The saved plan lacks {', '.join(missing)}.", "Start a new run: its plan is made afresh.")
        values = {name: data[name] for name in names if name in data}
        values["lora_targets"] = tuple(values["lora_targets"])
        gpu = values["gpu"]
        if gpu is not None:
            capability = gpu.get("compute_capability")
            values["gpu"] = GpuSpec(**{**gpu, "compute_capability": tuple(capability) if capability else None})
        values["alternatives"] = tuple(Alternative(**item) for item in values.get("alternatives", ()))
        # Plans saved before the planner chose: train recorded the steps wherever no layer was checkpointed.
        adapters = values["method"] in ("lora", "qlora")
        values.setdefault("records_steps", adapters and values["checkpoint_layers"] == 0)
        return cls(**values)


def validate_lora_targets(shape: ModelShape, targets: Any) -> tuple[str, ...]:
    """The requested LoRA targets, checked one by one against this architecture's linear layers.

    peft only complains when no target matches, so one misspelt name among valid ones is silently dropped; here
    each must exist. "all-linear" means every one of them.
    """
    valid = valid_lora_targets(shape)
    requested = (targets,) if isinstance(targets, str) else tuple(targets)
    if ALL_LINEAR in requested:
        return valid
    unknown = [name for name in requested if name not in valid]
    if unknown or not requested:
        glued = [name for name in unknown if any(name.startswith(a) and name[len(a):] in valid for a in valid)]
        hint = f"Valid targets for {shape.model_type}: {', '.join(valid)} (or {ALL_LINEAR})."
        if glued:
            hint += f" {glued[0]!r} looks like two names without a comma: separate them, e.g. --lora-targets a,b."
        what = f"LoRA target(s) {', '.join(repr(n) for n in unknown)} match no layer" if unknown else "No LoRA target"
        raise UserError(f"{what} of {shape.name} ({shape.model_type}).", hint)
    return tuple(dict.fromkeys(requested))


def _lora_targets_for(shape: ModelShape, request: PlanRequest) -> tuple[str, ...]:
    if request.method not in ("lora", "qlora"):
        return ()
    return validate_lora_targets(shape, request.lora_targets or DEFAULT_LORA_TARGETS[shape.model_type])


def compute_dtype_for(gpu: GpuSpec | None) -> tuple[str, str]:
    """bf16 where the card has it (compute capability 8.0+), else fp16; with the reason."""
    capability = gpu.compute_capability if gpu else None
    dtype = compute_dtype_for_capability(capability)
    if capability is None:
        return dtype, "bf16 assumed (needs compute capability 8.0+; the card's is unknown)"
    cc = ".".join(map(str, capability))
    if dtype == "bfloat16":
        return dtype, f"compute capability {cc} has bf16: fp16's range without its overflow"
    return dtype, f"compute capability {cc} lacks bf16: fp16 with loss scaling"


def _reasons_for(choice: Choice, request: PlanRequest, layers: int, fits: bool) -> dict[str, str]:
    accumulation = math.ceil(request.effective_batch_size / choice.micro_batch_size)
    chosen = (f"the most {choice.seq_len}-token rows that fit with the safety margin, evened out over the "
              f"{accumulation} micro-batch(es) of a step" if fits else "does not fit: one row, the least memory")
    if request.gradient_checkpointing is not None:
        checkpointing = "forced by --checkpointing/--no-checkpointing"
    elif not fits:
        checkpointing = "does not fit: as many layers checkpointed as help, the least memory"
    elif choice.checkpoint_layers == 0:
        checkpointing = "not needed: every layer keeps its activations (fastest)"
    else:
        checkpointing = (f"the fewest of {layers} layers that must recompute in backward to fit "
                         "(+50% compute on those layers)")
    return {
        "micro_batch_size": "forced by --micro-batch" if request.micro_batch_size else chosen,
        "gradient_accumulation_steps": f"{request.effective_batch_size} examples per optimizer step / "
                                       f"{choice.micro_batch_size} per micro-batch, rounded up",
        "checkpoint_layers": checkpointing,
        "max_seq_len": ("as requested" if choice.seq_len == request.max_seq_len or not fits else
                        f"{request.max_seq_len} tokens do not fit even one row; {choice.seq_len} is the longest "
                        "that does (longer examples are windowed or dropped)"),
    }


def make_plan(shape: ModelShape, gpu: GpuSpec | None, request: PlanRequest,
              coefficients: PlannerCoefficients = COEFFICIENTS) -> Plan:
    """Choose the settings for `request` on `gpu` (None: no budget known) and price them."""
    plan = _decide(shape, gpu, request, coefficients)
    if plan.fits:
        return plan
    return replace(plan, alternatives=tuple(_alternatives(shape, gpu, request, coefficients)))


def _decide(shape: ModelShape, gpu: GpuSpec | None, request: PlanRequest, c: PlannerCoefficients) -> Plan:
    """The plan without alternatives."""
    training = request.method != "inference"
    targets = _lora_targets_for(shape, request)
    request, whole = (per_gpu_request(request) if training else request), request  # one GPU's share of a step
    pricer = Pricer(shape, request, targets, c)
    usable = None if gpu is None else gpu.vram_bytes * (1 - c.safety_margin_fraction)
    reasons: dict[str, str] = {}
    sharding, reasons["sharding"] = choose_sharding(pricer, whole, usable) if training else ("none", "inference")
    if sharding == "fsdp":
        pricer = ShardedPricer(pricer, whole.gpus)
    choice: Choice | None = None
    if not training:
        choice = Choice(request.max_seq_len, 1, 0, "none")
    elif usable is not None:
        choice, reasons["optimizer"] = choose_training(pricer, usable)
    else:
        reasons["optimizer"] = "paged 8-bit AdamW: the least memory (no GPU budget to fit)"
    choice = choice or least_memory(pricer)
    trainable = (shape.total_params if request.method == "full" else
                 shape.lora_parameters(targets, request.lora_r) if targets else 0)
    breakdown = pricer.breakdown(choice)
    peak = sum(breakdown.values())
    fits = usable is not None and peak <= usable
    if training:
        reasons.update(_reasons_for(choice, request, shape.num_layers, fits))
    if usable is None:
        reasons["micro_batch_size"] = "no GPU budget: the least memory these settings can use"
    elif not training:
        reasons["micro_batch_size"] = "one question at a time"
        reasons["max_seq_len"] = "the prompt (context + question) the KV cache holds"
    dtype, reasons["compute_dtype"] = compute_dtype_for(gpu)
    records, why_recorded, speed, hours = choose_recording(shape, gpu, request, choice, targets, trainable, c,
                                                           pricer.setup(choice), _recording_room(gpu, peak, c))
    if training and records and choice.checkpoint_layers:
        breakdown["recorded_steps"] = c.recorded_checkpoint_bytes
        peak += c.recorded_checkpoint_bytes
    if training:
        reasons["records_steps"] = why_recorded
    reasons["fits"] = _fit_reason(peak, gpu, c, fits, breakdown["recorded_steps"])
    reasons["estimated_tokens_per_second"] = estimate_reason(gpu, request, speed)
    tokens_per_second = speed.tokens_per_second * whole.gpus * SCALING_EFFICIENCY[sharding] if speed else None
    if speed and whole.gpus > 1:
        hours = hours and hours * speed.tokens_per_second / tokens_per_second
        reasons["estimated_tokens_per_second"] = speed_reason(whole.gpus, sharding, speed.tokens_per_second)
        reasons["gpus"] = (f"global batch {whole.effective_batch_size} = {whole.gpus} GPUs x up to "
                           f"{request.effective_batch_size} examples each per step; memory figures are per GPU")
    accumulation = math.ceil(request.effective_batch_size / choice.micro_batch_size) if training else 1
    learning_rate = None
    if targets:
        learning_rate, reasons["learning_rate"] = adapter_learning_rate(shape.total_params)
    return Plan(
        model=shape.name, model_type=shape.model_type, method=request.method, compute_dtype=dtype,
        total_params=shape.total_params, trainable_params=trainable, lora_r=request.lora_r,
        lora_alpha=request.lora_alpha, lora_dropout=request.lora_dropout, lora_targets=targets,
        max_seq_len=choice.seq_len, micro_batch_size=choice.micro_batch_size,
        gradient_accumulation_steps=accumulation, effective_batch_size=whole.effective_batch_size,
        gradient_checkpointing=choice.checkpoint_layers > 0, checkpoint_layers=choice.checkpoint_layers,
        optimizer=choice.optimizer, peak_vram_bytes=peak, vram_budget_bytes=gpu.vram_bytes if gpu else 0,
        fits=fits, breakdown=breakdown,
        methods={key: sum(memory_breakdown(shape, pricer.setup(choice, method, dtype_name), c).values())
                 for key, (method, dtype_name) in METHOD_COMPARISON.items()},
        estimated_tokens_per_second=tokens_per_second, estimated_hours=hours,
        reasons=reasons, gpu=gpu,
        parameter_counts=shape.parameter_counts(), learning_rate=learning_rate, gpus=whole.gpus, sharding=sharding,
        records_steps=training and records,
    )


def _recording_room(gpu: GpuSpec | None, peak: int, c: PlannerCoefficients) -> float | None:
    """What recorded checkpointed steps may add to an eager plan's peak: up to half the safety margin (a step that
    runs out of memory recorded is redone eagerly, train.py), so that the memory search need not know of them."""
    return None if gpu is None else gpu.vram_bytes * (1 - c.safety_margin_fraction / 2) - peak


def _fit_reason(peak: int, gpu: GpuSpec | None, c: PlannerCoefficients, fits: bool, recorded: int) -> str:
    if gpu is None:
        return "no GPU detected: pass --vram or --gpu"
    margin = f"{c.safety_margin_fraction:.0%} of {gpu.vram_bytes / GIB:.1f} GiB kept free"
    if recorded:
        margin += f", of which recorded steps may take {recorded / GIB:.2f} GiB"
    return (f"{peak / GIB:.1f} GiB predicted peak, within the budget ({margin})" if fits else
            f"{peak / GIB:.1f} GiB predicted peak exceeds the budget ({margin})")


def _alternatives(shape: ModelShape, gpu: GpuSpec | None, request: PlanRequest,
                  c: PlannerCoefficients) -> list[Alternative]:
    """The nearest settings that fit, each changing one thing of the request; then a card with more memory."""
    candidates: list[tuple[str, str, PlanRequest]] = []
    if gpu is not None:
        if request.method in ("full", "lora"):
            candidates.append((f"QLoRA instead of {request.method}", "--method qlora",
                               replace(request, method="qlora")))
        if request.method == "full":
            candidates.append(("LoRA instead of full fine-tuning", "--method lora", replace(request, method="lora")))
        if request.method == "inference":
            candidates += [(f"{dtype} weights", f"--inference-dtype {dtype}", replace(request, inference_dtype=dtype))
                           for dtype in ("int8", "nf4") if dtype != request.inference_dtype]
        if request.method in ("lora", "qlora"):
            candidates += [(f"rank {r}", f"--lora-r {r}", replace(request, lora_r=r)) for r in (8, 4)
                           if r < request.lora_r]
        if request.micro_batch_size is not None or request.gradient_checkpointing is False:
            candidates.append(("let the planner choose micro-batch and checkpointing",
                               "drop --micro-batch / --no-checkpointing",
                               replace(request, micro_batch_size=None, gradient_checkpointing=None)))
        if request.method != "inference":
            usable = gpu.vram_bytes * (1 - c.safety_margin_fraction)
            seq = longest_fitting_seq(Pricer(shape, request, _lora_targets_for(shape, request), c), usable)
            if seq is not None:
                candidates.append((f"sequences of {seq} tokens", f"--seq-len {seq}",
                                   replace(request, max_seq_len=seq)))
    found = []
    for summary, flags, alternative in candidates:
        plan = _decide(shape, gpu, alternative, c)
        if plan.fits:
            found.append(Alternative(summary, flags, plan.peak_vram_bytes))
    bigger = _smallest_gpu_that_fits(shape, request, c, above=gpu.vram_bytes if gpu else 0)
    if bigger is not None:
        found.append(bigger)
    return found


def _smallest_gpu_that_fits(shape: ModelShape, request: PlanRequest, c: PlannerCoefficients,
                            above: int) -> Alternative | None:
    for model in sorted(GPUS, key=lambda g: (g.vram_gib, g.bf16_tflops)):
        spec = GpuSpec.from_table(model)
        if spec.vram_bytes <= above:
            continue
        plan = _decide(shape, spec, request, c)
        if plan.fits:
            return Alternative(f"a GPU with more memory, e.g. {model.name} ({model.vram_gib:g} GiB)",
                               f"--gpu \"{model.name}\"", plan.peak_vram_bytes)
    return None


def cost_estimates(shape: ModelShape, request: PlanRequest, plan: Plan,
                   coefficients: PlannerCoefficients = COEFFICIENTS) -> dict[str, Any]:
    """Electricity for this plan on this card, and what the same run costs on cloud instances (dated prices)."""
    tokens = request.dataset_tokens
    trained_tokens = None if tokens is None else tokens * request.epochs
    electricity = None
    if plan.gpu and plan.gpu.watts and plan.estimated_hours is not None:
        kwh = plan.gpu.watts * plan.estimated_hours / 1000
        electricity = {"watts": plan.gpu.watts, "kwh": kwh, "price_per_kwh": request.price_per_kwh,
                       "cost": kwh * request.price_per_kwh}
    cloud = []
    for instance in CLOUD_PRICES if request.method != "inference" else ():
        # One card's plan; several cards train with DDP, whose steps are not recorded (step_graphs.py).
        per_card = replace(request, gpus=1, cuda_graphs=request.cuda_graphs and instance.gpu_count == 1)
        card = _decide(shape, GpuSpec.from_table(gpu_model(instance.gpu)), per_card, coefficients)
        speed = (card.estimated_tokens_per_second or 0) * instance.gpu_count  # ideal data-parallel scaling
        row: dict[str, Any] = {"provider": instance.provider, "instance": instance.instance, "gpu": instance.gpu,
                               "gpu_count": instance.gpu_count, "usd_per_hour": instance.usd_per_hour,
                               "fits": card.fits, "tokens_per_second": speed if card.fits else None,
                               "hours": None, "usd": None}
        if card.fits and speed and trained_tokens is not None:
            row["hours"] = trained_tokens / speed / 3600
            row["usd"] = row["hours"] * instance.usd_per_hour
        cloud.append(row)
    return {"trained_tokens": trained_tokens, "electricity": electricity, "cloud": cloud,
            "cloud_prices_date": CLOUD_PRICES_DATE}


def rules_of_thumb(total_params: int) -> dict[str, int]:
    """The rule-of-thumb bytes for each compared method."""
    return {key: int(bytes_per_param * total_params) for key, (bytes_per_param, _) in RULES_OF_THUMB.items()}
