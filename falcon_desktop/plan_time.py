"""How long a plan's training takes: the speed model (plan_speed.py) applied to one of the planner's choices, and
the one setting that speed, not memory, decides: recorded steps or eager ones.

`train` can record its steps as CUDA graphs on one GPU (step_graphs.py), which makes a small model's step several
times faster and a big GPU-bound one slower (its rows pad to 64 tokens): `choose_recording` says which. Pure Python:
no torch import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from falcon_desktop.plan_memory import PlannerCoefficients, Setup
from falcon_desktop.plan_search import Choice
from falcon_desktop.plan_speed import SpeedEstimate, Workload, estimate_speed
from falcon_desktop.shapes import ModelShape

if TYPE_CHECKING:
    from falcon_desktop.plan import GpuSpec, PlanRequest


def records_steps(request: PlanRequest) -> bool:
    """Whether `train` may record the steps of this request (as step_graphs.graphs_unavailable decides: one GPU,
    adapters trained, --cuda-graphs, no --compile); `choose_recording` says whether it should."""
    return request.cuda_graphs and request.gpus == 1 and request.method in ("lora", "qlora")


def estimate_time(shape: ModelShape, gpu: GpuSpec | None, request: PlanRequest, choice: Choice,
                  targets: tuple[str, ...], trainable: int, c: PlannerCoefficients, kernels: Setup,
                  recorded: bool = False) -> tuple[SpeedEstimate | None, float | None]:
    """The speed model's estimate for this choice, its steps recorded or eager, and the hours for the dataset when
    its size is known. `kernels`: the memory model's Setup of this choice, whose fused_lora and fused_rms_norm say
    which of fused_lora.py's kernels train runs (peft's LoRA layers under FSDP), so both models price the same."""
    if request.method == "inference" or gpu is None or gpu.bf16_tflops is None:
        return None, None
    workload = Workload(request.method, targets, trainable, request.effective_batch_size,
                        choice.micro_batch_size * choice.seq_len, min(request.mean_tokens_per_example, choice.seq_len),
                        choice.checkpoint_layers, c.labelled_token_fraction, recorded=recorded,
                        fused_lora=kernels.fused_lora, fused_rms_norm=kernels.fused_rms_norm,
                        rotary_fast_path=request.rotary_fast_path)
    speed = estimate_speed(shape, workload, gpu.bf16_tflops)
    tokens = request.dataset_tokens
    return speed, None if tokens is None else tokens * request.epochs / speed.tokens_per_second / 3600


def choose_recording(shape: ModelShape, gpu: GpuSpec | None, request: PlanRequest, choice: Choice,
                     targets: tuple[str, ...], trainable: int, c: PlannerCoefficients,
                     kernels: Setup, room: float | None) -> tuple[bool, str, SpeedEstimate | None, float | None]:
    """Whether `train` records this choice's steps as CUDA graphs, why, and the speed estimate and hours of the steps
    it chose.

    A recorded step launches no kernels from the host, but pads every row to a multiple of 64 tokens and records
    each new shape once (about an eager step). Without checkpointed layers that paid or broke even at every size
    measured (docs/benchmarks.md, "Recorded steps"), so those steps are always recorded. With checkpointed layers
    the GPU's work weighs more, and where a step is GPU-bound the padding costs more than the launches save (an
    RTX 4070's Llama-3-8B plan). So checkpointed steps are recorded where the speed model expects them faster, and
    not on a card whose speed is unknown; on the H200 planner matrix that was every Llama-3-8B plan, measured
    faster recorded (8 GiB: 5,662 tokens/s against 1,727 eager; docs/planner.md). They also reserve a little more
    than eager ones (`recorded_checkpoint_bytes`), which must fit in `room`, what the plan may add to the eager
    plan's peak (plan.py; None: no card known).
    """
    def priced(recorded: bool) -> tuple[SpeedEstimate | None, float | None]:
        return estimate_time(shape, gpu, request, choice, targets, trainable, c, kernels, recorded)

    if not records_steps(request):
        return False, "recorded steps need one GPU, LoRA or QLoRA, --cuda-graphs and no --compile", *priced(False)
    recorded = priced(True)
    if not choice.checkpoint_layers:
        return True, "no layer is checkpointed: recorded steps were faster or even at every size measured", *recorded
    eager = priced(False)
    if eager[0] is None or recorded[0] is None:
        return False, ("with checkpointed layers, recorded steps pay only where the speed model says so, and this "
                       "card's speed is unknown (pass --gpu NAME)"), *eager
    eager_speed, recorded_speed = eager[0].tokens_per_second, recorded[0].tokens_per_second
    if recorded_speed > eager_speed and room is not None and room < c.recorded_checkpoint_bytes:
        return False, (f"~{recorded_speed:,.0f} tokens/s estimated recorded against ~{eager_speed:,.0f} eager, but "
                       f"recorded checkpointed steps hold ~{c.recorded_checkpoint_bytes / 2**30:.2f} GiB more than "
                       "eager ones, which this card's safety margin does not leave"), *eager
    if recorded_speed > eager_speed:
        return True, f"~{recorded_speed:,.0f} tokens/s estimated recorded against ~{eager_speed:,.0f} eager", *recorded
    return False, (f"~{eager_speed:,.0f} tokens/s estimated eager against ~{recorded_speed:,.0f} recorded: padding "
                   "rows to 64 tokens costs this GPU-bound step more than the kernel launches it saves"), *eager


def estimate_reason(gpu: GpuSpec | None, request: PlanRequest, speed: SpeedEstimate | None) -> str:
    """Why the estimate is what it is, or why there is none."""
    if request.method == "inference":
        return "no estimate for inference (memory-bandwidth bound, not modelled)"
    if gpu is None or gpu.bf16_tflops is None or speed is None:
        return "no estimate: the card's peak FLOPS are unknown (pass --gpu NAME)"
    return speed.reason(gpu.name, gpu.bf16_tflops)
