"""Long actions (data inspect, eval, merge) as cancellable falcon-desktop processes.

Each job is the verb itself in a child process: the same code path as the command line, its `--json` output parsed
for the page, its "Error:"/"Hint:" lines shown as they are, and Cancel simply ends the process.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from falcon_desktop.ui.common import NotFound, endpoint
from falcon_desktop.ui.library import cli_command, verb_flags

LOG_TAIL_LINES = 20


def child_environment() -> dict[str, str]:
    """The UI's environment, with output unbuffered (the page shows it live) and UTF-8 on every platform."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", "COLUMNS": "120"}


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.replace("\r", "\n").splitlines() if line.strip()][-lines:]


def error_lines(log: list[str]) -> dict[str, str] | None:
    """The "Error:"/"Hint:" pair a falcon-desktop process printed before failing, if it printed one."""
    found = {}
    for line in log:
        for key in ("Error", "Hint"):
            if line.startswith(f"{key}:"):
                found[key.lower()] = line[len(key) + 1:].strip()
    return found or None


@dataclass
class Job:
    id: str
    title: str
    process: subprocess.Popen
    stdout: Path
    stderr: Path
    cancelled: bool = False

    def state(self) -> dict[str, Any]:
        code = self.process.poll()
        log = tail(self.stderr)
        state: dict[str, Any] = {"id": self.id, "title": self.title, "log": log}
        if code is None:
            return {**state, "state": "running"}
        if self.cancelled:
            return {**state, "state": "cancelled"}
        if code != 0:
            return {**state, "state": "failed", **(error_lines(log) or {"error": f"exit code {code}"})}
        try:
            result = json.loads(self.stdout.read_text(encoding="utf-8"))
        except ValueError:
            result = {"output": tail(self.stdout)}
        return {**state, "state": "done", "result": result}


class Jobs:
    """The jobs this UI session started, by id; their output lives in `work_dir`."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)

    def start(self, title: str, verb: str, values: dict[str, Any], positional: tuple[str, ...] = ()) -> Job:
        flags, _ = verb_flags(verb, values, positional)  # bad settings fail here, before a process starts
        job_id = str(next(self._ids))
        stdout, stderr = self.work_dir / f"job-{job_id}.out", self.work_dir / f"job-{job_id}.log"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(cli_command(verb, flags, positional), stdout=out, stderr=err,
                                       stdin=subprocess.DEVNULL, env=child_environment())
        job = Job(job_id, title, process, stdout, stderr)
        self._jobs[job_id] = job
        return job

    def get(self, job_id: str) -> Job:
        if job_id not in self._jobs:
            raise NotFound(f"No job {job_id!r} in this session.", "Start the action again.")
        return self._jobs[job_id]

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.process.poll() is None:
            job.cancelled = True
            job.process.terminate()
            job.process.wait(timeout=30)
        return job

    def cancel_all(self) -> None:
        for job_id in list(self._jobs):
            self.cancel(job_id)

    def routes(self) -> list[Route]:
        @endpoint
        async def show(request: Request) -> JSONResponse:
            return JSONResponse(self.get(request.path_params["job"]).state())

        @endpoint
        async def cancel(request: Request) -> JSONResponse:
            return JSONResponse(self.cancel(request.path_params["job"]).state())

        return [Route("/api/jobs/{job}", show), Route("/api/jobs/{job}/cancel", cancel, methods=["POST"])]
