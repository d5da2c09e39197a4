"""The Runs tab: every run with its card and loss curve, held-out scores before/after, and eval / merge jobs."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from falcon_desktop.errors import UserError
from falcon_desktop.ui import library
from falcon_desktop.ui.common import endpoint, read_form, read_new_lines, run_dir
from falcon_desktop.ui.jobs import Jobs

CURVE_FIELDS = ("step", "loss", "tokens_per_second", "vram_peak_bytes")


def routes(jobs: Jobs) -> list[Route]:
    @endpoint
    async def listing(request: Request) -> JSONResponse:
        return JSONResponse({"root": str(library.runs_root()), "runs": library.list_runs()})

    @endpoint
    async def detail(request: Request) -> JSONResponse:
        directory = run_dir(request.query_params.get("run", ""))
        history, _, _ = read_new_lines(library.metrics_file(directory), 0)
        curve = [{key: record.get(key) for key in CURVE_FIELDS} for record in history]
        return JSONResponse({"run": request.query_params["run"], "card": library.run_card(directory), "curve": curve})

    async def run_job(request: Request, verb: str, needs: str, problem: UserError, **flags: object) -> JSONResponse:
        """`verb --adapter RUN ...` as a job; the form must give `needs`."""
        form = await read_form(request)
        directory = run_dir(str(form.pop("run", "")))
        if not form.get(needs):
            raise problem
        return JSONResponse(jobs.start(f"{verb} {directory.name}", verb, {**form, "adapter": str(directory), **flags}).state())

    @endpoint
    async def evaluate(request: Request) -> JSONResponse:
        return await run_job(request, "eval", "data", UserError(
            "Evaluation needs SQuAD data with gold answers.", "Pick a SQuAD .json file (e.g. dev-v2.0.json)."), json=True)

    @endpoint
    async def merge(request: Request) -> JSONResponse:
        return await run_job(request, "merge", "output", UserError(
            "Merging needs a folder for the merged model.", "Type the folder to write it to."))

    return [
        Route("/api/runs", listing),
        Route("/api/runs/detail", detail),
        Route("/api/runs/eval", evaluate, methods=["POST"]),
        Route("/api/runs/merge", merge, methods=["POST"]),
    ]
