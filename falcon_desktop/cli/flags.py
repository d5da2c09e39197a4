"""Old flag spellings that keep working for a release: hidden from `--help`, with a one-line note on stderr.

The vocabulary they map onto is documented once, in docs/commands.md ("Flags").
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


class _DeprecatedSpelling(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, target: str, replacement: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.target, self.replacement = target, replacement

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if values is None:  # an optional positional that was not given
            return
        old, new = (option_string, self.replacement) if option_string else (
            f"{self.metavar} without {self.replacement}", f"{self.replacement} {self.metavar}")
        print(f"Note: {old} is deprecated; write {new} (the old spelling goes in a future release).", file=sys.stderr)
        setattr(namespace, self.target, values)


def add_deprecated(parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, replacement: str,
                   target: str, **kwargs: Any) -> None:
    """Accept `old` (an option such as --batch-size, or a positional's metavar) as a hidden alias of `target`."""
    if old.startswith("-"):
        parser.add_argument(old, action=_DeprecatedSpelling, dest=f"deprecated_{target}", target=target,
                            replacement=replacement, default=argparse.SUPPRESS, **kwargs)
    else:
        parser.add_argument(f"deprecated_{target}", action=_DeprecatedSpelling, target=target,
                            replacement=replacement, nargs="?", default=None, metavar=old, **kwargs)
