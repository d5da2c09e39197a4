"""The file picker: folder listings under the roots the user chose, nothing else.

It lists names, sizes and kinds only; no endpoint serves a file's contents. A path picked here (or typed by the user)
is handed to the library exactly as the same path on the command line would be.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from falcon_desktop.ui.common import NotFound, endpoint


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def listing(path: str, roots: tuple[Path, ...]) -> dict:
    """The entries of folder `path` (a root or below one); with no path, the roots themselves."""
    if not path:
        return {"path": None, "parent": None, "entries": [{"name": str(root), "path": str(root), "dir": True}
                                                          for root in roots]}
    folder = Path(path).expanduser().resolve()
    if not _inside(folder, roots) or not folder.is_dir():
        raise NotFound(f"{path} is not a folder the UI may list.",
                       "Browse from one of the listed folders, type the path, or start the UI with --root FOLDER.")
    entries = []
    for child in sorted(folder.iterdir(), key=lambda item: (not item.is_dir(), item.name.lower())):
        if child.name.startswith("."):
            continue
        try:
            is_dir = child.is_dir()
            entries.append({"name": child.name, "path": str(child), "dir": is_dir,
                            "size": None if is_dir else child.stat().st_size})
        except OSError:  # a broken link, a file without permission: not pickable
            continue
    parent = folder.parent if folder not in roots and _inside(folder.parent, roots) else None
    return {"path": str(folder), "parent": str(parent) if parent else "", "entries": entries}


def routes(roots: tuple[Path, ...]) -> list[Route]:
    resolved = tuple(root.expanduser().resolve() for root in roots)

    @endpoint
    async def files(request: Request) -> JSONResponse:
        return JSONResponse(listing(request.query_params.get("path", ""), resolved))

    return [Route("/api/files", files)]
