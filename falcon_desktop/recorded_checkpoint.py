"""Checkpointed layers in recorded steps: the recomputation draws the forward's dropout masks.

A checkpointed layer runs its forward again inside backward, and its LoRA dropout must draw the same masks both
times. torch.utils.checkpoint ensures it by saving the CUDA generator's state before the forward and restoring it
before the recomputation: host reads and writes that a CUDA graph recording cannot hold. Here each checkpointed layer
draws instead from two random streams of its own, seeded alike and registered with every recording: its forward draws
from one, its recomputation from the other. Every replay (and every eager run) advances both by the same amount, so
the recomputation draws exactly the forward's masks, and each replay new ones. PyTorch's compiled activation
checkpointing does the same with the same generator API ("graph-safe" states, torch._functorch). The streams are
reseeded at every step from (run seed, step, layer): a resumed run draws what an unbroken one would.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def can_swap_generator_state() -> bool:
    """Whether this PyTorch can swap the CUDA generator's state inside a recording (its graph-safe generator API)."""
    return hasattr(torch.Generator, "graphsafe_set_state")


class CheckpointStreams:
    """Two random streams per checkpointed layer of `layers`, which the layers' checkpoints draw from."""

    def __init__(self, layers: list[nn.Module], device: torch.device) -> None:
        self.generator = torch.cuda.default_generators[torch.cuda.current_device() if device.index is None
                                                       else device.index]
        self.layers = [layer for layer in layers if getattr(layer, "gradient_checkpointing", False)]
        self.plain = [layer._gradient_checkpointing_func for layer in self.layers]
        self.pairs = [(self.generator.clone_state(), self.generator.clone_state()) for _ in self.layers]
        for layer, (forward, recompute) in zip(self.layers, self.pairs):
            contexts = partial(_contexts, self.generator, forward, recompute)
            layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False, preserve_rng_state=False,
                                                         context_fn=contexts)

    def register(self, graph: torch.cuda.CUDAGraph) -> None:
        """Before recording `graph`: its replays advance every stream, as they advance PyTorch's own."""
        for pair in self.pairs:
            for state in pair:
                graph.register_generator_state(state)

    def reseed(self, seed: int, step: int) -> None:
        """New masks for step `step`, the same wherever the run resumed."""
        for index, pair in enumerate(self.pairs):
            for state in pair:
                state.manual_seed(((seed * 1_000_003 + step) * 4096 + index) % (1 << 63))

    def release(self) -> None:
        """Back to torch.utils.checkpoint's own saving and restoring of the generator (eager steps)."""
        for layer, plain in zip(self.layers, self.plain):
            layer._gradient_checkpointing_func = plain
        self.pairs = []


def _contexts(generator: torch.Generator, forward: torch.Generator, recompute: torch.Generator):
    return _drawing_from(generator, forward), _drawing_from(generator, recompute)


@contextmanager
def _drawing_from(generator: torch.Generator, state: torch.Generator) -> Iterator[None]:
    previous = generator.graphsafe_get_state()
    generator.graphsafe_set_state(state)
    try:
        yield
    finally:
        generator.graphsafe_set_state(previous)
