"""Training runs on disk: list them with their metrics, and turn a run name or path into its adapter directory.

A run directory (written by `falcon-desktop train`) holds `run.json` (the run card) and `adapter/` (peft files and
the tokenizer). `ask`, `eval` and `merge` accept a run name (a directory under `paths.runs_dir()`), a run directory,
or an adapter directory itself, and share `resolve_adapter` to find the adapter. No torch here: `runs` is instant.
"""

from __future__ import annotations

import json
import shutil
import time
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

from rich.markup import escape

from falcon_desktop import __version__
from falcon_desktop.console import warn
from falcon_desktop.errors import UserError
from falcon_desktop.metrics import MetricsLog
from falcon_desktop.paths import runs_dir
from falcon_desktop.prompts import TEMPLATE_VERSION
from falcon_desktop.run_lock import is_training

RUN_CARD = "run.json"
STOPPED = "stopped (crashed)"  # a card saying "running" whose writer is gone; `train --resume` continues it
ADAPTER_DIR = "adapter"
ADAPTER_CONFIG = "adapter_config.json"



@dataclass(frozen=True)
class RunDir:
    """The files of one run folder, as `train` lays them out."""

    root: Path

    @property
    def adapter(self) -> Path:
        return self.root / ADAPTER_DIR

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def card(self) -> Path:
        return self.root / RUN_CARD

    @property
    def metrics(self) -> MetricsLog:
        return MetricsLog(self.root / "metrics.jsonl")

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    def own_files(self) -> list[Path]:
        """What `train` writes here, and so what --overwrite may remove (nothing else in the folder is touched)."""
        return [self.card, self.metrics.path, self.loss_plot, self.checkpoints, self.adapter]

    def claim(self, overwrite: bool) -> None:
        """A fresh run may only replace an earlier run's files when told to; it never touches anything else."""
        existing = [path for path in self.own_files() if path.exists()]
        if not existing:
            return
        if not overwrite:
            if self.card.exists():
                raise UserError(f"{self.root} already holds a run (its {RUN_CARD}, checkpoints and adapter).",
                                f"Continue it with `falcon-desktop train --resume {self.root}`, choose another "
                                "--output, or pass --overwrite to delete it and start over.")
            names = ", ".join(path.name for path in existing)
            raise UserError(f"{self.root} already holds {names}, which a new run would replace.",
                            "Choose an empty or new --output folder, or pass --overwrite to replace them.")
        warn(f"--overwrite: replacing {', '.join(path.name for path in existing)} in {escape(str(self.root))}.")
        for path in existing:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


@dataclass
class RunCard:
    """`run.json`: the contract between train, resume, ask, eval, merge, runs and demo.

    Read and written only through `from_json`/`to_json`, which check every field's type: a card with a missing
    required key or a wrong type is a UserError naming the key, an unknown key is reported and kept out.
    """

    model: str                                  # hub id or local directory of the base model
    status: str                                 # running, finished, interrupted, diverged, failed
    version: str = __version__                  # falcon-desktop that wrote it
    template_version: int | None = TEMPLATE_VERSION  # prompts.TEMPLATE_VERSION trained on; None: before the stamp
    train: dict = field(default_factory=dict)   # train.TrainConfig.to_json()
    plan: dict = field(default_factory=dict)    # plan.Plan.to_json()
    data: dict = field(default_factory=dict)    # source, summary, counts, fingerprint
    quantization: dict | None = None
    schedule: list = field(default_factory=list)  # [[first step, steps], ...]: the learning-rate cosine phases
    total_steps: int | None = None
    trainable_params: int | None = None
    last_checkpoint_step: int | None = None     # set only after a checkpoint was saved completely
    steps: int | None = None
    finished_at: str | None = None
    metrics: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)
    events: list = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object, source: str = RUN_CARD) -> RunCard:
        if not isinstance(data, dict):
            raise UserError(f"{source} is not a JSON object.", _BROKEN_CARD_HINT)
        known = {f.name: f for f in fields(cls)}
        hints = typing.get_type_hints(cls)
        missing = [f.name for f in known.values() if f.default is MISSING and f.default_factory is MISSING and f.name not in data]
        if missing:
            raise UserError(f"{source} lacks {', '.join(missing)}.", _BROKEN_CARD_HINT)
        for name, value in data.items():
            if name in known and not _has_type(value, hints[name]):
                raise UserError(f"{source}: {name!r} should be {_type_name(hints[name])}, not {value!r:.60}.",
                                _BROKEN_CARD_HINT)
        unknown = sorted(set(data) - set(known))
        if unknown:
            from falcon_desktop.console import warn

            warn(f"{source}: ignoring unknown key(s) {', '.join(unknown)} (written by another version?).")
        values = {name: value for name, value in data.items() if name in known}
        if "template_version" not in data:
            values["template_version"] = None  # written before cards were stamped
        return cls(**values)

    @classmethod
    def read(cls, run_dir: Path) -> RunCard:
        """The card of `run_dir`; a UserError when there is none or it is broken."""
        path = Path(run_dir) / RUN_CARD
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{run_dir} is not a run directory (no {RUN_CARD}).",
                            "Pass the --output of an earlier `falcon-desktop train` run.") from None
        except (OSError, ValueError) as error:
            raise UserError(f"{path} is unreadable ({error}).", _BROKEN_CARD_HINT) from None
        return cls.from_json(data, str(path))

    def refuse_finished(self, steps_asked: int | None) -> None:
        """A finished run trains further only to more steps than it has: checked before the model loads and again
        where the schedule is built, with one message."""
        if self.status == "finished" and (steps_asked is None or steps_asked <= (self.steps or 0)):
            raise UserError(f"This run already finished: it trained {self.steps} steps.",
                            f"Pass --max-steps above {self.steps} to train it further.")

    def resume_conflicts(self, given: dict[str, object]) -> list[str]:
        """The settings in `given` ({train flag's dest: value}) that differ from those this run started with."""
        conflicts = []
        for name, value in given.items():
            section, key = _FIXED_ON_RESUME.get(name, (None, None))
            started = self.model if section == "model" else getattr(self, section).get(key) if section else None
            if section is None:
                conflicts.append(f"--{name.replace('_', '-')} cannot change on resume")
            elif started != value:
                conflicts.append(f"--{name.replace('_', '-')} {_shown(value)} (this run: {_shown(started)})")
        return conflicts

    def write(self, run_dir: Path) -> None:
        from falcon_desktop.atomic import write_json

        write_json(Path(run_dir) / RUN_CARD, self.to_json())


