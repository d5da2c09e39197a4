"""`falcon-desktop demo`: the whole flow offline on a CPU in about a minute, on a tiny random model."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  falcon-desktop demo
  falcon-desktop demo --output ./demo-run --steps 60
"""


def register(subparsers: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser(
        "demo", help="run doctor -> plan -> train -> eval -> ask offline on a tiny model", description=__doc__,
        epilog=EXAMPLES, formatter_class=formatter,
    )
    parser.add_argument("--output", help="the run directory, which also holds the tiny model (default: runs/demo)")
    parser.add_argument("--steps", type=int, default=30, help="training steps")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from falcon_desktop import paths
    from falcon_desktop.demo import DemoSettings, run_demo

    output = Path(args.output).expanduser() if args.output else paths.runs_dir() / "demo"
    card = run_demo(DemoSettings(output=output, steps=args.steps))
    return 0 if card.status == "finished" else 1
