"""How long a plan's training takes: the speed model (plan_speed.py) applied to one of the planner's choices, and
the one choice that speed, not memory, decides: recorded steps over a bigger micro-batch.

`train` records its steps as CUDA graphs where no layer is checkpointed on one GPU (step_graphs.py), which makes a
small model's step several times faster. So where the memory-first choice (plan_search.py) checkpoints layers, a
smaller micro-batch that needs none may train faster; `prefer_recorded` takes it when the speed model says so by a
wide margin. Pure Python: no torch import.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from falcon_desktop.plan_memory import PlannerCoefficients
from falcon_desktop.plan_search import Choice, Pricer, best_fit
from falcon_desktop.plan_speed import SpeedEstimate, Workload, estimate_speed
from falcon_desktop.shapes import ModelShape

if TYPE_CHECKING:
    from falcon_desktop.plan import GpuSpec, PlanRequest

# A plan gives up its bigger micro-batch (and the checkpointing that fits it) for no checkpointing, whose steps the
# trainer records as CUDA graphs, only where the speed model expects this much more: the recorded-step model was
# fitted on four H200 runs (within ±7%), none of them under a cap.
RECORDED_MIN_GAIN = 1.5


def records_steps(request: PlanRequest) -> bool:
    """Whether `train` would record the steps of a plan without checkpointed layers (as step_graphs.graphs_unavailable
    decides: one GPU, adapters trained, --cuda-graphs, no --compile)."""
    return request.cuda_graphs and request.gpus == 1 and request.method in ("lora", "qlora")


def estimate_time(shape: ModelShape, gpu: GpuSpec | None, request: PlanRequest, choice: Choice,
                  targets: tuple[str, ...], trainable: int,
                  c: PlannerCoefficients) -> tuple[SpeedEstimate | None, float | None]:
    """The speed model's estimate for this choice, and the hours for the dataset when its size is known."""
    if request.method == "inference" or gpu is None or gpu.bf16_tflops is None:
        return None, None
    workload = Workload(request.method, targets, trainable, request.effective_batch_size,
                        choice.micro_batch_size * choice.seq_len, min(request.mean_tokens_per_example, choice.seq_len),
                        choice.checkpoint_layers, c.labelled_token_fraction,
                        recorded=records_steps(request) and choice.checkpoint_layers == 0)
    speed = estimate_speed(shape, workload, gpu.bf16_tflops)
    tokens = request.dataset_tokens
    return speed, None if tokens is None else tokens * request.epochs / speed.tokens_per_second / 3600


def estimate_reason(gpu: GpuSpec | None, request: PlanRequest, speed: SpeedEstimate | None) -> str:
    """Why the estimate is what it is, or why there is none."""
    if request.method == "inference":
        return "no estimate for inference (memory-bandwidth bound, not modelled)"
    if gpu is None or gpu.bf16_tflops is None or speed is None:
        return "no estimate: the card's peak FLOPS are unknown (pass --gpu NAME)"
    return speed.reason(gpu.name, gpu.bf16_tflops)


def prefer_recorded(shape: ModelShape, gpu: GpuSpec | None, request: PlanRequest, choice: Choice,
                    targets: tuple[str, ...], trainable: int, usable: float,
                    c: PlannerCoefficients) -> tuple[Choice, str | None]:
    """The largest micro-batch that needs no checkpointed layer at the same length, where the trainer would record
    its steps and the speed model expects it RECORDED_MIN_GAIN times faster than `choice`; with the reason."""
    if not (choice.checkpoint_layers and records_steps(request) and request.micro_batch_size is None
            and request.gradient_checkpointing is None):
        return choice, None
    unchecked = best_fit(Pricer(shape, replace(request, gradient_checkpointing=False), targets, c), choice.optimizer,
                         usable)
    if unchecked is None or unchecked.seq_len != choice.seq_len:
        return choice, None
    speeds = [estimate_time(shape, gpu, request, option, targets, trainable, c)[0] for option in (choice, unchecked)]
    if None in speeds or speeds[1].tokens_per_second < RECORDED_MIN_GAIN * speeds[0].tokens_per_second:
        return choice, None
    return unchecked, (f"{unchecked.micro_batch_size} rows, the most that fit with no layer checkpointed, so that "
                       f"`train` records its steps as CUDA graphs: ~{speeds[1].tokens_per_second:,.0f} tokens/s "
                       f"estimated against ~{speeds[0].tokens_per_second:,.0f} for {choice.micro_batch_size} rows "
                       f"with {choice.checkpoint_layers} checkpointed layers (eager steps)")
