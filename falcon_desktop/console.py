"""Terminal output: results on stdout, messages on stderr, and symbols that survive a cp1252 console.

stdout carries only results (tables, `--json`, `ask --question` answers) so that scripts can parse it; progress,
warnings and errors go to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console


def _can_encode(stream: Any, text: str) -> bool:
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def symbol(fancy: str, plain: str, stream: Any = None) -> str:
    """`fancy` where the stream can encode it, else `plain` (Windows consoles redirected to a file are cp1252)."""
    return fancy if _can_encode(stream or sys.stdout, fancy) else plain


def out() -> Console:
    """Console for results (stdout)."""
    return Console(soft_wrap=False, highlight=False)


def err() -> Console:
    """Console for progress, warnings and errors (stderr)."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(payload: Any) -> None:
    """One JSON document on stdout, UTF-8 safe whatever the console's code page."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=str, ensure_ascii=not _can_encode(sys.stdout, "é"))
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def warn(message: str) -> None:
    err().print(f"[yellow]Warning:[/yellow] {message}", markup=True)


def info(message: str) -> None:
    err().print(message, markup=True)
