"""Stopping a run cleanly: signals only raise a flag, and output to a closed pipe never stops the saving."""

from __future__ import annotations

import contextlib
import os
import signal
import sys


class StopSignals:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to save and stop after the current step; a second one stops at once.

    The handler only records the request: printing from it could raise on a closed pipe (`2>&1 | tee log`, where the
    same Ctrl-C ends `tee`) and lose the save. The loop does the saving and the telling.
    """

    # SIGBREAK: Windows' Ctrl-Break, which is what the UI sends a training process in its own console group.
    SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGBREAK", None))
                    if s is not None)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum

    def __enter__(self) -> StopSignals:
        with contextlib.suppress(ValueError):  # not the main thread: leave the default handlers
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def mute_closed_output() -> None:
    """stdout/stderr went to a pipe that closed: point them at the null device so the run can still save."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())


def say(show, *args) -> None:
    """Print, but never let a closed output stop training or saving (rich exits on a broken pipe)."""
    try:
        show(*args)
    except (OSError, SystemExit):
        mute_closed_output()
