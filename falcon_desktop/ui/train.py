"""The Train tab: check the data, then start, watch, stop and resume training runs.

A run is `falcon-desktop train` in its own process (own session on POSIX, own process group on Windows), writing
its output to the run directory as it would from a terminal. The UI only reads what the trainer writes (metrics.jsonl,
run.json) plus two files of its own beside them: `ui-process.json` (which process trains the run) and `ui-train.log`
(its console output). So closing the tab or restarting the UI loses nothing, and a page opened later finds the
run still training and reattaches to it. Stop sends the trainer the Ctrl-C it handles: a checkpoint and the adapter
are saved before it exits; Resume is `train --resume`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from falcon_desktop.errors import UserError
from falcon_desktop.runs import STOPPED
from falcon_desktop.ui import library
from falcon_desktop.ui.common import endpoint, event_stream, read_form, read_new_lines, run_dir, run_name, sse
from falcon_desktop.ui.jobs import Jobs, child_environment, error_lines, tail

PROCESS_FILE = "ui-process.json"
LOG_FILE = "ui-train.log"
POLL_SECONDS = 0.5
WINDOWS = sys.platform == "win32"


def _detach() -> dict[str, Any]:
    if WINDOWS:
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _training_process(directory: Path) -> psutil.Process | None:
    """The live process training `directory`, if any (the recorded start time guards against a reused pid)."""
    record = library.read_json(directory / PROCESS_FILE)
    if not record:
        return None
    try:
        process = psutil.Process(record["pid"])
        if abs(process.create_time() - record["create_time"]) > 1 or process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except (psutil.Error, KeyError, TypeError):
        return None


class Trainings:
    """Training processes: started here, or found in the runs folder after a restart of the UI."""

    def __init__(self) -> None:
        self._children: dict[Path, subprocess.Popen] = {}  # started by this UI: polled so they do not linger as zombies

    def _launch(self, directory: Path, flags: list[str]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / LOG_FILE).open("ab") as log:
            child = subprocess.Popen(library.cli_command("train", flags), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=child_environment(), **_detach())
        record = {"pid": child.pid, "create_time": psutil.Process(child.pid).create_time(),
                  "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "flags": flags}
        (directory / PROCESS_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
        self._children[directory] = child

    def start(self, values: dict[str, Any]) -> Path:
        if values.get("output") or values.get("resume"):
            raise UserError("The UI chooses the run directory itself.", "Leave output and resume out; use Resume.")
        library.verb_flags("train", values)  # bad settings fail here, before a process or a folder exists
        directory = library.new_run_dir(str(values.get("model") or library.verb_defaults("train")["model"]))
        flags, _ = library.verb_flags("train", {**values, "output": str(directory)})
        self._launch(directory, flags)
        return directory

    def resume(self, directory: Path, max_steps: int | None) -> None:
        if self.alive(directory):
            raise UserError(f"{directory.name} is still training.", "Stop it first, or watch it in the Train tab.")
        flags, _ = library.verb_flags("train", {"resume": str(directory), "max_steps": max_steps})
        self._launch(directory, flags)

    def alive(self, directory: Path) -> bool:
        child = self._children.get(directory)
        if child is not None and child.poll() is not None:
            del self._children[directory]
        return _training_process(directory) is not None

    def stop(self, directory: Path) -> None:
        """The Ctrl-C a user would press: the trainer checkpoints, saves the adapter and exits."""
        process = _training_process(directory)
        if process is None:
            raise UserError(f"{directory.name} is not training.", "Nothing to stop.")
        os.kill(process.pid, signal.CTRL_BREAK_EVENT if WINDOWS else signal.SIGINT)

    def active(self) -> list[str]:
        root = library.runs_root()
        found = root.glob(f"*/{PROCESS_FILE}") if root.is_dir() else []
        return sorted(run_name(record.parent) for record in found if self.alive(record.parent))

    def status(self, directory: Path) -> dict[str, Any]:
        card = library.run_card(directory) or {}
        alive = self.alive(directory)
        log = tail(directory / LOG_FILE)
        status = card.get("status", "starting" if alive else "not started")
        if status == "running" and not alive:
            status = STOPPED  # what `runs` and the Runs tab call a run whose trainer died without saying so
        return {"run": run_name(directory), "status": status, "alive": alive, "total_steps": card.get("total_steps"),
                "steps": card.get("steps"), "eval": (card.get("metrics") or {}), "log": log,
                "problem": error_lines(log) if not alive else None}

    async def events(self, directory: Path) -> AsyncIterator[str]:
        """metrics (new lines of metrics.jsonl) and status events until the training process has ended."""
        metrics = library.metrics_file(directory)
        offset, last = 0, None
        while True:
            alive_before = self.alive(directory)
            records, offset, restarted = read_new_lines(metrics, offset)
            if restarted:
                yield sse("reset", {})
            if records:
                yield sse("metrics", records)
            status = self.status(directory)
            if status != last:
                yield sse("status", status)
                last = status
            if not alive_before:
                yield sse("end", status)
                return
            await asyncio.sleep(POLL_SECONDS)


def routes(trainings: Trainings, jobs: Jobs) -> list[Route]:
    @endpoint
    async def start(request: Request) -> JSONResponse:
        directory = trainings.start(await read_form(request))
        return JSONResponse({"run": run_name(directory)})

    @endpoint
    async def stop(request: Request) -> JSONResponse:
        form = await read_form(request)
        trainings.stop(run_dir(str(form.get("run", ""))))
        return JSONResponse({"stopping": form["run"]})

    @endpoint
    async def resume(request: Request) -> JSONResponse:
        form = await read_form(request)
        directory = run_dir(str(form.get("run", "")))
        trainings.resume(directory, form.get("max_steps") or None)
        return JSONResponse({"run": run_name(directory)})

    @endpoint
    async def active(request: Request) -> JSONResponse:
        return JSONResponse({"runs": trainings.active()})

    @endpoint
    async def events(request: Request) -> Response:
        return event_stream(trainings.events(run_dir(request.query_params.get("run", ""))))

    @endpoint
    async def inspect(request: Request) -> JSONResponse:
        form = await read_form(request)
        source = str(form.pop("source", "") or "").strip()
        if not source:
            raise UserError("No data given.", "Pick a file, or type a `datasets` name such as rajpurkar/squad_v2, or demo.")
        job = jobs.start(f"data inspect {source}", "data inspect", {**form, "source": source, "json": True})
        return JSONResponse(job.state())

    return [
        Route("/api/train/start", start, methods=["POST"]),
        Route("/api/train/stop", stop, methods=["POST"]),
        Route("/api/train/resume", resume, methods=["POST"]),
        Route("/api/train/active", active),
        Route("/api/train/events", events),
        Route("/api/data/inspect", inspect, methods=["POST"]),
    ]
