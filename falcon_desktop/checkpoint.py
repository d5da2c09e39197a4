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
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.markup import escape

from falcon_desktop.atomic import write_directory, write_json
from falcon_desktop.console import warn
from falcon_desktop.distributed import Cluster
from falcon_desktop.errors import UserError

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


def save_checkpoint(directory: Path, adapter: dict, optimizer_state: dict, scheduler, state: TrainerState,
                    keep: int = 2) -> Path:
    """Write checkpoints/step-NNNNNN atomically and keep the newest `keep` of them.

    `adapter` and `optimizer_state` are the adapter's and the optimizer's state dicts, whole: from
    `Cluster.adapter_state` and `Cluster.optimizer_state`, which gather them from the ranks of a sharded run.
    """
    from safetensors.torch import save_file

    target = Path(directory) / f"{STEP_PREFIX}{state.step:06d}"

    def write(tmp: Path) -> None:
        weights = {k: v.detach().contiguous().cpu() for k, v in adapter.items()}
        save_file(weights, str(tmp / "adapter_model.safetensors"))
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng": rng_state()},
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


def load_checkpoint(path: Path, model, optimizer, scheduler, cluster: Cluster | None = None) -> TrainerState:
    """Restore adapter weights, optimizer, scheduler and RNG from a checkpoint directory (`cluster` applies them
    to a sharded model's shards).

    Every file is read and checked before anything is applied, so a damaged checkpoint changes nothing.
    """
    from safetensors.torch import load_file

    cluster = cluster or Cluster()

    path = Path(path)
    weights = load_file(str(path / "adapter_model.safetensors"))
    blob = torch.load(path / "training_state.pt", map_location="cpu", weights_only=True)
    state = TrainerState(**json.loads((path / "trainer_state.json").read_text(encoding="utf-8")))
    expected = set(cluster.adapter_keys(model))
    if set(weights) != expected:
        raise ValueError(f"its adapter holds {len(weights)} tensors, the model expects {len(expected)}")
    cluster.load_state(model, optimizer, weights, blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    restore_rng(blob["rng"])
    return state


def load_newest_checkpoint(directory: Path, model, optimizer, scheduler,
                           cluster: Cluster | None = None) -> TrainerState | None:
    """Load the newest checkpoint that reads back complete, falling back to older ones; None when none does."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path, model, optimizer, scheduler, cluster)
        except Exception as error:  # noqa: BLE001 - any damage (torn file, wrong content) means: try the older one
            warn(escape(f"Checkpoint {path.name} is damaged ({type(error).__name__}: {str(error)[:120]}); trying the one before."))
    return None


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<side>[AB])(?:\.[^.]+)?\.weight$")


def check_adapter_fits(model, adapter_dir: Path) -> None:
    """Read an adapter's config and weight shapes and compare them with `model`, before peft touches the model.

    peft injects LoRA layers into the base before it loads the weights, so a broken or foreign adapter would leave a
    half-modified model behind (and kill a REPL session); here each problem is one UserError instead.
    """
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    hint = "Load the adapter onto the base it was trained on (see `falcon-desktop runs`), or retrain it."
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        raise UserError(f"{adapter_dir / 'adapter_config.json'} is unreadable ({error}).", hint) from None
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return  # an older .bin adapter: peft reports its own problems
    try:
        with safe_open(str(weights), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as error:  # noqa: BLE001 - safetensors raises its own class for a torn header
        raise UserError(f"{weights} is damaged or truncated ({str(error)[:120]}).", hint) from None
    modules = {re.sub(r"^base_model\.model\.", "", name): module for name, module in model.named_modules()}
    for key, shape in shapes.items():
        match = _LORA_KEY.match(key)
        module = modules.get(match["module"]) if match else None
        module = getattr(module, "base_layer", module)
        features = getattr(module, "in_features" if match and match["side"] == "A" else "out_features", None)
        if match is None or features is None:
            continue
        expected = shape[1] if match["side"] == "A" else shape[0]
        if expected != features:
            raise UserError(f"The adapter in {adapter_dir} does not fit this base model: {match['module']} has "
                            f"{features} features, the adapter was trained for {expected}.", hint)
