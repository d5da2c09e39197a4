"""Ctrl-C a training process at a chosen step: shared by the single-process and the multi-rank resume tests."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path


def interrupt_run(command: list[str], run: Path, after_steps: int, log: Path, env: dict[str, str]) -> dict:
    """Start a training process, Ctrl-C it once `after_steps` steps are logged; its run card once it has stopped.

    Its stderr goes to `log`, a file: a full pipe would block the child before it trains.
    """
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        metrics = run / "metrics.jsonl"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if metrics.exists() and len(metrics.read_text(encoding="utf-8").splitlines()) >= after_steps:
                process.send_signal(signal.SIGINT)
                break
            time.sleep(0.02)
        process.wait(timeout=240)
    assert process.returncode == 130, log.read_text(encoding="utf-8", errors="replace")[-3000:]
    card = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert card["status"] == "interrupted"
    assert (run / "checkpoints" / f"step-{card['steps']:06d}").is_dir()
    return card

