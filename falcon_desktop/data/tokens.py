"""Records to token ids under the one tokenization rule shared by train and ask, with long contexts windowed.

    input_ids = tok(prompt).input_ids + tok(answer, add_special_tokens=False).input_ids + [eos_id]

`tok(prompt)` keeps the tokenizer's default special tokens (Llama adds BOS, Falcon none); labels are the ids from
`prompt_len` on (answer + EOS), everything before is masked. A context too long for `max_seq_len` is cut to a
window of whole words around the answer (the start of the context for an unanswerable question, the end of the
conversation for a chat turn); what still cannot fit is counted and dropped.

Speed: most SQuAD questions share their paragraph, so the prompt is encoded as two pieces - the part up to the
question, once per paragraph, and the question part - and joined. That equals encoding the whole prompt whenever
the tokenizer's pre-tokenizer splits at the newline before the question, as byte-level BPE (Falcon, Llama-3, Qwen)
does; a check of a sample against whole-prompt encoding falls back to encoding every prompt whole otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from falcon_desktop.data.records import QARecord
from falcon_desktop.errors import UserError
from falcon_desktop.prompts import QAPrompt

# A question that no real prompt contains, to find where the question starts in the rendered template.
_QUESTION_MARK = "\ue000"
# Prompts encoded whole to check the two-piece encoding against.
_SELF_CHECK_SAMPLE = 64
# Texts per call to the Rust tokenizer: enough to keep every core busy.
_ENCODE_CHUNK = 4096
# Windowing re-encodes the cut prompt to check it fits; this many tries, shrinking by the excess each time.
_WINDOW_ATTEMPTS = 4


@dataclass(frozen=True)
class Example:
    input_ids: tuple[int, ...]
    prompt_len: int  # labels = input_ids[prompt_len:] (answer + EOS); positions before are masked
    record_id: str


@dataclass
class TokenizeReport:
    examples: list[Example]
    dropped_too_long: int  # did not fit max_seq_len even with the context windowed
    windowed: int  # kept, with the context cut to a window
    from_cache: bool = False

    @property
    def lengths(self) -> list[int]:
        return [len(example.input_ids) for example in self.examples]


def configure_tokenizer(tokenizer: Any) -> Any:
    """Padding for training: pad = EOS where the tokenizer has no pad token (Falcon, Llama), on the right.

    Padding never reaches the loss (`collate` masks it), so reusing EOS is safe. Batched generation pads on the
    left instead; `ask` sets that itself.
    """
    _eos_id(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError(
            f"The tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no end-of-sequence token.",
            "Use the tokenizer that belongs to the model; answers must end with EOS for generation to stop.",
        )
    return tokenizer.eos_token_id


def tokenize_records(records: Sequence[QARecord], tokenizer: Any, max_seq_len: int, use_cache: bool = True) -> TokenizeReport:
    """Examples for every record that fits `max_seq_len`, in record order; cached on disk by content."""
    from falcon_desktop.data import cache

    key = cache.key(records, tokenizer, max_seq_len) if use_cache else None
    if key is not None:
        cached = cache.read(key)
        if cached is not None:
            return cached
    report = _tokenize(records, tokenizer, max_seq_len)
    if key is not None:
        cache.write(key, report)
    return report


def _tokenize(records: Sequence[QARecord], tokenizer: Any, max_seq_len: int) -> TokenizeReport:
    eos_id = _eos_id(tokenizer)
    prompt_ids = encode_prompts(records, tokenizer)
    targets = sorted({record.target() for record in records})
    target_ids = dict(zip(targets, _encode(tokenizer, targets, add_special_tokens=False)))
    overflow = {}
    for index, record in enumerate(records):
        excess = len(prompt_ids[index]) + len(target_ids[record.target()]) + 1 - max_seq_len
        if excess > 0:
            overflow[index] = excess
    windowed = _window(records, overflow, target_ids, tokenizer, max_seq_len)
    for index, ids in windowed.items():
        prompt_ids[index] = ids
    # Questions of one paragraph share the int objects of its encoding, so these tuples cost ~8 bytes a token;
    # each prompt list is released as its tuple is made, so the two never both exist in full.
    examples = []
    dropped = set(overflow) - set(windowed)
    eos = [eos_id]
    for index, record in enumerate(records):
        prompt, prompt_ids[index] = prompt_ids[index], None
        if index not in dropped:
            examples.append(Example(tuple(prompt + target_ids[record.target()] + eos), len(prompt), record.id))
    return TokenizeReport(examples, dropped_too_long=len(dropped), windowed=len(windowed))


def _encode(tokenizer: Any, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
    """`tokenizer(texts).input_ids`, through the Rust backend directly where there is one (the wrapper's
    per-text conversion costs more than the tokenization of a short question)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # in chunks: an Encoding also holds token strings and offsets, freed chunk by chunk
        return [
            encoding.ids
            for start in range(0, len(texts), _ENCODE_CHUNK)
            for encoding in backend.encode_batch(texts[start : start + _ENCODE_CHUNK], add_special_tokens=add_special_tokens)
        ]
    return tokenizer(texts, add_special_tokens=add_special_tokens, return_attention_mask=False)["input_ids"]


