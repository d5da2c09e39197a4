"""Several GPUs in the plan: data parallel (DDP) when the model fits one card, FSDP-QLoRA when it does not.

DDP replicates the whole model on every GPU, so a GPU's memory is one GPU's plan for its share of the global batch.
FSDP shards the 4-bit weights, their constants, the adapters, their gradients and the optimizer states over the GPUs
and gathers one layer's weights at a time (plus the next, prefetched) to compute; activations stay per GPU. The
speed-up is N x a scaling efficiency that is an ESTIMATE, not a measurement (docs/multi-gpu.md, "Not measured
yet"): DDP exchanges only the LoRA gradients once per step (130 MB for Falcon-7B), which NVLink moves in
milliseconds, hence 0.9; FSDP also gathers every layer's weights in the forward and again in the backward, hence
0.7. Pure Python: no torch import.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from falcon_desktop.hardware import GIB
from falcon_desktop.plan_memory import PlannerCoefficients, Setup
from falcon_desktop.plan_search import Choice, Pricer, least_memory

if TYPE_CHECKING:
    from falcon_desktop.plan import PlanRequest

SHARDINGS = ("auto", "ddp", "fsdp")
SCALING_EFFICIENCY = {"none": 1.0, "ddp": 0.9, "fsdp": 0.7}  # estimates (see above), not measured
SHARDED_COMPONENTS = ("weights", "quant_constants", "lora_weights", "gradients", "optimizer")
GATHERED_LAYERS = 2  # FSDP holds the layer it computes and the one it prefetches unsharded


def fsdp_breakdown(breakdown: dict[str, int], gpus: int, num_layers: int, c: PlannerCoefficients) -> dict[str, int]:
    """One GPU's share under FSDP of a one-GPU breakdown: sharded state / N, gathered layers, activations as they are."""
    gathered = GATHERED_LAYERS * (breakdown["weights"] + breakdown["quant_constants"]) / num_layers
    parts = {name: math.ceil(size / gpus) if name in SHARDED_COMPONENTS else size for name, size in breakdown.items()}
    parts["weights"] += math.ceil(gathered)
    parts["allocator_slack"] = math.ceil(c.allocator_slack_fraction * sum(
        size for name, size in parts.items() if name not in ("cuda_context", "allocator_slack")))
    return parts


class ShardedPricer(Pricer):
    """Prices a configuration per GPU under FSDP over `gpus` GPUs, so the planner's search runs unchanged."""

    def __init__(self, pricer: Pricer, gpus: int) -> None:
        super().__init__(pricer.shape, pricer.request, pricer.targets, pricer.c)
        self.gpus = gpus

    def setup(self, choice: Choice, method: str | None = None, inference_dtype: str | None = None) -> Setup:
        """Under FSDP the trainer keeps peft's LoRA layers (fused_lora.py does not run on sharded weights)."""
        return replace(super().setup(choice, method, inference_dtype), fused_lora=False)

    def breakdown(self, choice: Choice) -> dict[str, int]:
        return fsdp_breakdown(super().breakdown(choice), self.gpus, self.shape.num_layers, self.c)


def per_gpu_request(request: PlanRequest) -> PlanRequest:
    """What one GPU trains of each step: its share of the global batch (the last GPUs may get one example fewer)."""
    return replace(request, effective_batch_size=math.ceil(request.effective_batch_size / request.gpus))


def choose_sharding(pricer: Pricer, request: PlanRequest, usable: float | None) -> tuple[str, str]:
    """none (one GPU), ddp or fsdp, with the reason; `pricer` prices one GPU's share of the batch."""
    if request.gpus == 1:
        return "none", "one GPU"
    if request.sharding != "auto":
        return request.sharding, f"forced by --sharding {request.sharding}"
    if request.method not in ("lora", "qlora"):
        return "ddp", "data parallel: only LoRA and QLoRA are sharded by this planner"
    if usable is None:
        return "ddp", "data parallel: no GPU budget known to say the model needs sharding"
    least = pricer.peak(least_memory(pricer))
    if least <= usable:
        return "ddp", (f"the model fits one GPU ({least / GIB:.1f} GiB at the least), so every GPU holds it whole "
                       "and only the LoRA gradients are exchanged, once per step")
    return "fsdp", (f"even at the least ({least / GIB:.1f} GiB) the model does not fit one GPU: FSDP shards "
                    f"its 4-bit weights, adapters and optimizer states over {request.gpus} GPUs")


def speed_reason(gpus: int, sharding: str, per_gpu_tokens_per_second: float) -> str:
    efficiency = SCALING_EFFICIENCY[sharding]
    return (f"{gpus} GPUs x {per_gpu_tokens_per_second:,.0f} tokens/s each x {efficiency:.0%} scaling efficiency "
            f"for {sharding.upper()} (an estimate, not measured)")
