"""The local web app: a Starlette application over the tabs' endpoints, and the uvicorn server that runs it.

One module per tab (`machine`, `plan`, `train`, `runs`, `ask`), each returning its routes; `files` is the picker and
`jobs` the cancellable long actions. Everything the page needs is in `static/` (no CDN: it works offline).
"""

from __future__ import annotations

import contextlib
import mimetypes
import socket
import tempfile
import webbrowser
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from falcon_desktop import __version__
from falcon_desktop.ui import ask, files, machine, plan, runs, train
from falcon_desktop.ui.jobs import Jobs
from falcon_desktop.ui.security import LocalSessionGuard, new_token

LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class UiSettings:
    host: str = LOCALHOST
    port: int = 0                                   # 0: any free port
    roots: tuple[Path, ...] = ()                    # folders the file picker may list
    token: str = field(default_factory=new_token)   # in the URL the UI opens; required on every request
    open_browser: bool = True


def static_dir() -> Path:
    return Path(str(resources.files("falcon_desktop") / "ui" / "static"))


def create_app(settings: UiSettings, work_dir: Path) -> Starlette:
    """The application; `work_dir` holds the session's job output (a temporary folder)."""
    # Windows takes MIME types from the registry, where .js is sometimes text/plain: browsers then refuse modules.
    mimetypes.add_type("text/javascript", ".js")
    mimetypes.add_type("text/css", ".css")
    jobs, trainings, session = Jobs(work_dir), train.Trainings(), ask.AskSession()

    async def index(request: Request) -> FileResponse:
        return FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-store"})

    async def about(request: Request) -> JSONResponse:
        return JSONResponse({"version": __version__, "roots": [str(root) for root in settings.roots]})

    routes = [
        Route("/", index),
        Route("/api/about", about),
        *machine.routes(),
        *plan.routes(),
        *train.routes(trainings, jobs),
        *runs.routes(jobs),
        *ask.routes(session),
        *files.routes(settings.roots),
        *jobs.routes(),
        Mount("/static", StaticFiles(directory=static_dir()), name="static"),
    ]
    extra_hosts = () if settings.host in (LOCALHOST, "0.0.0.0", "::") else (settings.host,)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        jobs.cancel_all()  # inspect/eval/merge die with the UI; training runs do not

    guard = Middleware(LocalSessionGuard, token=settings.token, extra_hosts=extra_hosts)
    return Starlette(routes=routes, middleware=[guard], lifespan=lifespan)


def bind(settings: UiSettings) -> socket.socket:
    """A listening socket, made here so that port 0 becomes a known free port before the URL is printed."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, settings: UiSettings) -> str:
    host = LOCALHOST if settings.host in (LOCALHOST, "0.0.0.0") else settings.host
    return f"http://{host}:{sock.getsockname()[1]}/?token={settings.token}"


def serve(settings: UiSettings, on_ready: Callable[[str], None] = print) -> None:
    """Run the UI until Ctrl-C; training processes it started keep running."""
    import uvicorn

    sock = bind(settings)
    url = url_of(sock, settings)
    with tempfile.TemporaryDirectory(prefix="falcon-desktop-ui-") as work_dir:
        app = create_app(settings, Path(work_dir))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        on_ready(url)
        if settings.open_browser:
            webbrowser.open(url)
        server.run(sockets=[sock])
