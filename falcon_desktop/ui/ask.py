"""The Ask tab: one loaded model (the `ask` Answerer), adapters switched without reloading it, streamed answers.

Answers stream as server-sent events: `text` pieces as the decoder produces them, then `done` with the answer,
whether it is an abstention, time to first token and tokens/s. Cancel (or closing the page) ends the answer the way
Ctrl-C ends it in the terminal REPL.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from falcon_desktop.errors import UserError
from falcon_desktop.ui import library
from falcon_desktop.ui.common import endpoint, event_stream, read_form, run_dir, sse


class AskSession:
    """The model the Ask tab talks to; one answer at a time (the decoder's cache is one sequence)."""

    def __init__(self) -> None:
        self.answerer: Any = None
        self.busy = threading.Lock()
        self.cancel = threading.Event()

    def state(self) -> dict[str, Any]:
        return {"loaded": self.answerer is not None,
                **(library.answerer_state(self.answerer) if self.answerer is not None else {})}

    def load(self, form: dict[str, Any]) -> dict[str, Any]:
        with self._exclusive():
            self.answerer = None  # free the old model before loading the next
            self.answerer = library.load_answerer(form)
        return self.state()

    def switch(self, adapter: str | None) -> dict[str, Any]:
        with self._exclusive():
            library.switch_adapter(self._loaded(), adapter)
        return self.state()

    def ready(self) -> None:
        """Raise the UserError that an answer would meet (before a stream starts, so it comes back as a 400)."""
        self._loaded()
        if self.busy.locked():
            raise UserError("The model is busy with another answer or load.", "Wait for it, or press Cancel.")

    def _loaded(self) -> Any:
        if self.answerer is None:
            raise UserError("No model loaded.", "Pick a run (or a base model) and press Load.")
        return self.answerer

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        if not self.busy.acquire(blocking=False):
            raise UserError("The model is busy with another answer or load.", "Wait for it, or press Cancel.")
        try:
            yield
        finally:
            self.busy.release()

    async def answer(self, question: str, context: str | None) -> AsyncIterator[str]:
        answerer = self._loaded()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def on_text(piece: str) -> None:
            if self.cancel.is_set():
                raise KeyboardInterrupt  # what stream_answer treats as Ctrl-C: it stops and returns the text so far
            loop.call_soon_threadsafe(queue.put_nowait, ("text", piece))

        def work() -> None:
            try:
                with self._exclusive():
                    result = library.answer(answerer, question, context, on_text)
                loop.call_soon_threadsafe(queue.put_nowait, ("done", result))
            except Exception as error:  # noqa: BLE001 - reported on the page, as the CLI would print it
                known = library.user_error(error)
                message = {"error": known.message, "hint": known.hint} if known else {"error": repr(error), "hint": ""}
                loop.call_soon_threadsafe(queue.put_nowait, ("error", message))

        self.cancel.clear()
        loop.run_in_executor(None, work)
        try:
            while True:
                kind, payload = await queue.get()
                yield sse(kind, payload)
                if kind != "text":
                    return
        finally:
            self.cancel.set()  # the page went away mid-answer: the worker stops generating for nobody


def routes(session: AskSession) -> list[Route]:
    @endpoint
    async def state(request: Request) -> JSONResponse:
        return JSONResponse(session.state())

    @endpoint
    async def load(request: Request) -> JSONResponse:
        form = await read_form(request)
        if form.get("adapter"):
            form["adapter"] = str(run_dir(str(form["adapter"])))
        return JSONResponse(await run_in_threadpool(session.load, form))

    @endpoint
    async def adapter(request: Request) -> JSONResponse:
        form = await read_form(request)
        reference = str(run_dir(str(form["adapter"]))) if form.get("adapter") else None
        return JSONResponse(await run_in_threadpool(session.switch, reference))

    @endpoint
    async def answer(request: Request) -> Response:
        form = await read_form(request)
        question = str(form.get("question") or "").strip()
        if not question:
            raise UserError("The question is empty.", "Type a question about the passage.")
        session.ready()
        return event_stream(session.answer(question, str(form.get("context") or "").strip() or None))

    @endpoint
    async def cancel(request: Request) -> JSONResponse:
        session.cancel.set()
        return JSONResponse({"cancelled": True})

    return [
        Route("/api/ask/state", state),
        Route("/api/ask/load", load, methods=["POST"]),
        Route("/api/ask/adapter", adapter, methods=["POST"]),
        Route("/api/ask/answer", answer, methods=["POST"]),
        Route("/api/ask/cancel", cancel, methods=["POST"]),
    ]
