"""One training run on several processes: the ranks, what they share, and the launch that starts them.

`train --gpus N` relaunches the same command through accelerate's launcher (torch.distributed.run underneath), one
process per GPU; each runs `run_training` unchanged and learns here which rank it is. The data order is a pure
function of (seed, epoch), so every rank computes the same steps and takes its share of each step's examples; the
loss stays normalised over the answer tokens of the whole global step, so N ranks learn what one process learns
from the same global batch, and a run resumes exactly on any number of ranks.

The adapters are replicated with PyTorch DDP (`Cluster.loss_function`). Two details make DDP fit our loop:
- The loss is already divided by the answer tokens of the *global* step, so the ranks' gradients must be summed,
  not averaged: a communication hook sums them.
- DDP reduces once per rank per step, on the last backward; a rank whose share of a step is empty (the short last
  step of an epoch) still runs one micro-batch, with every label masked: it adds zero to the loss and gradients.
accelerate's `Accelerator` is not used: its gradient accumulation counts micro-batches and averages their losses,
while ours counts examples and sums over answer tokens, and our micro-batches differ in number between ranks.
LoRA dropout draws from a generator reseeded per (seed, step, rank), so resuming needs no per-rank RNG state.

A plan that shards (`sharding == "fsdp"`) wraps the same loss module in FSDP instead (`fsdp.py`), before the optimizer
is built over the shards. Every forward then gathers weights, a collective, so under FSDP every rank runs as many
micro-batches as the rank with the most (`even_out`), and evaluation, which rank 0 runs alone, is skipped. Saving
gathers the adapter and optimizer to rank 0, in the single-process format, so checkpoints resume on any N.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from falcon_desktop.console import info
from falcon_desktop.loss import answer_loss_sum
from falcon_desktop.model import backbone_and_head

if TYPE_CHECKING:
    from falcon_desktop.fsdp import ShardedModel

# Rank 0 evaluates before and after training while the others wait at their next collective.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


@dataclass
class Cluster:
    """This process's place in the run; `Cluster()` is the single-process run, where every method is the identity."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    _loss: Callable | None = field(default=None, repr=False)
    _sharded: ShardedModel | None = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        """Only the main rank writes (checkpoints, metrics, run card, adapter, lock) and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Cluster:
        """The ranks torch.distributed.run (behind `accelerate launch`) sets; a plain process is a cluster of one."""
        environ = os.environ if environ is None else environ
        world_size = int(environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        return cls(int(environ["RANK"]), world_size, int(environ.get("LOCAL_RANK", environ["RANK"])))

    # ------------------------------------------------------------------------------------------------ set-up
    def device_for(self, device: str) -> str:
        """Each rank's own GPU: `auto` or `cuda` becomes cuda:LOCAL_RANK (the launcher sets no visible-device mask)."""
        if not self.distributed or device not in ("auto", "cuda"):
            return device
        return f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"

    def start(self, device: str) -> None:
        """Join the process group: NCCL between GPUs, gloo between CPU processes."""
        if not self.distributed:
            return
        if not self.is_main and os.environ.get("FALCON_DESKTOP_DEBUG") != "1":
            _mute_output()  # one progress line and one set of messages: rank 0's
        on_gpu = device.startswith("cuda")
        if on_gpu:
            torch.cuda.set_device(torch.device(device))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if on_gpu else "gloo", timeout=COLLECTIVE_TIMEOUT,
                                    device_id=torch.device(device) if on_gpu else None)

    def prepare(self, model: torch.nn.Module, sharding: str) -> None:
        """Under FSDP on several ranks, shard the model now: the optimizer must be built over the shards."""
        if not self.distributed or sharding != "fsdp":
            return
        from falcon_desktop.fsdp import ShardedModel

        device = next(p for p in model.parameters() if p.requires_grad).device
        self._sharded = ShardedModel.wrap(AnswerLoss(model), model, device)
        self._loss = self._sharded.root
        info(f"FSDP: the model is sharded over {self.world_size} processes; the held-out evaluation is skipped "
             "during training (run `falcon-desktop eval` on the adapter afterwards).")

    @property
    def evaluates(self) -> bool:
        """Rank 0 generates alone, which a sharded model cannot: each rank holds only part of it."""
        return self.is_main and self._sharded is None

    def stop(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    # --------------------------------------------------------------------------------------------- each step
    def shard(self, indices: Sequence[int]) -> list[int]:
        """This rank's examples of a global step: every world_size-th, so long and short ones spread evenly (the
        step's indices are sorted by length)."""
        return list(indices[self.rank :: self.world_size])

    def seed_step(self, seed: int, step: int) -> None:
        """Reseed LoRA dropout per (seed, step, rank): what a rank draws does not depend on where the run resumed."""
        if self.distributed:
                torch.manual_seed((seed * 1_000_003 + step) * 4096 + self.rank)

    def sum(self, *values: float) -> list[float]:
        """The sums over ranks of a few numbers (one all-reduce); the numbers themselves on a single process."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def even_out(self, batches: list[dict], filler: Callable[[], dict]) -> list[dict]:
        """This rank's micro-batches, topped up with contributing-nothing ones (`filler()`): at least one, for DDP's
        reduction; under FSDP as many as on the busiest rank, for FSDP's weight gathers in each forward."""
        wanted = 1 if self._sharded is None else self.maximum(len(batches))
        return batches + [filler() for _ in range(wanted - len(batches))]

    def maximum(self, value: int) -> int:
        if not self.distributed:
            return value
        tensor = torch.tensor([value], device=self._collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any: a Ctrl-C seen by one rank stops all at the same step."""
        return self.sum(float(flag))[0] > 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def loss_function(self, model: torch.nn.Module) -> Callable:
        """`loss(input_ids, positions, targets)` -> summed answer cross-entropy (loss.answer_loss_sum); under DDP on
        several ranks, built once."""
        if self._loss is None:
            module = AnswerLoss(model)
            self._loss = module if not self.distributed else _data_parallel(module, model)
        return self._loss

    @contextlib.contextmanager
    def accumulating(self, last: bool) -> Iterator[None]:
        """Gradients stay local until the step's last micro-batch, whose backward reduces them across ranks."""
        if self.distributed and not last:
            with self._loss.no_sync():
                yield
        else:
            yield

    def clip_gradients(self, parameters: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        if self._sharded is not None:
            return self._sharded.clip_gradients(max_norm)
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    # ------------------------------------------------------------------------- checkpoints, one format for all
    def adapter_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """peft's state dict of the adapter; under FSDP a collective that gathers it whole to rank 0."""
        if self._sharded is not None:
            return self._sharded.adapter_state()
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)

    def save_adapter(self, model: torch.nn.Module, weights: dict[str, torch.Tensor], directory: Path) -> None:
        """peft's adapter folder; under FSDP from `weights` gathered by `adapter_state` (rank 0)."""
        if self._sharded is not None:
            self._sharded.save_adapter(model, weights, directory)
        else:
            model.save_pretrained(str(directory), safe_serialization=True)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """`optimizer.state_dict()`; under FSDP a collective that gathers it to rank 0 in that same format."""
        return optimizer.state_dict() if self._sharded is None else self._sharded.optimizer_state(optimizer)

    def adapter_keys(self, model: torch.nn.Module) -> list[str]:
        """The adapter tensors a checkpoint must hold (peft's keys)."""
        if self._sharded is not None:
            return list(self._sharded.adapter_names)
        from peft import get_peft_model_state_dict

        return list(get_peft_model_state_dict(model))

    def load_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor],
                   optimizer_state: dict) -> None:
        """Apply a checkpoint read whole (every rank reads it); under FSDP each rank keeps its shard."""
        if self._sharded is not None:
            self._sharded.load(weights, optimizer, optimizer_state)
            return
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, weights)
        optimizer.load_state_dict(optimizer_state)

    def _collective_device(self) -> str:
        return "cuda" if dist.get_backend() == "nccl" else "cpu"


