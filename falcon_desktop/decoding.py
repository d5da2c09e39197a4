"""How answers are decoded: greedy or sampling, and how long they may run.

Kept apart from `generate.py` (which imports torch) so that the CLI can show these defaults in `--help` instantly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

from falcon_desktop.errors import UserError


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64           # SQuAD answers are a few words; the cap only bounds a rambling model
    sampling: bool = False             # greedy (reproducible, what eval uses) or sampling with the knobs below
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.0    # 1.0 = off; >1 discourages repeats (applies to greedy too)
    seed: int | None = None            # fixes the sampling RNG
    single_line: bool = False          # stop at the end of the first non-empty line (an extractive answer is one)

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if self.temperature <= 0:
            problems.append(f"temperature must be above 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            problems.append(f"top_k must be 0 (off) or more (got {self.top_k})")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be above 0 (got {self.repetition_penalty})")
        if problems:
            raise UserError("Invalid generation settings: " + "; ".join(problems) + ".", "See `/settings` or --help.")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in fields(cls))


# Scoring SQuAD: a span is a few words on one line, so a model that keeps talking (an untrained base) is cut at its
# first line end and 32 tokens instead of running every batch to 64 (issue #15: evaluation was slow on such a model).
EXTRACTIVE = GenerationSettings(max_new_tokens=32, single_line=True)
EXTRACTIVE_BATCH_SIZE = 32  # questions generated together when scoring: short answers leave room for more rows


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "on", "yes", "sample", "sampling"):
        return True
    if lowered in ("0", "false", "off", "no", "greedy"):
        return False
    raise ValueError(f"{text!r} is not on/off")


def _parse_optional_int(text: str) -> int | None:
    return None if text.strip().lower() in ("none", "off", "") else int(text)


_SETTING_TYPES: dict[str, Callable[[str], object]] = {
    "max_new_tokens": int, "sampling": _parse_bool, "temperature": float, "top_p": float, "top_k": int,
    "repetition_penalty": float, "seed": _parse_optional_int, "single_line": _parse_bool,
}


def update_settings(settings: GenerationSettings, assignments: list[str]) -> GenerationSettings:
    """`settings` with each `key=value` applied; UserError naming the bad one."""
    changes = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in _SETTING_TYPES:
            raise UserError(f"Unknown setting {assignment!r}.", f"Use key=value with a key among: {', '.join(_SETTING_TYPES)}.")
        try:
            changes[key] = _SETTING_TYPES[key](value)
        except ValueError:
            raise UserError(f"Bad value for {key}: {value!r}.", f"Current value: {getattr(settings, key)!r}.") from None
    return replace(settings, **changes)
