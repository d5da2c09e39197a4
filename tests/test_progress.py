"""The progress line: all key fields within 80 columns on a terminal, plain periodic lines in a log."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from falcon_desktop.progress import AnswerProgress, ProgressLine, TrainingDisplay, clock_text

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _terminal(width: int) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=width, force_terminal=True, color_system=None), buffer


def _lines(buffer: io.StringIO) -> list[str]:
    text = ANSI.sub("", buffer.getvalue())
    return [line for line in re.split(r"[\r\n]", text) if line.strip()]


def _train(console: Console, total: int = 12_000, **kwargs) -> None:
    with TrainingDisplay(total, 0, console=console, **kwargs) as display:
        for step in range(1, total + 1, max(1, total // 7)):
            display.update(step, 7.3294, 2e-4, 123_456.0)
        display.update(total, 1.2345, 1.5e-5, 123_456.0)


@pytest.mark.parametrize("width", [80, 100, 119, 120, 139, 140, 200])
def test_training_line_fits_the_terminal_with_every_key_field(width: int) -> None:
    console, buffer = _terminal(width)
    _train(console)
    lines = _lines(buffer)
    assert lines and max(len(line) for line in lines) <= width, lines
    last = lines[-1]
    for field in ("train", "loss 1.23", "123,456 tok/s", "VRAM cpu", "ETA 0:00:00"):
        assert field in last, (field, last)
    assert ("12000/12000" if width < 120 else "12,000/12,000") in last
    assert ("lr 1.50e-05" in last) == (width >= 120)


def test_compact_line_with_gpu_figures_and_long_times_fits_80_columns() -> None:
    line = ProgressLine("train", 12_000, console=_terminal(80)[0])
    line.update(11_999, "", "loss 10.123 123,456 tok/s VRAM 79.9G")
    line._started_at -= 99 * 3600  # a run of 99 hours so far
    assert len(f"train {line.line(compact=True)}") <= 80
    assert "11999/12000" in line.line(compact=True) and "99:00:" in line.line(compact=True)


def test_redirected_output_gets_plain_lines_every_n_steps_and_at_the_end() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=80)  # not a terminal: a file or a pipe
    with TrainingDisplay(25, 0, console=console) as display:
        for step in range(1, 24):
            display.update(step, 2.5, 1e-4, 1000.0)
    lines = buffer.getvalue().splitlines()
    steps = [int(re.match(r"train (\d+)/25  loss 2\.5000  lr 1\.00e-04  1,000 tok/s  VRAM cpu  elapsed "
                          r"\d:\d\d:\d\d  ETA \d:\d\d:\d\d$", line).group(1)) for line in lines]
    assert steps == [3, 6, 9, 12, 15, 18, 21, 23]  # every ceil(25/10) steps, and the last on exit
    assert "\x1b" not in buffer.getvalue()


def test_redirected_output_gets_a_line_after_the_time_interval() -> None:
    buffer = io.StringIO()
    with ProgressLine("train", 1000, console=Console(file=buffer), plain_every=500, plain_seconds=0.0) as line:
        line.update(1, "loss 1.0")
        line.update(2, "loss 0.9")
    assert [row.split("  ")[0] for row in buffer.getvalue().splitlines()] == ["train 1/1,000", "train 2/1,000"]


def test_resumed_run_counts_eta_from_this_session() -> None:
    line = ProgressLine("train", 100, completed=50, console=Console(file=io.StringIO()))
    with line:
        assert line.eta() is None
        line.update(60, "")
        line._started_at -= 10.0  # 10 steps in 10 s: 40 steps to go
        assert line.eta() == pytest.approx(40.0, rel=0.01)


def test_answering_progress_on_a_terminal_and_in_a_log() -> None:
    console, buffer = _terminal(80)
    with AnswerProgress(40, console=console) as progress:
        for _ in range(5):
            progress.advance(8)
    lines = _lines(buffer)
    assert max(len(line) for line in lines) <= 80 and "Answering 40/40" in lines[-1]
    assert "questions/s" in lines[-1] and "ETA 0:00:00" in lines[-1]

    log = io.StringIO()
    with AnswerProgress(40, console=Console(file=log)) as progress:
        for _ in range(5):
            progress.advance(8)
    assert [line.split("  ")[0] for line in log.getvalue().splitlines()] == [
        "Answering 8/40", "Answering 16/40", "Answering 24/40", "Answering 32/40", "Answering 40/40"]


def test_clock_text() -> None:
    assert clock_text(None) == "-" and clock_text(float("inf")) == "-"
    assert clock_text(59.6) == "0:01:00" and clock_text(3 * 3600 + 62) == "3:01:02"