class AnswerLoss(torch.nn.Module):
    """The summed answer loss (`loss.answer_loss_sum`) as one module's forward: what DDP wraps, as it hooks the
    forward and backward of the module it is given."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        backbone, head = backbone_and_head(self.model)
        return answer_loss_sum(backbone, head, input_ids, positions, targets)


def masked(batch: dict[str, Any]) -> dict[str, Any]:
    """A micro-batch that contributes nothing: every label ignored (for a rank whose share of a step is empty)."""
    from falcon_desktop.data.batching import IGNORE_INDEX

    return {**batch, "labels": batch["labels"].fill_(IGNORE_INDEX), "real_tokens": 0}


def _sum_gradients(state, bucket):  # unannotated: DDP checks a real (not postponed) return annotation
    """DDP communication hook: sum (DDP's default averages) - the loss is normalised over the global step already."""
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda future: future.value()[0])


def _data_parallel(module, model):
    """DDP over the trainable (LoRA) parameters only: the frozen base is identical on every rank and never reduced."""
    from torch.nn.parallel import DistributedDataParallel

    module._ddp_params_and_buffers_to_ignore = [f"model.{name}" for name, parameter in model.named_parameters()
                                                if not parameter.requires_grad]
    device = next(p for p in model.parameters() if p.requires_grad).device
    wrapped = DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                      broadcast_buffers=False)
    wrapped.register_comm_hook(None, _sum_gradients)
    return wrapped


def _mute_output() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
            os.dup2(devnull, stream.fileno())
