"""The settings of one training run, apart from the plan: what `train`'s flags set and the run card records; and
the few of them that decide how data batches, which `data inspect` measures with.

No torch here (nor the data package), so `train --help` and `data inspect --help` show these defaults without
loading either.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from falcon_desktop.errors import UserError
from falcon_desktop.plan import PlanRequest

# Rows of max_seq_len tokens per forward pass when measuring: `data inspect` has no GPU plan to take it from.
DEFAULT_MICRO_BATCH_SIZE = 4


@dataclass(frozen=True)
class BatchSettings:
    """The trainer settings that decide lengths and batches; defaults are the planner's."""

    seed: int                        # of the data order, as the run's TrainConfig.seed
    max_seq_len: int = PlanRequest.max_seq_len
    effective_batch_size: int = PlanRequest.effective_batch_size
    micro_batch_size: int = DEFAULT_MICRO_BATCH_SIZE

    @property
    def token_budget(self) -> int:
        return self.micro_batch_size * self.max_seq_len


@dataclass(frozen=True)
class TrainConfig:
    model: str                       # hub id or local directory of the base model
    data: str                        # SQuAD file, local table, or `datasets` name
    output: Path                     # the run directory
    epochs: float = 1.0
    max_steps: int | None = None     # stop after this many optimizer steps (overrides epochs)
    learning_rate: float | None = None  # None: the plan's (plan.adapter_learning_rate, by model size)
    warmup_fraction: float = 0.03    # of the total steps, linear from 0; cosine decay to 0 after
    max_grad_norm: float = 1.0
    seed: int = 42
    save_every: int = 50             # optimizer steps between checkpoints (and at the end, always)
    eval_fraction: float = 0.1       # of the articles, held out (never trained on)
    eval_examples: int = 100         # held-out questions answered for EM/F1 before and after; 0 skips
    device: str = "auto"
    quantize: bool = True            # 4-bit NF4 base (QLoRA); False = 16-bit base (LoRA)
    strict_data: bool = False
    trust_remote_code: bool = False
    keep_checkpoints: int = 2
    compile: bool = False            # torch.compile each decoder layer (model.compile_layers); speed only
    cuda_graphs: bool = True         # record each step as CUDA graphs where it can (step_graphs.py); speed only

    def __post_init__(self) -> None:
        checks = (
            ("--epochs", self.epochs, math.isfinite(self.epochs) and self.epochs > 0, "a number above 0, e.g. 1"),
            ("--max-steps", self.max_steps, self.max_steps is None or self.max_steps >= 1, "a whole number of 1 or more"),
            ("--learning-rate", self.learning_rate,
             self.learning_rate is None or (math.isfinite(self.learning_rate) and self.learning_rate > 0),
             "a number above 0, e.g. 2e-4"),
            ("--save-every", self.save_every, self.save_every >= 1, "a whole number of 1 or more"),
            ("--eval-fraction", self.eval_fraction, 0 <= self.eval_fraction < 1, "a share from 0 to below 1, e.g. 0.1"),
            ("--eval-examples", self.eval_examples, self.eval_examples >= 0, "0 (skip) or more"),
            ("--seed", self.seed, self.seed >= 0, "a whole number of 0 or more"),
            ("warmup_fraction", self.warmup_fraction, 0 <= self.warmup_fraction < 1, "a share from 0 to below 1"),
            ("--max-grad-norm", self.max_grad_norm, math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0,
             "a number above 0"),
            ("keep_checkpoints", self.keep_checkpoints, self.keep_checkpoints >= 1, "1 or more"),
        )
        for flag, value, valid, expected in checks:
            if not valid:
                raise UserError(f"{flag} {value} is not a valid setting.", f"Give {expected}.")

    def to_json(self) -> dict:
        return {**asdict(self), "output": str(self.output)}

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        known = {name for name in cls.__dataclass_fields__}
        try:
            return cls(**{k: v for k, v in data.items() if k in known} | {"output": Path(data["output"])})
        except (TypeError, KeyError) as error:
            raise UserError(f"The run card's training settings are incomplete or of the wrong type ({error}).",
                            "Restore run.json from a backup, or start a new run with --output.") from None
