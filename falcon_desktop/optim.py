"""The optimizer, one optimizer step (forward and backward over its micro-batches, clip, update), and the
learning-rate schedule: warmup + cosine, fixed when a run starts and kept on resume."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from falcon_desktop.attention import causal_fast_path
from falcon_desktop.console import info
from falcon_desktop.distributed import Cluster
from falcon_desktop.loss import answer_targets, count_label_tokens
from falcon_desktop.runs import RunCard
from falcon_desktop.step_graphs import MicroBatchBackward, StepGraphs


def make_optimizer(model: torch.nn.Module, name: str, learning_rate: float, device: torch.device):
    params = [p for p in model.parameters() if p.requires_grad]
    if name in ("paged_adamw_8bit", "adamw_8bit") and device.type == "cuda":
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.AdamW8bit
        return cls(params, lr=learning_rate, weight_decay=0.0)
    fused = name == "adamw_fused" and device.type == "cuda"
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0, fused=fused or None)


def micro_batch_backward(loss_of: Callable, compute_dtype: torch.dtype, scaler,
                         device: torch.device) -> MicroBatchBackward:
    """Forward and backward of one micro-batch on the device: its summed answer loss, gradients scaled by `scale`
    (1 / the step's answer tokens) added to `.grad`. What step_graphs.py records; eager steps call it directly.

    Autocast's weight cache is off: a recording cannot keep it between replays, and each adapter weight is cast once
    per forward anyway.
    """
    autocast = torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32,
                              cache_enabled=False)

    def backward(input_ids: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor, scale) -> torch.Tensor:
        with autocast:
            loss_sum = loss_of(input_ids, positions, targets)
        scaler.scale(loss_sum * scale).backward()
        return loss_sum.detach()

    return backward


class StepValues:
    """An optimizer step's loss per answer token and gradient norm, as the GPU computes them.

    Reading them waits for the GPU, so the trainer reads a step's values once it has queued the next step: the host
    prepares and launches step N+1 while the GPU still runs step N, instead of the GPU idling through every step's
    host work (a recorded SmolLM2 step: ~40 ms of GPU work, ~30 ms of host work, H200).
    """

    def __init__(self, total: torch.Tensor, grad_norm: torch.Tensor | float, label_tokens: int) -> None:
        values = torch.stack([total.float(), torch.as_tensor(grad_norm, device=total.device).float()])
        self._ready = None
        if values.is_cuda:  # a copy into pinned memory is asynchronous; the event says when it has landed
            self._host = torch.empty(2, pin_memory=True)
            self._host.copy_(values, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host = values
        self.label_tokens = label_tokens

    def read(self) -> tuple[float, float]:
        """(loss per answer token, gradient norm); waits for the step to finish on the GPU."""
        if self._ready is not None:
            self._ready.synchronize()
        total, grad_norm = self._host.tolist()
        return total / self.label_tokens, grad_norm


def optimizer_step(model, batches: list[dict], optimizer, scheduler, scaler, compute_dtype: torch.dtype,
                   max_grad_norm: float, cluster: Cluster | None = None,
                   graphs: StepGraphs | None = None) -> StepValues:
    """Forward/backward every micro-batch, then one optimizer step; returns its loss and gradient norm, unread.

    On several ranks `batches` are this rank's share; the loss is normalised over the whole step's answer tokens.
    With `graphs` (built over `micro_batch_backward` of the same model) micro-batches replay recorded CUDA graphs.

    The update is applied even after a non-finite loss: nothing waits for the loss here. The trainer reads it
    before any checkpoint and stops the run at the first non-finite one, so no weights it updated are ever saved.
    """
    model.train()
    device = next(p for p in model.parameters() if p.requires_grad).device
    cluster = cluster or Cluster()
    label_tokens = int(cluster.sum(sum(count_label_tokens(batch["labels"]) for batch in batches))[0])
    backward = graphs.backward if graphs is not None else micro_batch_backward(
        cluster.loss_function(model), compute_dtype, scaler, device)
    if graphs is not None:
        graphs.begin_step(label_tokens)
    total = torch.zeros((), device=device)
    with causal_fast_path(model):  # backward too: checkpointed layers run their forward again there
        for number, batch in enumerate(batches, 1):
            with cluster.accumulating(last=number == len(batches)):
                loss_sum = graphs.run(batch["input_ids"], batch["labels"]) if graphs is not None else None
                if loss_sum is None:
                    inputs = (batch["input_ids"], *answer_targets(batch["labels"]))
                    loss_sum = backward(*(_to_device(t, device) for t in inputs), 1.0 / label_tokens)
            total += loss_sum
    if cluster.distributed:  # the loss of the whole step, summed over ranks (waits for the GPU)
        total = torch.tensor(cluster.sum(float(total))[0])
    scaler.unscale_(optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    grad_norm = cluster.clip_gradients(trainable, max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return StepValues(total, grad_norm, label_tokens)


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Without waiting for the GPU: a copy from pageable memory would wait for the work queued before it."""
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor.to(device)


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