# A `train` flag (argparse dest) -> where the card keeps the value the run started with: all fixed on resume.
_FIXED_ON_RESUME: dict[str, tuple[str, str]] = {
    "model": ("model", ""),
    "data": ("train", "data"), "learning_rate": ("train", "learning_rate"), "seed": ("train", "seed"),
    "save_every": ("train", "save_every"), "eval_fraction": ("train", "eval_fraction"),
    "eval_examples": ("train", "eval_examples"), "epochs": ("train", "epochs"), "quantize": ("train", "quantize"),
    "strict": ("train", "strict_data"), "trust_remote_code": ("train", "trust_remote_code"),
    "seq_len": ("plan", "max_seq_len"), "batch_size": ("plan", "effective_batch_size"), "method": ("plan", "method"),
    "lora_r": ("plan", "lora_r"), "lora_alpha": ("plan", "lora_alpha"), "lora_dropout": ("plan", "lora_dropout"),
    "lora_targets": ("plan", "lora_targets"),
}


def _shown(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


_BROKEN_CARD_HINT = ("The run card was edited or damaged; restore it from a backup, or fix the named key "
                     "(`falcon-desktop train` writes it).")


def _has_type(value: object, hint: object) -> bool:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option in (str, dict, list, bool) and isinstance(value, option):
            return True
    return False


def _type_name(hint: object) -> str:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return " or ".join("null" if option is type(None) else option.__name__ for option in options)


@dataclass(frozen=True)
class RunSummary:
    name: str
    path: Path
    model: str | None
    date: str | None           # when training finished, else when the card was last written
    steps: int | None
    final_loss: float | None
    exact: float | None        # held-out exact match after fine-tuning (SQuAD v2 %)
    f1: float | None
    status: str                # the card's status ("finished", "interrupted", "running", ...) or "no run card"
    has_adapter: bool

    def to_json(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def read_json_file(path: Path) -> dict | None:
    """A JSON object from `path`, or None when it is missing or unreadable (a run being written, a broken card)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_dir_of(adapter_dir: Path) -> Path | None:
    """The run directory an adapter belongs to (the one holding run.json), if any."""
    adapter_dir = Path(adapter_dir)
    for candidate in (adapter_dir, adapter_dir.parent):
        if (candidate / RUN_CARD).is_file():
            return candidate
    return None


def run_card_of(adapter_dir: Path) -> RunCard | None:
    """The run card of the run an adapter came from; None when it has none (a bare adapter directory)."""
    run_dir = run_dir_of(adapter_dir)
    return RunCard.read(run_dir) if run_dir else None


def adapter_label(adapter_dir: Path) -> str:
    """A short human name for an adapter: its run's name, else its directory's name."""
    adapter_dir = Path(adapter_dir).resolve()
    run_dir = run_dir_of(adapter_dir)
    return (run_dir or adapter_dir).name


def base_model_of(adapter_dir: Path) -> str | None:
    """The base model an adapter was trained on: the run card's `model`, else peft's `base_model_name_or_path`."""
    card = run_card_of(adapter_dir)
    if card is not None and card.model:
        return card.model
    config = read_json_file(Path(adapter_dir) / ADAPTER_CONFIG) or {}
    return config.get("base_model_name_or_path") or None


def _has_adapter(directory: Path) -> bool:
    return (directory / ADAPTER_CONFIG).is_file()


def _readable_card(run_dir: Path) -> tuple[RunCard | None, str]:
    """(the card, its status for `runs`): a broken card is listed as such, not raised."""
    try:
        card = RunCard.read(run_dir)
    except UserError:
        return None, "unreadable run card" if (run_dir / RUN_CARD).is_file() else "no run card"
    if card.status == "running" and not is_training(run_dir):
        return card, STOPPED  # killed with -9, a power cut: nobody holds its lock
    return card, card.status


def summarize_run(run_dir: Path) -> RunSummary:
    run_dir = Path(run_dir)
    card_path = run_dir / RUN_CARD
    card, status = _readable_card(run_dir)
    metrics = card.metrics if card else {}
    after = metrics.get("eval_after") or {}
    date = card.finished_at if card else None
    if date is None and card_path.is_file():
        date = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(card_path.stat().st_mtime))
    return RunSummary(
        name=run_dir.name,
        path=run_dir,
        model=card.model if card else None,
        date=date,
        steps=card.steps if card else None,
        final_loss=metrics.get("final_loss"),
        exact=after.get("exact"),
        f1=after.get("f1"),
        status=status,
        has_adapter=_has_adapter(run_dir / ADAPTER_DIR) or _has_adapter(run_dir),
    )


def _is_run(directory: Path) -> bool:
    return (directory / RUN_CARD).is_file() or _has_adapter(directory / ADAPTER_DIR) or _has_adapter(directory)


def _visible_dirs(directory: Path) -> list[Path]:
    return [child for child in directory.iterdir() if child.is_dir() and not child.name.startswith(".")]


def list_runs(root: Path | None = None) -> list[RunSummary]:
    """Every run under `root` (default: paths.runs_dir()), oldest first.

    A folder that is not a run itself may group runs one level down (e.g. `demo/run`); they are named by their
    path below `root`, which is also how `--adapter` finds them.
    """
    root = Path(root) if root is not None else runs_dir()
    if not root.is_dir():
        return []
    found = []
    for child in _visible_dirs(root):
        for directory in [child] if _is_run(child) else [d for d in _visible_dirs(child) if _is_run(d)]:
            summary = summarize_run(directory)
            found.append(replace(summary, name=directory.relative_to(root).as_posix()))
    return sorted(found, key=lambda run: (run.date or "", run.name))


def _number(value: float | int | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _short_model(model: str | None) -> str:
    """A local directory by its name (the full path is in --json); a hub id as it is."""
    if not model:
        return "?"
    path = Path(model)
    return path.name if path.is_absolute() or path.exists() else model


def runs_table(runs: list[RunSummary], title: str | None = None, adapter_in_use: Path | None = None):
    """A rich table of runs; the run that `adapter_in_use` belongs to is starred."""
    from rich.markup import escape
    from rich.table import Table

    active = run_dir_of(adapter_in_use) if adapter_in_use is not None else None
    active = active.resolve() if active is not None else None
    table = Table(title=escape(title) if title else None)
    for header in ("run", "model", "date", "steps", "loss", "EM / F1 %", "status"):
        table.add_column(header, no_wrap=header in ("run", "date"))
    for run in runs:
        scores = "-" if run.exact is None else f"{_number(run.exact, 1)} / {_number(run.f1, 1)}"
        table.add_row(
            escape(f"* {run.name}" if run.path.resolve() == active else run.name),  # `run[best]` is a name, not markup
            escape(_short_model(run.model)), (run.date or "-")[:10], _number(run.steps, 0), _number(run.final_loss, 3),
            scores, escape(run.status if run.has_adapter else f"{run.status} (no adapter)"),
        )
    return table


def _known_runs_hint() -> str:
    usable = [run.name for run in list_runs() if run.has_adapter]
    if usable:
        return f"Runs with an adapter under {runs_dir()}: {', '.join(usable)}. `falcon-desktop runs` lists them all."
    return (
        f"No trained runs under {runs_dir()} yet: run `falcon-desktop demo` or `falcon-desktop train`, "
        "or pass the path of a run directory or of an adapter directory."
    )


def resolve_adapter(reference: str | Path) -> Path:
    """The adapter directory (holding adapter_config.json) for a run name, run directory or adapter directory."""
    path = Path(reference).expanduser()
    if not path.exists():
        named = runs_dir() / str(reference)
        if not named.is_dir():
            raise UserError(f"No run or adapter directory named {str(reference)!r}.", _known_runs_hint())
        path = named
    if path.is_file():
        path = path.parent  # e.g. the path of adapter_config.json itself
    for candidate in (path, path / ADAPTER_DIR):
        if _has_adapter(candidate):
            return candidate
    grouped = [d.name for d in _visible_dirs(path) if _has_adapter(d) or _has_adapter(d / ADAPTER_DIR)]
    if grouped:
        choices = ", ".join(f"{str(reference).rstrip('/')}/{name}" for name in grouped)
        raise UserError(f"{str(path)!r} is a folder of runs, not a run.", f"Pass one of: {choices}.")
    status = (read_json_file(path / RUN_CARD) or {}).get("status")
    raise UserError(
        f"{str(path)!r} holds no adapter (no {ADAPTER_CONFIG} in it or in {ADAPTER_DIR}/)"
        + (f"; its run's status is {status!r}." if status else "."),
        "A run saves its adapter when training finishes or is interrupted with Ctrl-C; "
        "resume an unfinished one with `falcon-desktop train --resume RUN_DIR`.",
    )
