"""Checkpoints that are never half-written, and the state that makes a resumed run match an uninterrupted one.

A checkpoint is a directory written under a temporary name and renamed into place only once complete, so a crash,
Ctrl-C or a full disk mid-save leaves the previous checkpoint untouched. It holds the adapter weights, optimizer and
scheduler states, the RNG states (LoRA dropout draws from them), and the step: the data order is a pure function
of (seed, epoch), so the step alone is the data position.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

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


def write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp_dir)` then rename tmp_dir to `target`; on any failure remove tmp_dir and re-raise."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, payload: dict) -> None:
    """Write JSON via a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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

    write_atomically(target, write)
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
    """Restore adapter weights, optimizer, scheduler and RNG from a checkpoint directory."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(path)
    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    # weights_only=False: the file holds Python RNG state (a tuple) and optimizer dicts, written by us.
    blob = torch.load(path / "training_state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    restore_rng(blob["rng"])
    return TrainerState(**json.loads((path / "trainer_state.json").read_text(encoding="utf-8")))
