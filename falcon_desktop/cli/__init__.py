"""The `falcon-desktop` command: a thin shell over the stage modules.

Each verb lives in `falcon_desktop/cli/<verb>.py` with `register(subparsers)` and `run(args) -> int`. Those files
import nothing heavy at module level, so `--help` and `plan` never load torch; the stage module is imported inside
`run`. All errors funnel through `main`: a `UserError` (or a known library exception) becomes "Error:"/"Hint:" on
stderr and exit code 1; set FALCON_DESKTOP_DEBUG=1 to see the traceback. Verbs run inside `quiet_libraries`, so
the libraries' own bars and warnings stay hidden unless `--verbose` (before or after the verb) asks for them.
The flag vocabulary shared by the verbs is in docs/commands.md ("Flags").
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from falcon_desktop import __version__

# Order is the order `--help` lists them: the flow first, then the helpers.
VERBS = ("doctor", "plan", "data", "train", "eval", "ask", "demo", "merge", "export", "runs", "ui")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default once: not for switches, not for "no default", not where the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Every parser, verbs' included (subparsers inherit the class): no abbreviations, so `--epoch` is an error."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _add_verbose(parser: argparse.ArgumentParser, default: object) -> None:
    """`--verbose` on the program and on every verb; a verb's copy must not overwrite the program's value."""
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="also show the libraries' own progress bars, warnings and log lines")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in dict.fromkeys(action.choices.values()):
                _add_verbose(subparser, argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="falcon-desktop",
        description="Fine-tune Falcon-7B (and Llama, Mistral, Qwen) with QLoRA on SQuAD on one consumer GPU.",
        epilog="Start with `falcon-desktop doctor`, then `falcon-desktop demo`.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"falcon-desktop {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        importlib.import_module(f"falcon_desktop.cli.{verb}").register(subparsers, _Formatter)
    _add_verbose(parser, False)
    return parser


def _configure_environment() -> None:
    # Must precede the first `import torch`: the caching allocator reads it once. Expandable segments cut the
    # fragmentation that made fixed-size batches of varying length over-reserve (measured on the H100 under a
    # 24 GiB cap, Falcon-7B batch 16: 25.1 -> 17.2 GB reserved).
    os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")
    # Windows consoles default to cp1252; our output (and the data) is UTF-8.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="replace")
            except (ValueError, OSError):
                pass


def _report(error: BaseException) -> int:
    from falcon_desktop.console import err
    from falcon_desktop.errors import explain

    user_error = explain(error)
    if user_error is None or os.environ.get("FALCON_DESKTOP_DEBUG") == "1":
        raise error
    from rich.markup import escape

    console = err()  # messages name user paths such as `run[best]`: escaped, never read as markup
    console.print(f"[bold red]Error:[/bold red] {escape(user_error.message)}", markup=True, highlight=False)
    if user_error.hint:
        console.print(f"[bold]Hint:[/bold] {escape(user_error.hint)}", markup=True, highlight=False)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    _configure_environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --gpus N` relaunches the same command
    if args.verb is None:
        parser.print_help()
        return 2
    from falcon_desktop.console import quiet_libraries

    try:
        with quiet_libraries(args.verbose):
            return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - one place turns every known failure into a message
        return _report(error)