def _encode_whole(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """The reference: exactly `tokenizer(text).input_ids`, as `ask` encodes a prompt."""
    return tokenizer(texts, return_attention_mask=False)["input_ids"] if texts else []


def encode_prompts(records: Sequence[QARecord], tokenizer: Any) -> list[list[int]]:
    """`tok(record.prompt()).input_ids` for every record (see the module docstring for how)."""
    heads: dict[str, str] = {}
    tails = []
    for record in records:
        head = heads.get(record.context)
        if head is None:
            head = QAPrompt(question=_QUESTION_MARK, context=record.context).render().split(_QUESTION_MARK)[0]
            heads[record.context] = head
        prompt = record.prompt()
        if not prompt.startswith(head):  # a template that does not end with the question
            return _encode_whole(tokenizer, [record.prompt() for record in records])
        tails.append(prompt[len(head) :])
    head_ids = dict(zip(heads, _encode(tokenizer, list(heads.values()))))
    ids = [head_ids[record.context] + tail for record, tail in zip(records, _encode(tokenizer, tails, False))]
    sample = range(0, len(records), max(1, len(records) // _SELF_CHECK_SAMPLE))
    whole = _encode_whole(tokenizer, [records[index].prompt() for index in sample])
    if whole != [ids[index] for index in sample]:
        return _encode_whole(tokenizer, [record.prompt() for record in records])
    return ids


def _window(
    records: Sequence[QARecord], overflow: dict[int, int], target_ids: dict[str, list[int]], tokenizer: Any, max_seq_len: int
) -> dict[int, list[int]]:
    """Prompt ids with the context cut to fit, for the records (index -> tokens too many) that can be made to fit."""
    fitted: dict[int, list[int]] = {}
    with_context = [index for index in overflow if records[index].context.strip()]
    if not with_context or not getattr(tokenizer, "is_fast", False):  # windows need the fast tokenizers' offsets
        return fitted
    contexts = list(dict.fromkeys(records[index].context for index in with_context))
    offsets = dict(zip(contexts, tokenizer(contexts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]))
    context_offsets = {index: offsets[records[index].context] for index in with_context}
    keep = {index: len(context_offsets[index]) - overflow[index] for index in with_context}  # context tokens to keep
    for _ in range(_WINDOW_ATTEMPTS):
        candidates = {}
        for index, tokens in keep.items():
            cut = cut_context(records[index], context_offsets[index], tokens)
            if cut is not None:
                candidates[index] = cut
        retry = {}
        for (index, record), ids in zip(candidates.items(), _encode_whole(tokenizer, [c.prompt() for c in candidates.values()])):
            excess = len(ids) + len(target_ids[record.target()]) + 1 - max_seq_len
            if excess <= 0:
                fitted[index] = ids
            else:  # the cut re-tokenized a little longer at its edges
                retry[index] = keep[index] - excess
        keep = retry
        if not keep:
            break
    return fitted


def cut_context(record: QARecord, offsets: Sequence[tuple[int, int]], keep_tokens: int) -> QARecord | None:
    """`record` with its context cut to about `keep_tokens` tokens of whole words that contain the answer.

    `offsets` are the (start, end) characters of each context token. None when the answer alone needs more.
    """
    count = len(offsets)
    keep_tokens = min(keep_tokens, count - 1)
    if keep_tokens <= 0:
        return None
    context = record.context
    if record.answer_start is not None:
        answer_from, answer_to = record.answer_start, record.answer_start + len(record.answers[0])
        first = next(i for i, (_, end) in enumerate(offsets) if end > answer_from)
        last = max(i for i, (start, _) in enumerate(offsets) if start < answer_to)
        span = last - first + 1
        if span > keep_tokens:
            return None
        left = max(0, first - (keep_tokens - span) // 2)
    elif record.is_impossible:
        left = 0
        answer_from, answer_to = len(context), 0
    else:  # a chat turn: the most recent history matters most
        left = count - keep_tokens
        answer_from, answer_to = len(context), 0
    right = min(count, left + keep_tokens)
    left = max(0, right - keep_tokens)
    start, end = _whole_words(context, offsets[left][0], offsets[right - 1][1], answer_from, answer_to)
    answer_start = None if record.answer_start is None else record.answer_start - start
    return dataclasses.replace(record, context=context[start:end], answer_start=answer_start)


def _whole_words(text: str, start: int, end: int, keep_from: int, keep_to: int) -> tuple[int, int]:
    """[start, end) shrunk to word boundaries, never cutting into text[keep_from:keep_to]."""
    inner_start = start
    while 0 < inner_start < min(keep_from, end) and not text[inner_start - 1].isspace():
        inner_start += 1
    inner_end = end
    while max(keep_to, inner_start) < inner_end < len(text) and not text[inner_end].isspace():
        inner_end -= 1
    if inner_start > 0 and not text[inner_start - 1].isspace():
        inner_start = start  # no word boundary before the answer: keep the token boundary
    if inner_end < len(text) and not text[inner_end].isspace():
        inner_end = end
    return (inner_start, inner_end) if inner_start < inner_end else (start, end)
