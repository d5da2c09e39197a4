"""What a run reports while it trains: a live progress line, metrics.jsonl, and loss.png at the end."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from falcon_desktop.atomic import append_line, read_json_lines, write_bytes, write_text
from falcon_desktop.console import err

GIB = 1024**3


def vram_now() -> tuple[int, int]:
    """(reserved now, peak reserved) bytes on the current CUDA device; zeros on the CPU."""
    import torch

    if not torch.cuda.is_available():
        return 0, 0
    return torch.cuda.memory_reserved(), torch.cuda.max_memory_reserved()


class TrainingDisplay:
    """A rich progress bar with loss, learning rate, tokens/s, ETA and VRAM, on stderr."""

    def __init__(self, total_steps: int, start_step: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]train[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]} tok/s  VRAM {task.fields[vram]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err(),
            transient=False,
        )
        self.task = self.progress.add_task(
            "train", total=total_steps, completed=start_step, loss="-", lr="-", speed="-", vram="-"
        )

    def __enter__(self) -> TrainingDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, step: int, loss: float, lr: float, tokens_per_second: float) -> None:
        reserved, peak = vram_now()
        vram = f"{reserved / GIB:.1f}/{peak / GIB:.1f} GB" if peak else "cpu"
        self.progress.update(
            self.task, completed=step, loss=f"{loss:.4f}", lr=f"{lr:.2e}", speed=f"{tokens_per_second:,.0f}", vram=vram
        )


class MetricsLog:
    """Append-only metrics.jsonl: one object per optimizer step, fsynced, so a crash loses at most the torn last line
    (which reading skips and the next append cuts off)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, record: dict) -> None:
        append_line(self.path, json.dumps(record, sort_keys=True))

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
