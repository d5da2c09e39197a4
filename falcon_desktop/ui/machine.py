"""The Machine tab: the doctor's checks, each with its fix, and the verdict."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from falcon_desktop.ui import library
from falcon_desktop.ui.common import endpoint


def routes() -> list[Route]:
    @endpoint
    async def doctor(request: Request) -> JSONResponse:
        # Seconds of work (it imports torch and tries a 4-bit round trip): off the event loop.
        return JSONResponse(await run_in_threadpool(library.doctor_report))

    return [Route("/api/doctor", doctor)]
