"""Checkpoints that are never half-written, and the state that makes a resumed run match an uninterrupted one.

A checkpoint is a directory written under a temporary name and renamed into place only once complete, so a crash,
Ctrl-C or a full disk mid-save leaves the previous checkpoint untouched. It holds the adapter weights, optimizer and
scheduler states, the RNG states (LoRA dropout draws from them), and the step: the data order is a pure function
of (seed, epoch), so the step alone is the data position. The newest two are kept, so a damaged newest one (a copy
cut short, a disk error) falls back to the one before. Nothing is unpickled: `training_state.pt` is read with
`weights_only=True`, which admits tensors, dicts, lists, tuples and numbers only.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from falcon_desktop.atomic import write_directory, write_json
from falcon_desktop.console import warn

STEP_PREFIX = "step-"


@dataclass
class TrainerState:
    step: int = 0                 # optimizer steps completed
    token_budget: int = 0         # tokens per micro-batch, lowered after a CUDA OOM
    tokens_seen: int = 0          # real (non-padding) tokens trained on
    elapsed_seconds: float = 0.0  # training time so far, across resumes
    oom_events: int = 0

    def to_json(self) -> dict:
        return dict(self.__dict__)


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, model, optimizer, scheduler, state: TrainerState, keep: int = 2) -> Path:
    """Write checkpoints/step-NNNNNN atomically and keep the newest `keep` of them."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    target = Path(directory) / f"{STEP_PREFIX}{state.step:06d}"

    def write(tmp: Path) -> None:
        weights = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
        save_file(weights, str(tmp / "adapter_model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
                   tmp / "training_state.pt")
        write_json(tmp / "trainer_state.json", state.to_json())

    write_directory(target, write)
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories start with a dot and are skipped)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX))


def load_checkpoint(path: Path, model, optimizer, scheduler) -> TrainerState:
    """Restore adapter weights, optimizer, scheduler and RNG from a checkpoint directory.

    Every file is read and checked before anything is applied, so a damaged checkpoint changes nothing.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(path)
    weights = load_file(str(path / "adapter_model.safetensors"))
    blob = torch.load(path / "training_state.pt", map_location="cpu", weights_only=True)
    state = TrainerState(**json.loads((path / "trainer_state.json").read_text(encoding="utf-8")))
    expected = set(get_trainable_names(model))
    if set(weights) != expected:
        raise ValueError(f"its adapter holds {len(weights)} tensors, the model expects {len(expected)}")
    set_peft_model_state_dict(model, weights)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    restore_rng(blob["rng"])
    return state


def get_trainable_names(model) -> list[str]:
    from peft import get_peft_model_state_dict

    return list(get_peft_model_state_dict(model))


def load_newest_checkpoint(directory: Path, model, optimizer, scheduler) -> TrainerState | None:
    """Load the newest checkpoint that reads back complete, falling back to older ones; None when none does."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path, model, optimizer, scheduler)
        except Exception as error:  # noqa: BLE001 - any damage (torn file, wrong content) means: try the older one
            warn(f"Checkpoint {path.name} is damaged ({type(error).__name__}: {str(error)[:120]}); trying the one before.")
    return None
