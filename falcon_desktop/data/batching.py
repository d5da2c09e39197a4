"""Length-grouped optimizer steps, their micro-batches, and the padded tensors the trainer feeds the model.

The trainer's attention is SDPA with `is_causal` (no mask tensor), which cannot keep packed examples apart, so
batches are grouped by length instead of packed: examples are shuffled, taken in chunks of `CHUNK_STEPS` steps,
sorted by length within each chunk and cut into steps, and the steps are shuffled. Every step then holds examples
of similar length, so right-padding wastes little, while which examples meet in a step still changes every epoch.
Right padding is safe without a mask: under a causal mask no real token attends to the padding after it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from falcon_desktop.data.tokens import Example

# Steps per sorted chunk: larger packs tighter, smaller mixes lengths across the epoch more.
CHUNK_STEPS = 64
IGNORE_INDEX = -100  # the label value that cross-entropy skips
Lengths = Sequence[int] | Mapping[int, int]  # token count by example index


def schedule_steps(lengths: Sequence[int], effective_batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Example indices for each optimizer step of one epoch; deterministic in (seed, epoch).

    Each step has `effective_batch_size` indices (the last may have fewer), sorted by length within the step.
    """
    if effective_batch_size < 1:
        raise ValueError(f"effective_batch_size must be at least 1, not {effective_batch_size}")
    rng = random.Random(f"falcon-desktop steps {seed} {epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk_size = CHUNK_STEPS * effective_batch_size
    steps = []
    for chunk_start in range(0, len(order), chunk_size):
        chunk = sorted(order[chunk_start : chunk_start + chunk_size], key=lengths.__getitem__)
        steps.extend(chunk[i : i + effective_batch_size] for i in range(0, len(chunk), effective_batch_size))
    rng.shuffle(steps)
    return steps


def _greedy_groups(indices: Sequence[int], lengths: Lengths, token_budget: int) -> list[list[int]]:
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in indices:
        grown = max(longest, lengths[index])
        if current and grown * (len(current) + 1) > token_budget:
            groups.append(current)
            current, grown = [], lengths[index]
        current.append(index)
        longest = grown
    if current:
        groups.append(current)
    return groups


def split_micro_batches(indices: Sequence[int], lengths: Lengths, token_budget: int) -> list[list[int]]:
    """Consecutive groups of `indices` whose rows x longest row fit `token_budget`; an over-long row goes alone.

    The groups are as few as the budget allows and as even as possible: each micro-batch pays a fixed cost (the
    4-bit weights are dequantized for every forward and backward, ~50 ms per pass for Falcon-7B on an H100), so a
    step split 53 + 11 rows wastes most of that cost on the small group; 32 + 32 does not.
    """
    groups = _greedy_groups(indices, lengths, token_budget)
    if len(groups) <= 1:
        return groups
    # The smallest cap that still needs no more groups; never above the budget, even when one row is longer.
    low, high = min(max(lengths[i] for i in indices), token_budget), token_budget
    while low < high:
        middle = (low + high) // 2
        if len(_greedy_groups(indices, lengths, middle)) <= len(groups):
            high = middle
        else:
            low = middle + 1
    return _greedy_groups(indices, lengths, low)


def step_micro_batches(examples: Sequence[Example], indices: Sequence[int], lengths: Sequence[int], token_budget: int,
                       pad_id: int, pad_multiple: int = 1) -> list[dict[str, Any]]:
    """The collated micro-batches of one optimizer step over `indices`, as the trainer feeds them, each length
    rounded up to `pad_multiple` (compiled layers: model.PAD_MULTIPLE; eager steps pad no further than their longest
    row). Rows are grouped by their padded lengths, so rows x padded length stays within the token budget the
    memory plan priced (padding to 64 after grouping reached 1.8x the budget)."""
    if pad_multiple > 1:
        lengths = {i: _round_up(lengths[i], pad_multiple) for i in indices}
    return [collate([examples[i] for i in group], pad_id, pad_multiple)
            for group in split_micro_batches(indices, lengths, token_budget)]


def padding_efficiency(steps: Sequence[Sequence[int]], lengths: Sequence[int], token_budget: int) -> float:
    """Real tokens / tokens computed (rows x longest row, summed over the micro-batches of every step)."""
    real = computed = 0
    for step in steps:
        for group in split_micro_batches(step, lengths, token_budget):
            group_lengths = [lengths[index] for index in group]
            real += sum(group_lengths)
            computed += len(group) * max(group_lengths)
    return real / computed if computed else 1.0


def _round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def collate(examples: Sequence[Example], pad_id: int, pad_multiple: int = 1) -> dict[str, Any]:
    """Right-padded `input_ids` and `labels` ([B, T] int64) for one micro-batch, T rounded up to `pad_multiple`.

    Labels are unshifted (the model shifts them) and are `IGNORE_INDEX` on the prompt and the padding, so the loss
    sees only the answer and its EOS. `real_tokens` counts the unpadded tokens, `labelled_tokens` the labelled
    ones (the step's loss is normalized by the labelled tokens of all its micro-batches).
    """
    import torch

    width = _round_up(max(len(example.input_ids) for example in examples), pad_multiple)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        ids = torch.tensor(example.input_ids, dtype=torch.long)
        input_ids[row, : len(ids)] = ids
        labels[row, example.prompt_len : len(ids)] = ids[example.prompt_len :]
    real_tokens = sum(len(example.input_ids) for example in examples)
    labelled_tokens = sum(len(example.input_ids) - example.prompt_len for example in examples)
    return {"input_ids": input_ids, "labels": labels, "real_tokens": real_tokens, "labelled_tokens": labelled_tokens}
