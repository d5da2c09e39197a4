"""How long a data source's examples are under a tokenizer, and how densely the trainer would batch them.

What `data inspect --model` reports: the length distribution after windowing, how many examples were cut or
dropped, the steps of one epoch and the padding efficiency of their micro-batches, and the data fingerprint the
run card records. The numbers come from the same functions the trainer uses, so they are what training will see.
"""

from __future__ import annotations

import math
from typing import Any

from falcon_desktop.data.batching import padding_efficiency, schedule_steps
from falcon_desktop.data.cache import fingerprint
from falcon_desktop.data.records import QARecord
from falcon_desktop.data.tokens import tokenize_records
from falcon_desktop.train_config import BatchSettings


def measure_batches(records: list[QARecord], tokenizer: Any, settings: BatchSettings) -> dict[str, Any]:
    """Token lengths, windowing, steps per epoch and padding efficiency of `records` under `settings`."""
    tokenized = tokenize_records(records, tokenizer, settings.max_seq_len)
    lengths = tokenized.lengths
    steps = schedule_steps(lengths, settings.effective_batch_size, settings.seed, epoch=0)
    return {
        "max_seq_len": settings.max_seq_len,
        "examples": len(tokenized.examples),
        "windowed": tokenized.windowed,
        "dropped_too_long": tokenized.dropped_too_long,
        "tokens": token_statistics(lengths),
        "label_tokens": sum(len(e.input_ids) - e.prompt_len for e in tokenized.examples),
        "effective_batch_size": settings.effective_batch_size,
        "token_budget": settings.token_budget,
        "steps_per_epoch": len(steps),
        "padding_efficiency": round(padding_efficiency(steps, lengths, settings.token_budget), 4),
        "fingerprint": fingerprint(tokenized.examples),
    }


def token_statistics(lengths: list[int]) -> dict[str, float]:
    """Mean, median, p90, p99 (nearest rank) and max of the example lengths; zeros when there are none."""
    ordered = sorted(lengths)
    if not ordered:
        return {"mean": 0, "median": 0, "p90": 0, "p99": 0, "max": 0, "total": 0}

    def rank(fraction: float) -> int:
        return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]

    return {
        "mean": round(sum(ordered) / len(ordered), 1),
        "median": rank(0.5),
        "p90": rank(0.9),
        "p99": rank(0.99),
        "max": ordered[-1],
        "total": sum(ordered),
    }
