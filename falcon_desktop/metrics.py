"""What a run records while it trains: metrics.jsonl, VRAM readings, and loss.png at the end (the live line is
progress.py's)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from falcon_desktop.atomic import append_line, read_json_lines, sync_file, write_bytes, write_text


def vram_now() -> tuple[int, int]:
    """(reserved now, peak reserved) bytes on the current CUDA device; zeros on the CPU."""
    import torch

    if not torch.cuda.is_available():
        return 0, 0
    return torch.cuda.memory_reserved(), torch.cuda.max_memory_reserved()


class MetricsLog:
    """Append-only metrics.jsonl: one object per optimizer step. A crashed process loses at most the torn last line
    (which reading skips and the next append cuts off); a power cut, the lines since the last `sync`, which the
    trainer calls with each checkpoint: lines past the last checkpoint are dropped on resume anyway.

    A line is not fsynced as it is written: an fsync waits for the disk, behind whatever else is being written back
    (a model written a minute before; on Windows, FlushFileBuffers), while the training loop writes a line between
    queueing a step and reading its loss. Beside Unsloth, whose loop writes nothing, 3-6 consecutive steps of each of
    our three 8B runs took 1.2-1.8x their size's time and none of Unsloth's did
    (benchmarks/results/unsloth-grouped-h200/); with lines fsynced only with checkpoints, none of our 80 steps in
    session 13's two 8B runs did (benchmarks/results/unsloth-graphless-h200/)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, record: dict) -> None:
        append_line(self.path, json.dumps(record, sort_keys=True), sync=False)

    def sync(self) -> None:
        if self.path.exists():  # none before the first step
            sync_file(self.path)

    def read(self) -> list[dict]:
        return read_json_lines(self.path)

    def truncate_after(self, step: int) -> None:
        """Drop lines past `step` (a resumed run re-does steps after its last checkpoint; 0 drops them all)."""
        if not self.path.exists():
            return
        kept = [r for r in self.read() if isinstance(r.get("step"), int) and r["step"] <= step]
        write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def plot_losses(curves: dict[str, list[tuple[float, float]]], path: Path, x_label: str = "step") -> None:
    """Write a PNG with one line per curve: {label: [(x, loss), ...]}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=110)
    for label, points in curves.items():
        if points:
            xs, ys = zip(*points)
            axes.plot(xs, ys, label=label, linewidth=1.2)
    axes.set_xlabel(x_label)
    axes.set_ylabel("training loss (answer tokens)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    write_bytes(path, buffer.getvalue())


class Stopwatch:
    """Seconds between `lap()` calls; `total` accumulates across laps."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.total = 0.0

    def lap(self) -> float:
        now = time.perf_counter()
        delta, self.last = now - self.last, now
        self.total += delta
        return delta
