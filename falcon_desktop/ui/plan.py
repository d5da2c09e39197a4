"""The Plan tab: the planner's answer for the settings on the page, recomputed as they change (it is instant)."""

from __future__ import annotations

import threading
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from falcon_desktop.ui import library
from falcon_desktop.ui.common import endpoint, read_form


class DetectedGpu:
    """The GPU this machine has, probed once (NVML runs in a child process: too slow for every keystroke)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._probed = False
        self._gpu: Any = None

    def __call__(self) -> Any:
        with self._lock:
            if not self._probed:
                self._gpu, self._probed = library.detected_gpu(), True
            return self._gpu


def routes() -> list[Route]:
    detected = DetectedGpu()

    @endpoint
    async def choices(request: Request) -> JSONResponse:
        gpu = await run_in_threadpool(detected)
        return JSONResponse({**library.plan_choices(), "detected_gpu": gpu.name if gpu else None})

    @endpoint
    async def plan(request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(library.make_plan, await read_form(request), detected))

    return [Route("/api/plan/choices", choices), Route("/api/plan", plan, methods=["POST"])]
