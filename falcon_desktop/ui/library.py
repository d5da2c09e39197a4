"""Every call the UI makes into the rest of falcon-desktop, in one place.

The UI is one more shell over the library, like `cli/`, and speaks the CLI's vocabulary: a form is a dict keyed by
the verb's argparse destinations (`seq_len`, `lora_targets`, `max_steps`, ...). `verb_flags` turns it into the flags
the verb accepts and parses them with the real parser, so a setting means in the UI exactly what it means on the
command line, the training process gets the same flags, and the planner gets the same `PlanRequest`/`GpuSpec` the
`plan` verb builds. When a library signature changes, these thin adapters are what to fix.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from falcon_desktop.errors import UserError


# ------------------------------------------------------------------------------------------------- CLI vocabulary
def _verb_parser(verb: str) -> argparse.ArgumentParser:
    """The parser of `verb`: "train", or an action of one such as "data inspect"."""
    from falcon_desktop.cli import build_parser

    parser = build_parser()
    for word in verb.split():
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = subparsers.choices[word]
    return parser


def _flag(action: argparse.Action, value: Any) -> list[str]:
    name = next((option for option in action.option_strings if option.startswith("--")), action.option_strings[0])
    if isinstance(action, argparse.BooleanOptionalAction):  # its first option is the positive one
        return [name if value else "--no-" + name[2:]]
    if action.nargs == 0:  # store_true
        return [name] if value else []
    if isinstance(value, (list, tuple)):
        value = ",".join(str(item) for item in value)
    return [name, str(value)]


def verb_flags(verb: str, values: Mapping[str, Any], positional: tuple[str, ...] = ()) -> tuple[list[str], argparse.Namespace]:
    """The command-line flags of `verb` for a form keyed by argparse destinations, and the Namespace they parse to.

    Empty values are left out (the verb's default applies); an unknown key or a bad value is a UserError.
    """
    parser = _verb_parser(verb)
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:  # a deprecated spelling shares its dest with the current flag, defined first
        if action.option_strings:
            actions.setdefault(action.dest, action)
    flags: list[str] = []
    for dest, value in values.items():
        if dest not in actions or dest == "help":
            raise UserError(f"{verb} has no setting {dest!r}.", f"See `falcon-desktop {verb} --help`.")
        if value is None or value == "" or value == []:
            continue
        flags += _flag(actions[dest], value)
    complaints = io.StringIO()
    try:
        with contextlib.redirect_stderr(complaints):
            namespace = parser.parse_args([*positional, *flags])
    except SystemExit:
        message = complaints.getvalue().strip().splitlines()[-1:] or ["invalid settings"]
        raise UserError(message[0].split(": error: ")[-1].capitalize() + ".", f"See `falcon-desktop {verb} --help`.") from None
    return flags, namespace


def verb_defaults(verb: str) -> dict[str, Any]:
    """{destination: default} of a verb's flags: what the UI's forms start from."""
    return {action.dest: action.default for action in _verb_parser(verb)._actions
            if action.option_strings and action.dest != "help" and action.default is not argparse.SUPPRESS}


def cli_command(verb: str, flags: list[str], positional: tuple[str, ...] = ()) -> list[str]:
    """The argv of a falcon-desktop process running `verb` (see `ui/detached.py` for the stop signal)."""
    return [sys.executable, "-m", "falcon_desktop.ui.detached", *verb.split(), *positional, *flags]


# ----------------------------------------------------------------------------------------------- machine and plan
def doctor_report() -> dict[str, Any]:
    from falcon_desktop.probe import run_checks

    report = run_checks()
    return {**report.to_json(), "ok": report.ok}


def detected_gpu() -> Any:
    from falcon_desktop.plan import detected_gpu as detect

    return detect()


def plan_choices() -> dict[str, Any]:
    """What the forms offer: model presets, methods, the GPU table, and the `plan` and `train` flags' defaults."""
    from falcon_desktop.hardware import GPUS
    from falcon_desktop.plan_memory import INFERENCE_DTYPES, METHODS
    from falcon_desktop.shapes import PRESETS

    return {
        "presets": {name: preset.summary for name, preset in PRESETS.items()},
        "methods": list(METHODS),
        "inference_dtypes": list(INFERENCE_DTYPES),
        "gpus": [{"name": gpu.name, "vram_gib": gpu.vram_gib} for gpu in GPUS],
        "defaults": verb_defaults("plan"),
        "train_defaults": verb_defaults("train"),
    }


def make_plan(values: Mapping[str, Any], detected: Callable[[], Any]) -> dict[str, Any]:
    """`plan --json`'s object for a Plan form, plus the LoRA targets the model offers.

    `detected` gives the GPU to plan for when the form names none (the UI probes once, not on every keystroke).
    """
    from falcon_desktop.cli.plan import gpu_from_args, request_from_args
    from falcon_desktop.plan import cost_estimates, make_plan as plan_for, rules_of_thumb
    from falcon_desktop.shapes import load_shape, valid_lora_targets

    _, args = verb_flags("plan", values)
    shape = load_shape(args.model)
    request = request_from_args(args)
    gpu = gpu_from_args(args) if (args.gpu or args.vram is not None) else detected()
    plan = plan_for(shape, gpu, request)
    return {**plan.to_json(), "shape": dataclasses.asdict(shape), "params": plan.parameter_counts,
            "rules_of_thumb": rules_of_thumb(plan.total_params), "costs": cost_estimates(shape, request, plan),
            "valid_lora_targets": list(valid_lora_targets(shape))}


# ----------------------------------------------------------------------------------------------------------- runs
def runs_root() -> Path:
    from falcon_desktop.paths import runs_dir

    return runs_dir()


def list_runs() -> list[dict[str, Any]]:
    from falcon_desktop.runs import list_runs as find

    return [run.to_json() for run in find(runs_root())]


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None while it is missing or half-written."""
    from falcon_desktop.runs import read_json_file

    return read_json_file(path)


def run_card(run_dir: Path) -> dict[str, Any] | None:
    """The checked run card as JSON; None while it is missing (a run starting) or broken."""
    from falcon_desktop.errors import UserError
    from falcon_desktop.runs import RunCard

    try:
        return RunCard.read(run_dir).to_json()
    except UserError:
        return None


def metrics_file(run_dir: Path) -> Path:
    return run_dir / "metrics.jsonl"


def new_run_dir(model: str) -> Path:
    """Where `train` would put a run of `model` started now."""
    from falcon_desktop import paths

    return paths.new_run_dir(model)


# ------------------------------------------------------------------------------------------------------------ ask
def load_answerer(values: Mapping[str, Any]) -> Any:
    """An `ask` Answerer for an Ask form (adapter, model, device, generation flags), as `ask` builds it."""
    from falcon_desktop.ask import load_answerer as load
    from falcon_desktop.cli.ask import ask_options

    _, args = verb_flags("ask", values)
    return load(ask_options(args))


def answerer_state(answerer: Any) -> dict[str, Any]:
    return {"model": answerer.description, "adapter": answerer.active_label,
            "adapters": [str(path) for path in answerer.adapters.values()]}


def switch_adapter(answerer: Any, reference: str | None) -> None:
    if reference:
        answerer.use_adapter(reference)
    else:
        answerer.use_base()


def answer(answerer: Any, question: str, context: str | None, on_text: Callable[[str], None]) -> dict[str, Any]:
    """Stream one answer through `on_text`; raising KeyboardInterrupt in it ends the answer early, as Ctrl-C does."""
    from falcon_desktop.ask import CLOSED_BOOK_NOTE, display_answer
    from falcon_desktop.prompts import is_abstention

    result = answerer.ask(question, context, on_text)
    return {
        "text": result.text, "display": display_answer(result.text), "abstained": is_abstention(result.text),
        "closed_book": None if context else CLOSED_BOOK_NOTE, "new_tokens": result.new_tokens,
        "first_token_seconds": result.first_token_seconds, "total_seconds": result.total_seconds,
        "tokens_per_second": result.tokens_per_second, "stop_reason": result.stop_reason,
    }


def user_error(error: BaseException) -> UserError | None:
    from falcon_desktop.errors import explain

    return explain(error)
