"""Terminal output: results on stdout, messages on stderr, symbols that survive a cp1252 console, and quiet libraries.

stdout carries only results (tables, `--json`, `ask --question` answers) so that scripts can parse it; progress,
warnings and errors go to stderr. Our progress and messages are all a user sees: `quiet_libraries` keeps the
libraries' own bars, deprecation warnings and log lines away unless `--verbose` or FALCON_DESKTOP_DEBUG=1 asks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from falcon_desktop.paths import environment


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


# The libraries whose chatter `quiet_libraries` hides. Their progress bars (transformers' "Loading weights" and
# "Writing model shards", the hub's and datasets' downloads) and notices (bitsandbytes' "pip install kernels", the
# "model of type RefinedWebModel" line) are for their developers; what a user must know, our code says itself
# (loading, data, errors), and their errors still come through and become our Error:/Hint: lines.
NOISY_LIBRARIES = ("transformers", "huggingface_hub", "datasets", "accelerate", "peft", "bitsandbytes", "torch",
                   "tokenizers", "safetensors")
_QUIET_ENVIRONMENT = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DATASETS_VERBOSITY": "error",
    "HF_HUB_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}


def verbose_requested(flag: bool = False) -> bool:
    """Whether library output should be shown: `--verbose`, or FALCON_DESKTOP_DEBUG=1 (which also shows tracebacks)."""
    return flag or os.environ.get("FALCON_DESKTOP_DEBUG") == "1"


@contextlib.contextmanager
def quiet_libraries(verbose: bool = False) -> Iterator[None]:
    """Silence third-party progress bars, warnings and log lines for the duration (nothing changes when verbose).

    Environment switches cover libraries imported later (the CLI imports them lazily, inside a verb); libraries
    already imported (a test process, a second `main()` call) are switched through their APIs. Python warnings are
    ignored only where they are raised from those libraries' modules, so ours still show. Logging levels, warning
    filters and the environment are restored on exit.
    """
    if verbose_requested(verbose):
        yield
        return
    loggers = [logging.getLogger(name) for name in NOISY_LIBRARIES]
    saved_levels = [logger.level for logger in loggers]
    try:
        with warnings.catch_warnings(), environment(_QUIET_ENVIRONMENT):
            warnings.filterwarnings("ignore", module=rf"({'|'.join(NOISY_LIBRARIES)})(\.|$)")
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            _switch_off_loaded_progress_bars()
            yield
    finally:
        for logger, level in zip(loggers, saved_levels):
            logger.setLevel(level)


def _switch_off_loaded_progress_bars() -> None:
    # Imported before us, these libraries read the environment already; their switch is a function call.
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "datasets" in sys.modules:
        from datasets.utils import disable_progress_bars as disable_dataset_bars

        disable_dataset_bars()
