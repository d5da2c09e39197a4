"""Where falcon-desktop keeps its files: runs and caches.

The root is `FALCON_DESKTOP_HOME` when set, else the platform's user data directory (platformdirs: e.g.
`%LOCALAPPDATA%\\falcon-desktop` on Windows, `~/.local/share/falcon-desktop` on Linux). Hugging Face keeps its own
cache (`HF_HOME`, `HF_HUB_CACHE`); we never move it, only report it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

APP_NAME = "falcon-desktop"


def home() -> Path:
    """The root directory for everything falcon-desktop writes."""
    override = os.environ.get("FALCON_DESKTOP_HOME")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP_NAME, appauthor=False))


def runs_dir() -> Path:
    """Training runs, one directory each."""
    return home() / "runs"


def new_run_dir(model: str) -> Path:
    """A fresh run directory for `model` under runs_dir(), named after the model and the time."""
    name = Path(model.rstrip("/\\")).name or "model"
    return runs_dir() / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (the cache and runs folders, an install prefix, appear on first
    use), for asking about free space and write permission before anything is created."""
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def cache_dir() -> Path:
    """Processed datasets and other derived files that can be rebuilt."""
    return home() / "cache"


def hf_cache_dir() -> Path:
    """Hugging Face's hub cache, as huggingface_hub resolves it."""
    explicit = os.environ.get("HF_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    hf_home = os.environ.get("HF_HOME")
    base = Path(hf_home).expanduser() if hf_home else Path.home() / ".cache" / "huggingface"
    return base / "hub"


def hf_offline() -> bool:
    """True when the user asked Hugging Face libraries never to touch the network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """`values` set in `os.environ` for the duration; what was there before, or its absence, comes back after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
