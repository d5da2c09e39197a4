"""Counting the calls of one of our autograd functions in a real forward (which path a module took)."""

from __future__ import annotations


def count_applies(monkeypatch, function: type) -> list[int]:
    """A list that gains an entry at each `function.apply` (a torch.autograd.Function), which still runs."""
    calls: list[int] = []
    original = function.apply
    monkeypatch.setattr(function, "apply", lambda *args: calls.append(1) or original(*args))
    return calls
