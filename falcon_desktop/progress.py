"""Progress on stderr: a live line that fits the terminal, or plain periodic lines when stderr is a file or a pipe.

On a terminal narrower than FULL_COLUMNS the line is compact (no learning rate, peak VRAM only, fewer labels) so
that the fields a user watches - step of total, loss, tokens/s, VRAM, elapsed and ETA - fit 80 columns even for a
12,000-step run of many hours; a wide terminal gets every field with its label, and a bar from BAR_COLUMNS on.
Redirected to a log, a live bar would write nothing until one line at the end, so instead a plain line is written
every `plain_every` units or PLAIN_SECONDS, whichever comes first, and at the end.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, TypeVar

from falcon_desktop.console import err
from falcon_desktop.hardware import GIB
from falcon_desktop.metrics import vram_now

if TYPE_CHECKING:
    from rich.console import Console

FULL_COLUMNS = 120
BAR_COLUMNS = 140
PLAIN_SECONDS = 30.0
PLAIN_LINES = 10  # a short job still shows this many plain lines


def clock_text(seconds: float | None) -> str:
    """h:mm:ss, or "-" while unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class ProgressLine:
    """One job's progress: `label done/total details elapsed ETA`, live on a terminal, plain lines otherwise."""

    def __init__(self, label: str, total: int, completed: int = 0, console: Console | None = None,
                 plain_every: int | None = None, plain_seconds: float = PLAIN_SECONDS) -> None:
        self.label, self.total, self.completed = label, total, completed
        self.console = console or err()
        self.live = self.console.is_terminal
        self.plain_every = plain_every or max(1, math.ceil(total / PLAIN_LINES))
        self.plain_seconds = plain_seconds
        self.details = self.compact_details = ""
        self._started_at = time.perf_counter()
        self._start_completed = completed
        self._printed = (completed, self._started_at)  # (completed, when) of the last plain line
        self._progress = None
        self._task = None

    def __enter__(self) -> ProgressLine:
        self._started_at = time.perf_counter()
        self._printed = (self.completed, self._started_at)
        if self.live:
            self._start_live()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
        elif self._printed[0] != self.completed:
            self._print_plain()

    def update(self, completed: int, details: str = "", compact_details: str | None = None) -> None:
        """Record progress; `compact_details` replaces `details` on a narrow terminal."""
        self.completed, self.details = completed, details
        self.compact_details = details if compact_details is None else compact_details
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, text=self._live_text())
        elif self._plain_line_due():
            self._print_plain()

    def advance(self, amount: int, details: str = "", compact_details: str | None = None) -> None:
        self.update(self.completed + amount, details, compact_details)

    def elapsed(self) -> float:
        return time.perf_counter() - self._started_at

    def eta(self) -> float | None:
        done = self.completed - self._start_completed
        if done <= 0:
            return None
        return (self.total - self.completed) * self.elapsed() / done

    def line(self, compact: bool) -> str:
        """The text after the label (and bar): counts, details, elapsed and ETA."""
        details = self.compact_details if compact else self.details
        times = (f"{clock_text(self.elapsed())} ETA {clock_text(self.eta())}" if compact else
                 f"elapsed {clock_text(self.elapsed())}  ETA {clock_text(self.eta())}")
        counts = f"{self.completed}/{self.total}" if compact else f"{self.completed:,}/{self.total:,}"
        return (" " if compact else "  ").join(part for part in (counts, details, times) if part)

    def _plain_line_due(self) -> bool:
        printed_completed, printed_at = self._printed
        return (self.completed - printed_completed >= self.plain_every or self.completed >= self.total
                or time.perf_counter() - printed_at >= self.plain_seconds)

    def _print_plain(self) -> None:
        self.console.print(f"{self.label} {self.line(compact=False)}", markup=False, highlight=False,
                           soft_wrap=True)
        self._printed = (self.completed, time.perf_counter())

    def _live_text(self) -> str:
        return self.line(compact=self.console.width < FULL_COLUMNS)

    def _start_live(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        columns = [TextColumn(f"[bold]{self.label}[/bold]")]
        if self.console.width >= BAR_COLUMNS:
            columns.append(BarColumn(bar_width=20))
        columns.append(TextColumn("{task.fields[text]}", markup=False))
        self._progress = Progress(*columns, console=self.console, transient=False)
        self._task = self._progress.add_task(self.label, total=self.total, completed=self.completed,
                                             text=self._live_text())
        self._progress.start()


_Display = TypeVar("_Display", bound="_OnProgressLine")


class _OnProgressLine:
    """A job's own progress display, shown (and started and stopped, as a context manager) by its `line`."""

    line: ProgressLine

    def __enter__(self: _Display) -> _Display:
        self.line.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.line.__exit__(*exc)


class TrainingDisplay(_OnProgressLine):
    """The training line: step of total, loss, learning rate, tokens/s, VRAM, elapsed and ETA."""

    def __init__(self, total_steps: int, start_step: int, console: Console | None = None,
                 plain_every: int | None = None) -> None:
        self.line = ProgressLine("train", total_steps, start_step, console, plain_every)

    def update(self, step: int, loss: float, lr: float, tokens_per_second: float) -> None:
        reserved, peak = vram_now()
        vram = f"VRAM {reserved / GIB:.1f}/{peak / GIB:.1f} GB" if peak else "VRAM cpu"
        peak_vram = f"VRAM {peak / GIB:.1f}G" if peak else "VRAM cpu"
        speed = f"{tokens_per_second:,.0f} tok/s"
        self.line.update(step, f"loss {loss:.4f}  lr {lr:.2e}  {speed}  {vram}", f"loss {loss:.3f} {speed} {peak_vram}")


class AnswerProgress(_OnProgressLine):
    """The "Answering" line of `ask --data` and `eval --adapter`: questions answered of total, and the rate."""

    def __init__(self, total: int, console: Console | None = None, plain_every: int | None = None) -> None:
        self.line = ProgressLine("Answering", total, 0, console, plain_every)

    def advance(self, answered: int) -> None:
        done = self.line.completed + answered
        rate = done / max(self.line.elapsed(), 1e-9)
        self.line.update(done, f"{rate:,.1f} questions/s")
