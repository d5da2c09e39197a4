"""`falcon-desktop doctor`: check the driver, GPU, PyTorch, bitsandbytes, memory and disk; say what to fix."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from falcon_desktop.probe import DoctorReport

EXAMPLES = """examples:
  falcon-desktop doctor                    # a table of checks and a verdict; exit 1 if any FAILs
  falcon-desktop doctor --json > doctor.json
  falcon-desktop doctor --torch-command    # the pip command for the PyTorch build this driver runs
"""

_STYLES = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red"}


def register(subparsers: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check this machine: NVIDIA driver, GPU, PyTorch, bitsandbytes, memory, disk",
        description=(
            "Check whether this machine can QLoRA fine-tune: each row is PASS, WARN or FAIL with the measured value "
            "and, where not PASS, the fix. Exits 0 when nothing FAILs, else 1."
        ),
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument(
        "--torch-command",
        action="store_true",
        help="print the pip command that installs the PyTorch build matching this machine's driver, then exit",
    )
    parser.set_defaults(run=run)


def _print_report(report: DoctorReport) -> None:
    from rich.table import Table
    from rich.text import Text

    from falcon_desktop.console import out, symbol

    marks = {"PASS": symbol("✓", "+"), "WARN": symbol("!", "!"), "FAIL": symbol("✗", "x")}
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for check in report.checks:  # Text, not markup: values quote error messages that may hold "[...]"
        status = Text(f"{marks[check.status]} {check.status}", style=_STYLES[check.status])
        table.add_row(status, Text(check.name), Text(check.value))
    # One line per distinct fix, naming the rows it mends (several rows share "no GPU", for one).
    fixes: dict[str, list[str]] = {}
    for check in report.checks:
        if check.status != "PASS" and check.hint:
            fixes.setdefault(check.hint, []).append(check.name)
    console = out()
    console.print(table)
    if fixes:
        console.print("\nTo fix:", style="bold")
        for hint, names in fixes.items():
            console.print(f"  {', '.join(names)}: {hint}", markup=False)
    console.print("\n" + report.verdict, style="bold", markup=False)


def run(args: argparse.Namespace) -> int:
    if args.torch_command:
        from falcon_desktop.torch_build import main as print_torch_command

        return print_torch_command(["--json"] if args.json else [])

    from falcon_desktop.console import print_json
    from falcon_desktop.probe import run_checks

    report = run_checks()
    if args.json:
        print_json(report.to_json())
    else:
        _print_report(report)
    return 0 if report.ok else 1
