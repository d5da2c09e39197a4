"""What every tab's endpoints share: JSON in and out, errors as Error/Hint, server-sent events, run names."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from falcon_desktop.atomic import parse_json_lines
from falcon_desktop.errors import UserError
from falcon_desktop.ui import library

Handler = Callable[[Request], Awaitable[Response]]


def endpoint(handler: Handler) -> Handler:
    """A handler whose UserErrors (and known library errors) become a 400 {"error", "hint"}, as the CLI prints them."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as error:  # noqa: BLE001 - one place turns every known failure into a message
            known = library.user_error(error)
            if known is None:
                raise
            return JSONResponse({"error": known.message, "hint": known.hint}, status_code=getattr(known, "status", 400))

    return wrapped


class NotFound(UserError):
    status = 404


async def read_form(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise UserError("The request body must be a JSON object.", "This is a bug in the page: reload it.")
    return body


def sse(event: str, data: Any) -> str:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def run_dir(name: str) -> Path:
    """The run called `name` (its path below the runs folder); never a path outside that folder."""
    root = library.runs_root().resolve()
    path = (root / name).resolve()
    if not name or not path.is_relative_to(root) or path == root or not path.is_dir():
        raise NotFound(f"No run named {name!r} under {root}.", "Pick one from the Runs tab.")
    return path


def run_name(path: Path) -> str:
    return path.resolve().relative_to(library.runs_root().resolve()).as_posix()


def read_new_lines(path: Path, offset: int) -> tuple[list[dict], int, bool]:
    """Complete JSON lines of `path` after byte `offset`; a shorter file (a resume rewrote it) restarts at 0."""
    try:
        size = path.stat().st_size
    except OSError:
        return [], 0, False
    restarted = size < offset
    with path.open("rb") as handle:
        handle.seek(0 if restarted else offset)
        chunk = handle.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]
    return parse_json_lines(complete), (0 if restarted else offset) + len(complete), restarted
