"""The optimizer, one optimizer step (forward and backward over its micro-batches, clip, update), and the
learning-rate schedule: warmup + cosine, fixed when a run starts and kept on resume."""

from __future__ import annotations

import math

import torch

from falcon_desktop.attention import causal_fast_path
from falcon_desktop.console import info
from falcon_desktop.distributed import Cluster
from falcon_desktop.loss import count_label_tokens
from falcon_desktop.runs import RunCard


def make_optimizer(model: torch.nn.Module, name: str, learning_rate: float, device: torch.device):
    params = [p for p in model.parameters() if p.requires_grad]
    if name in ("paged_adamw_8bit", "adamw_8bit") and device.type == "cuda":
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.AdamW8bit
        return cls(params, lr=learning_rate, weight_decay=0.0)
    fused = name == "adamw_fused" and device.type == "cuda"
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0, fused=fused or None)


def optimizer_step(model, batches: list[dict], optimizer, scheduler, scaler, compute_dtype: torch.dtype,
                   max_grad_norm: float, cluster: Cluster | None = None) -> tuple[float, float]:
    """Forward/backward every micro-batch, then one optimizer step; returns (loss per answer token, grad norm).

    On several ranks `batches` are this rank's share; the loss is normalised over the whole step's answer tokens.

    A non-finite loss skips the update (and returns NaN as the norm) so the weights stay as last checkpointed.
    """
    model.train()
    device = next(p for p in model.parameters() if p.requires_grad).device
    cluster = cluster or Cluster()
    label_tokens = int(cluster.sum(sum(count_label_tokens(batch["labels"]) for batch in batches))[0])
    loss_of = cluster.loss_function(model)
    autocast = torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32)
    total = torch.zeros((), device=device)
    with causal_fast_path(model):  # backward too: checkpointed layers run their forward again there
        for number, batch in enumerate(batches, 1):
            input_ids = batch["input_ids"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            with cluster.accumulating(last=number == len(batches)):
                with autocast:
                    loss_sum = loss_of(input_ids, labels)
                scaler.scale(loss_sum / label_tokens).backward()
            total += loss_sum.detach()
    loss = cluster.sum(float(total))[0] / label_tokens  # the step's one host sync
    if not math.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        return loss, float("nan")
    scaler.unscale_(optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    grad_norm = cluster.clip_gradients(trainable, max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return loss, float(grad_norm)


def warmup_cosine(total_steps: int, warmup_fraction: float):
    warmup = max(1, round(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def warmup_cosine_phases(phases: list[list[int]], warmup_fraction: float):
    """`warmup_cosine` per phase of [[first step, steps], ...]; a step belongs to the last phase starting at or before it."""
    factors = [(start, warmup_cosine(steps, warmup_fraction)) for start, steps in phases]

    def factor(step: int) -> float:
        start, phase_factor = next((s, f) for s, f in reversed(factors) if s <= step)
        return phase_factor(step - start)

    return factor


def schedule_phases(card: RunCard | None, total_steps: int, learning_rate: float) -> list[list[int]]:
    """The learning-rate schedule as [[first step, steps], ...]: one warmup + cosine over the run, fixed when it
    starts. A resumed run keeps it: --max-steps below it stops early on the same curve; above it, one more warmup +
    cosine runs over the extra steps (the first had decayed to 0). Either is said out loud."""
    if card is None:
        return [[0, total_steps]]
    phases = [list(map(int, phase)) for phase in card.schedule] or [[0, int(card.total_steps or total_steps)]]
    planned = phases[-1][0] + phases[-1][1]
    card.refuse_finished(total_steps)
    if total_steps < planned:
        info(f"Stopping at step {total_steps} of the {planned} planned; the learning rate keeps the {planned}-step "
             "schedule.")
        return phases
    if total_steps > planned:
        info(f"Extending the run from {planned} to {total_steps} steps: the extra {total_steps - planned} steps "
             f"warm up to --learning-rate {learning_rate:g} again and decay to 0 by step {total_steps}.")
        return [*phases, [planned, total_steps - planned]]
    return phases
