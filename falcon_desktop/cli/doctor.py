"""`falcon-desktop doctor` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser("doctor", help="(not available yet)", formatter_class=formatter)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from falcon_desktop.errors import UserError

    raise UserError("`falcon-desktop doctor` is not available in this version yet.", "Upgrade falcon-desktop.")
