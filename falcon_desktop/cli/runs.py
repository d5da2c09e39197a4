"""`falcon-desktop runs`: the training runs found, with their base model, steps, final loss and held-out scores.

Runs live under the falcon-desktop home (FALCON_DESKTOP_HOME, else the platform's data directory) in `runs/`; any
run's name works as `--adapter NAME` for `ask`, `eval` and `merge`.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  falcon-desktop runs
  falcon-desktop runs --json
  falcon-desktop runs --dir D:/experiments/runs
"""


def register(subparsers: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser(
        "runs", help="list trained runs and their metrics", description=__doc__, epilog=EXAMPLES,
        formatter_class=formatter,
    )
    parser.add_argument("--dir", metavar="DIR", help="look for runs here instead of the default runs directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from falcon_desktop.console import info, out, print_json
    from falcon_desktop.paths import runs_dir
    from falcon_desktop.runs import list_runs, runs_table

    root = Path(args.dir).expanduser() if args.dir else runs_dir()
    runs = list_runs(root)
    if args.json:
        print_json({"runs_dir": str(root), "runs": [run.to_json() for run in runs]})
        return 0
    if not runs:
        info(f"No runs under {root} yet. `falcon-desktop demo` makes one in about a minute.")
        return 0
    out().print(runs_table(runs, title=f"Runs in {root}"))
    return 0
