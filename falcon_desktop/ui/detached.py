"""How the UI starts falcon-desktop processes: the CLI itself, with Windows' Ctrl-Break read as Ctrl-C.

The UI stops a training run the way a user does, with Ctrl-C, so the trainer saves a checkpoint and its adapter
before it exits. On POSIX that is SIGINT. A Windows process started in its own process group (so that closing the UI
leaves it running) cannot receive Ctrl-C, only Ctrl-Break, whose default is to end the process at once; here it is
turned into the SIGINT the trainer already handles.
"""

from __future__ import annotations

import signal
import sys


def _break_as_interrupt(signum: int, frame: object) -> None:
    signal.raise_signal(signal.SIGINT)


def main() -> int:
    if hasattr(signal, "SIGBREAK"):
        signal.signal(signal.SIGBREAK, _break_as_interrupt)
    from falcon_desktop.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
