"""One writer per run folder: `train.lock` holds the writer's pid and host while it trains.

Two `train --resume` on one folder would interleave checkpoints and metrics; the second is refused. A writer killed
with -9 (or a power cut) leaves its lock behind: a lock whose pid is no longer alive on this host is stale and is
taken over. `runs` reads the same lock to tell a run that is training from one that stopped without saying so.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from falcon_desktop.errors import UserError

LOCK_FILE = "train.lock"


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    since: str

    def is_alive(self) -> bool:
        """True when the owner may still run: alive on this host, or on another host (which we cannot check)."""
        if self.host != socket.gethostname():
            return True
        import psutil

        return self.pid == os.getpid() or psutil.pid_exists(self.pid)


def lock_owner(run_dir: Path) -> LockOwner | None:
    """Who holds the run's lock; None when nobody does. An unreadable lock (torn by a crash) counts as a dead one."""
    path = Path(run_dir) / LOCK_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LockOwner(int(data["pid"]), str(data["host"]), str(data.get("since", "?")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return LockOwner(-1, socket.gethostname(), "?")


def is_training(run_dir: Path) -> bool:
    owner = lock_owner(run_dir)
    return owner is not None and owner.is_alive()


class RunLock:
    """`with RunLock(run_dir):` - created exclusively (O_EXCL), so two writers starting together cannot both win."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False

    def __enter__(self) -> RunLock:
        owner = lock_owner(self.path.parent)
        if owner is not None:
            if owner.is_alive():
                raise UserError(
                    f"{self.path.parent} is being trained by process {owner.pid} on {owner.host} (since {owner.since}).",
                    f"Wait for it to finish, or stop it first. If it is really gone, delete {self.path}.",
                )
            self.path.unlink(missing_ok=True)  # the writer died without releasing it
        payload = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
        try:
            handle = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise UserError(f"Another process started training {self.path.parent} at the same moment.",
                            "Run one `train` per run folder.") from None
        try:
            os.write(handle, payload.encode("utf-8"))
            os.fsync(handle)
        except BaseException:
            os.close(handle)
            self.path.unlink(missing_ok=True)
            raise
        os.close(handle)
        self.held = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
