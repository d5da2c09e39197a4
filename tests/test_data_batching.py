"""Length-grouped steps, micro-batches under a token budget, padded tensors with exact label masks."""

from __future__ import annotations

import random

import pytest

from falcon_desktop.data import Example, collate, padding_efficiency, schedule_steps, split_micro_batches
from falcon_desktop.data.batching import CHUNK_STEPS


def squad_like_lengths(count: int, seed: int = 0) -> list[int]:
    """Lengths shaped like SQuAD prompts through Falcon's tokenizer (median ~190, long right tail, cap 512)."""
    rng = random.Random(seed)
    return [min(512, max(40, int(rng.lognormvariate(5.25, 0.35)))) for _ in range(count)]


def test_schedule_covers_every_example_once_in_full_steps_but_the_last() -> None:
    lengths = squad_like_lengths(1000)
    steps = schedule_steps(lengths, effective_batch_size=16, seed=3, epoch=0)
    assert sorted(index for step in steps for index in step) == list(range(1000))
    assert sorted(len(step) for step in steps) == [8] + [16] * 62  # 1000 = 62 x 16 + 8: the partial step is kept
    for step in steps:
        assert [lengths[i] for i in step] == sorted(lengths[i] for i in step)


def test_schedule_is_deterministic_in_seed_and_epoch() -> None:
    lengths = squad_like_lengths(500)
    steps = schedule_steps(lengths, 8, seed=1, epoch=0)
    assert schedule_steps(lengths, 8, seed=1, epoch=0) == steps
    assert schedule_steps(lengths, 8, seed=1, epoch=1) != steps
    assert schedule_steps(lengths, 8, seed=2, epoch=0) != steps
    assert schedule_steps([], 8, seed=1, epoch=0) == []
    with pytest.raises(ValueError):
        schedule_steps(lengths, 0, seed=1, epoch=0)


def test_steps_of_one_chunk_do_not_overlap_in_length() -> None:
    batch = 4
    lengths = squad_like_lengths(CHUNK_STEPS * batch)  # exactly one chunk: steps are slices of one sorted order
    steps = sorted(schedule_steps(lengths, batch, seed=0, epoch=0), key=lambda step: lengths[step[0]])
    for earlier, later in zip(steps, steps[1:]):
        assert lengths[earlier[-1]] <= lengths[later[0]]


def test_split_micro_batches_fills_the_budget_in_order() -> None:
    lengths = [10, 20, 30, 40, 100, 5]
    assert split_micro_batches([0, 1, 2, 3], lengths, token_budget=80) == [[0, 1], [2, 3]]
    assert split_micro_batches([0, 1, 2], lengths, token_budget=90) == [[0, 1, 2]]
    # 100 alone exceeds the budget but still gets its own micro-batch; order is kept, not re-sorted.
    assert split_micro_batches([5, 4, 0], lengths, token_budget=60) == [[5], [4], [0]]
    assert split_micro_batches([], lengths, token_budget=60) == []


def test_micro_batches_are_as_few_as_greedy_and_more_even() -> None:
    lengths = [100] * 64
    groups = split_micro_batches(range(64), lengths, token_budget=5300)  # greedy would give 53 + 11 rows
    assert [len(group) for group in groups] == [32, 32]
    # A row longer than the budget must not raise the cap for the rows before it.
    assert split_micro_batches([0, 1, 2], [40, 40, 100], token_budget=60) == [[0], [1], [2]]


def test_micro_batches_never_exceed_the_budget_on_random_steps() -> None:
    rng = random.Random(5)
    for _ in range(200):
        lengths = sorted(rng.randint(1, 120) for _ in range(rng.randint(1, 40)))
        budget = rng.randint(50, 600)
        groups = split_micro_batches(range(len(lengths)), lengths, budget)
        assert [i for group in groups for i in group] == list(range(len(lengths)))
        for group in groups:
            assert len(group) == 1 or len(group) * max(lengths[i] for i in group) <= budget


def test_padding_efficiency_counts_rows_times_longest() -> None:
    lengths = [10, 20, 30, 40]
    # budget 80: [10, 20] -> 2 x 20 = 40 computed, [30, 40] -> 2 x 40 = 80 computed; real = 100.
    assert padding_efficiency([[0, 1, 2, 3]], lengths, token_budget=80) == pytest.approx(100 / 120)
    assert padding_efficiency([[0], [1]], lengths, token_budget=80) == 1.0


@pytest.mark.parametrize("batch_size", [16, 32, 64])
def test_length_grouping_beats_95_percent_on_squad_like_lengths(batch_size: int) -> None:
    lengths = squad_like_lengths(6000)
    steps = schedule_steps(lengths, batch_size, seed=0, epoch=0)
    assert padding_efficiency(steps, lengths, token_budget=4 * 512) > 0.95
    shuffled = [list(range(i, min(i + batch_size, 6000))) for i in range(0, 6000, batch_size)]
    assert padding_efficiency(shuffled, lengths, token_budget=4 * 512) < 0.85  # what grouping saves


def test_collate_right_pads_and_masks_everything_but_answer_and_eos() -> None:
    import torch

    examples = [
        Example(input_ids=(5, 6, 7, 8, 2), prompt_len=3, record_id="a"),  # prompt 5 6 7, answer 8, EOS 2
        Example(input_ids=(9, 10, 2), prompt_len=1, record_id="b"),
    ]
    batch = collate(examples, pad_id=2)
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7, 8, 2], [9, 10, 2, 2, 2]]))
    assert torch.equal(batch["labels"], torch.tensor([[-100, -100, -100, 8, 2], [-100, 10, 2, -100, -100]]))
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    assert (batch["real_tokens"], batch["labelled_tokens"]) == (8, 4)


def test_collate_rounds_the_width_up_to_a_multiple_when_asked() -> None:
    examples = [Example(input_ids=tuple(range(3, 13)), prompt_len=4, record_id="a"),  # 10 tokens
                Example(input_ids=(9, 10, 2), prompt_len=1, record_id="b")]
    batch = collate(examples, pad_id=2, pad_multiple=8)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 16)
    assert batch["input_ids"][0, 10:].tolist() == [2] * 6 and batch["labels"][:, 10:].eq(-100).all()
    assert (batch["real_tokens"], batch["labelled_tokens"]) == (13, 8)  # padding counts for neither
    assert collate(examples[:1], pad_id=2, pad_multiple=5)["input_ids"].shape == (1, 10)  # already a multiple


def test_padded_micro_batches_stay_within_the_token_budget() -> None:
    """Rows are grouped by their padded lengths: grouped by raw ones, three 65-token rows fit a 195-token budget and
    then padded to 64 became 3 x 128 = 384 tokens, twice what the memory plan priced."""
    from falcon_desktop.data import step_micro_batches

    examples = [Example(input_ids=tuple(range(3, 68)), prompt_len=60, record_id=str(i)) for i in range(6)]
    lengths = [len(example.input_ids) for example in examples]
    for pad_multiple in (1, 8, 64):
        batches = step_micro_batches(examples, range(6), lengths, 195, pad_id=2, pad_multiple=pad_multiple)
        assert sum(len(batch["input_ids"]) for batch in batches) == 6
        assert all(batch["input_ids"].numel() <= 195 for batch in batches), pad_multiple
        assert all(batch["input_ids"].shape[1] % pad_multiple == 0 for batch in batches)
    assert len(step_micro_batches(examples, range(6), lengths, 195, pad_id=2, pad_multiple=64)) == 6  # 128 each
    assert len(step_micro_batches(examples, range(6), lengths, 195, pad_id=2)) == 2  # 3 x 65 each
