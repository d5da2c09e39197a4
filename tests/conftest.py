"""Shared fixtures: an isolated FALCON_DESKTOP_HOME, offline Hugging Face, and the tiny Falcon."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("falcon-home")
    monkeypatch.setenv("FALCON_DESKTOP_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Falcon and its tokenizer, built once per test session (mechanics only, never quality)."""
    from falcon_desktop.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-falcon"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared` beside the checkout (real SQuAD dev data, Falcon tokenizer); tests using it skip without it."""
    if not SHARED.is_dir():
        pytest.skip("../shared is absent (it holds the real SQuAD dev half and the Falcon tokenizer)")
    return SHARED


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


gpu_test = pytest.mark.skipif(
    not cuda_available() or os.environ.get("FALCON_DESKTOP_SKIP_GPU") == "1", reason="needs a CUDA GPU"
)
