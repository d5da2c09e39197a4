"""The training step's forward and backward recorded as CUDA graphs and replayed: one launch instead of thousands.

An eager step of a small model is bound by the host: Python, autograd and one launch per small kernel, ~7,500 of
them for SmolLM2-135M (LoRA's dropout, matmuls, scale and add per module, the 4-bit dequantize per layer), while
the GPU is busy 7% of the step (docs/benchmarks.md, "The fixed cost of a step"). A CUDA graph records those
launches once and replays them in one call. It needs no compiler, so unlike `train --compile` (Triton) it runs on
Windows as installed.

A graph replays fixed tensors of fixed shapes, so each micro-batch shape (rows, length, answer tokens) gets its
own graph, recorded the first time the run meets it: lengths round up to `PAD_MULTIPLE` and answer tokens to a
power of two (ignored targets fill the rest), so a run meets a few dozen shapes. Before each replay the
micro-batch is copied into the graph's input tensors. The LoRA gradients accumulate in place into `.grad` tensors
recorded once for the whole run; `begin_step` puts them back and zeroes them, whatever the optimizer did with
`.grad` in between. Dropout draws new masks at every replay (PyTorch advances its generator per replay). The graphs
share one memory pool: one replays at a time, and its output (the summed loss) is read before the next. A shape
with more tokens than every recorded one empties the pool first (`_outgrows`), so the pool stays the size of the
largest shape's work instead of growing with the order shapes come in.

Checkpointed layers draw their dropout masks from random streams of their own, registered with every recording,
so that their recomputation inside backward draws the forward's masks (recorded_checkpoint.py).

Where it runs (`graphs_unavailable`): one CUDA process, no `--compile` (which records its own graphs). If a
model's forward cannot be recorded (it waits on the GPU, say), the recordings stop with a warning and the run goes
on eagerly: the same training, slower.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from falcon_desktop.console import warn
from falcon_desktop.cuda_graphs import clear_failed_recording
from falcon_desktop.errors import first_line
from falcon_desktop.loss import answer_targets, count_label_tokens
from falcon_desktop.recorded_checkpoint import CheckpointStreams, can_swap_generator_state

# Micro-batch lengths round up to this multiple for recorded steps, as for `--compile`'s CUDA graphs: each new length
# costs a recording (about one eager step of host time), and at most 8 lengths fit in 512 tokens.
PAD_MULTIPLE = 64
# Answer tokens of a recorded micro-batch round up to a power of two, at least this many.
MIN_ANSWER_SLOTS = 64
# New shapes beyond this many run eagerly: every graph keeps its launches in host memory.
MAX_GRAPHS = 64

# forward + backward of one micro-batch: (input_ids, positions, targets, loss scale) -> its summed loss, detached
MicroBatchBackward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float | torch.Tensor], torch.Tensor]


def graphs_unavailable(device_type: str, checkpoint_layers: int, compile_style: str, distributed: bool) -> str | None:
    """Why a run cannot record its steps as CUDA graphs, or None when it can."""
    if device_type != "cuda":
        return "CUDA graphs need a CUDA GPU"
    if distributed:
        return "not with several GPUs yet"
    if compile_style != "eager":
        return "--compile records its own CUDA graphs"
    if checkpoint_layers and not can_swap_generator_state():
        return (f"{checkpoint_layers} layers are checkpointed, and PyTorch {torch.__version__} cannot give their "
                "recomputation its dropout masks inside a recording (a newer PyTorch can)")
    return None


def answer_slots(labelled: int) -> int:
    """The answer positions a recorded micro-batch with `labelled` answer tokens computes."""
    return max(MIN_ANSWER_SLOTS, 1 << max(labelled - 1, 0).bit_length())


@dataclass
class _Recording:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # input_ids, positions, targets: what the graph reads
    loss_sum: torch.Tensor                                    # what it writes


class StepGraphs:
    """Runs `backward` (one micro-batch's forward and backward) as a CUDA graph per micro-batch shape."""

    def __init__(self, backward: MicroBatchBackward, parameters: list[torch.Tensor], limit: int = MAX_GRAPHS,
                 streams: CheckpointStreams | None = None) -> None:
        self.backward = backward
        self.streams = streams  # the checkpointed layers' random streams, if any
        self.parameters = parameters
        self.device = parameters[0].device
        self.gradients = [torch.zeros_like(p) for p in parameters]  # where every recording accumulates
        self.scale = torch.ones((), device=self.device)            # 1 / the step's answer tokens
        self.recordings: dict[tuple[int, int, int], _Recording] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.limit = limit
        self.failure: str | None = None  # why recording stopped; the run goes on eagerly
        self.warmed_up = False

    def begin_step(self, label_tokens: int) -> None:
        """Before a step's first micro-batch: the recorded gradients back in `.grad`, zeroed, and the loss scale."""
        for parameter, gradient in zip(self.parameters, self.gradients):
            if parameter.grad is not gradient:
                parameter.grad = gradient
        torch._foreach_zero_(self.gradients)
        self.scale.fill_(1.0 / label_tokens)

    def run(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """The summed loss of one micro-batch (host tensors), its gradients added to `.grad`; None where the caller
        must run it eagerly (recording stopped, or too many shapes). The result is overwritten by the next call."""
        if self.failure is not None:
            return None
        positions, targets = answer_targets(labels, answer_slots(count_label_tokens(labels)))
        key = (*input_ids.shape, len(positions))
        recording = self.recordings.get(key)
        if recording is not None:
            for static, value in zip(recording.inputs, (input_ids, positions, targets)):
                static.copy_(value.pin_memory(), non_blocking=True)  # from pageable memory the host would wait
        elif len(self.recordings) >= self.limit:
            return None
        else:  # a new shape: its graph reads tensors made from this micro-batch
            if self._outgrows(key):
                self._empty_pool()
            inputs = tuple(t.to(self.device) for t in (input_ids, positions, targets))
            if not self.warmed_up:  # the first: run it eagerly, off the main stream, before recording (see _warm_up)
                self.warmed_up = True
                loss_sum = self._warm_up(inputs)
                self._record(key, inputs)
                torch.cuda.empty_cache()  # the warm-up's activations: recorded steps use the graphs' pool instead
                return loss_sum
            recording = self._record(key, inputs)
            if recording is None:
                return None
        recording.graph.replay()
        return recording.loss_sum

    def _outgrows(self, key: tuple[int, int, int]) -> bool:
        """Whether a new shape computes more tokens than every recorded one.

        Each recording keeps the addresses it used, and the graphs share one pool, which a smaller shape recorded
        after a bigger one fits into, but a bigger one recorded later grows. Recorded in the order its shapes came,
        the ~1.1B Llama's 24 GiB plan (21.6 GiB predicted) reserved 23.3 GiB by step 7 and ran out of memory at step
        23; with the pool emptied at each new largest shape, 100 steps peaked at 22.2 GiB (H200, docs/benchmarks.md,
        "Recorded steps with checkpointed layers"). So a new largest shape empties the pool and is recorded first;
        the others are recorded again, into its blocks, when they come back.
        """
        tokens = key[0] * key[1]
        return bool(self.recordings) and tokens > max(rows * length for rows, length, _ in self.recordings)

    def _empty_pool(self) -> None:
        torch.cuda.synchronize(self.device)  # the last replay may still be running in the pool
        self.recordings.clear()
        self.pool = torch.cuda.graph_pool_handle()
        torch.cuda.empty_cache()

    def _warm_up(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """CUDA's rule for recording: run the work once on a side stream first, so libraries create their handles and
        workspaces outside the recording. This run is the micro-batch's real forward and backward."""
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            loss_sum = self.backward(*inputs, self.scale)
        main.wait_stream(side)
        return loss_sum

    def _record(self, key: tuple[int, int, int], inputs: tuple[torch.Tensor, ...]) -> _Recording | None:
        """Record `backward` over `inputs` (nothing runs); None, with the recordings stopped, where it cannot be."""
        graph = torch.cuda.CUDAGraph()
        if self.streams is not None:
            self.streams.register(graph)
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                loss_sum = self.backward(*inputs, self.scale)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as error:  # whatever the model's code does that a recording cannot hold
            self.failure = first_line(error)[:300]
            self.close()
            clear_failed_recording(self.device)
            warn(f"Cannot record the training step as a CUDA graph ({self.failure}); training eagerly: the same "
                 "training, slower.")
            return None
        self.recordings[key] = recording = _Recording(graph, inputs, loss_sum)
        return recording

    def reseed(self, seed: int, step: int) -> None:
        """The checkpointed layers' dropout masks for step `step` of a run seeded `seed`."""
        if self.streams is not None:
            self.streams.reseed(seed, step)

    def close(self) -> None:
        """Stop recording: the graphs go, and checkpointed layers keep their masks as in eager steps."""
        self.recordings.clear()
        if self.streams is not None:
            self.streams.release()
            self.streams = None
