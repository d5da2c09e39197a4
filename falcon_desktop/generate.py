"""Answer generation for `ask`, `eval` and the trainer's evaluation: one place, so a faster engine can replace it.

Prompts are encoded exactly as training encodes the prompt part (`tokenizer(prompt).input_ids`, the tokenizer's
default special tokens). Batches are left-padded so every row's answer starts at the same position. Generation stops
at EOS, or where the text reaches one of `prompts.STOP_STRINGS` (a model that has not learned EOS yet goes on to
write a fake next "###" block), or at `max_new_tokens`. Streaming runs in the calling thread, so a Ctrl-C
(KeyboardInterrupt) lands between two decoding steps and ends only that answer.

One answer at a time (the REPL, `--question`) goes through `fast_decode.StreamingDecoder` (static KV cache, CUDA
graphs); batches go through transformers' `generate`, where throughput rather than latency counts.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria

from falcon_desktop.data.records import QARecord
from falcon_desktop.decoding import EXTRACTIVE, EXTRACTIVE_BATCH_SIZE, GenerationSettings
from falcon_desktop.errors import UserError
from falcon_desktop.fast_decode import StreamingDecoder, input_device
from falcon_desktop.prompts import STOP_STRINGS, QAPrompt, clean_generation

# Tokens re-decoded at each step to look for a stop string: "\n###" is at most a few tokens, even byte by byte.
_STOP_WINDOW = 16


@dataclass(frozen=True)
class GenerationResult:
    text: str                    # the cleaned answer (cut at a stop string, trimmed)
    new_tokens: int              # tokens generated, EOS included
    first_token_seconds: float   # from the call to the first new token: prompt processing + one step
    total_seconds: float
    stop_reason: str             # "eos" | "stop_string" | "max_new_tokens" | "interrupted"

    @property
    def tokens_per_second(self) -> float | None:
        """Decoding speed after the first token (the first one is mostly prompt processing)."""
        decode_seconds = self.total_seconds - self.first_token_seconds
        if self.new_tokens < 2 or decode_seconds <= 0:
            return None
        return (self.new_tokens - 1) / decode_seconds


def encode_prompt(tokenizer: Any, question: str, context: str | None, max_prompt_tokens: int | None = None) -> list[int]:
    """The prompt's token ids; a context too long for `max_prompt_tokens` is shortened from its end."""
    ids = tokenizer(QAPrompt(question, context).render()).input_ids
    if max_prompt_tokens is None or len(ids) <= max_prompt_tokens or not context:
        return ids
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    for _ in range(4):  # re-tokenising the cut text can merge differently; a few rounds suffice in practice
        keep = len(context_ids) - (len(ids) - max_prompt_tokens)
        if keep <= 0:
            break
        context_ids = context_ids[:keep]
        ids = tokenizer(QAPrompt(question, tokenizer.decode(context_ids)).render()).input_ids
        if len(ids) <= max_prompt_tokens:
            return ids
    return tokenizer(QAPrompt(question, None).render()).input_ids[-max_prompt_tokens:]


def _cut_at_stop(text: str) -> tuple[str, bool]:
    positions = [text.find(stop) for stop in STOP_STRINGS if stop in text]
    return (text[: min(positions)], True) if positions else (text, False)


def _safe_to_show(text: str) -> str:
    """`text` without a tail that may still grow into a stop string."""
    for length in range(min(len(text), max(map(len, STOP_STRINGS)) - 1), 0, -1):
        if any(stop.startswith(text[-length:]) for stop in STOP_STRINGS):
            return text[:-length]
    return text


class _StopStrings(StoppingCriteria):
    """Stopping criterion: True for each row whose recent text contains a stop string."""

    def __init__(self, tokenizer: Any, prompt_length: int, single_line: bool = False) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.single_line = single_line

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        recent = input_ids[:, self.prompt_length :][:, -_STOP_WINDOW:]
        texts = self.tokenizer.batch_decode(recent, skip_special_tokens=True)
        return torch.tensor([_cut_at_stop(text)[1] or (self.single_line and "\n" in text.lstrip()) for text in texts],
                            dtype=torch.bool, device=input_ids.device)


class _AnswerText:
    """Receives the answer's tokens one by one and passes on the newly visible text; says when to stop.

    Decoding is incremental (the offsets scheme of text-generation-inference): only the tokens since the last
    complete piece are decoded, together with one token before them so that a SentencePiece word keeps its leading
    space, which keeps a long answer linear rather than quadratic.
    """

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.token_ids: list[int] = []
        self.first_token_at: float | None = None
        self._text = ""          # everything decoded so far
        self._shown = ""         # what `on_text` has received
        self._prefix_offset = 0  # decoding restarts here: the token before the undecoded ones
        self._read_offset = 0    # tokens before this are in `_text`

    def add(self, token_id: int) -> bool:
        """Take one new token; True when the answer is over (EOS, or a stop string reached)."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.token_ids.append(token_id)
        if token_id == self.tokenizer.eos_token_id:
            return True
        self._decode_new_tokens()
        self._emit(final=False)
        return _cut_at_stop(self._text)[1]  # unstripped: an answer that opens with a stop string stops too

    def end(self) -> None:
        self._emit(final=True)

    def _decode_new_tokens(self) -> None:
        decode = self.tokenizer.decode
        known = decode(self.token_ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        extended = decode(self.token_ids[self._prefix_offset :], skip_special_tokens=True)
        if len(extended) > len(known) and not extended.endswith("\ufffd"):
            self._text += extended[len(known) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self.token_ids)

    def _emit(self, final: bool) -> None:
        text, _ = _cut_at_stop(self._text.lstrip())
        text = text.rstrip() if final else _safe_to_show(text)
        if len(text) > len(self._shown) and text.startswith(self._shown):
            self.on_text(text[len(self._shown) :])
            self._shown = text


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise UserError("The tokenizer has neither a pad nor an EOS token.", "Use the tokenizer saved with the model.")
    return int(pad)


@contextlib.contextmanager
def _inference(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off and no autograd while generating; the model's training mode comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _answer_budget(model: torch.nn.Module, prompt_length: int, settings: GenerationSettings) -> int:
    """New tokens allowed after a prompt: `max_new_tokens`, or fewer where the model's positions run out."""
    positions = getattr(model.config, "max_position_embeddings", None) or prompt_length + settings.max_new_tokens
    if prompt_length >= positions:
        raise UserError(
            f"The prompt is {prompt_length:,} tokens; this model reads at most {positions:,}.",
            "Shorten the context (/context with a shorter passage).",
        )
    return min(settings.max_new_tokens, positions - prompt_length)


def _generate(model: torch.nn.Module, tokenizer: Any, batch: Sequence[Sequence[int]],
              settings: GenerationSettings) -> torch.Tensor:
    """Left-pad `batch`, run the model, return only the new tokens [rows, new]."""
    pad_id = _pad_id(tokenizer)
    width = max(len(ids) for ids in batch)
    device = input_device(model)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in batch], device=device)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
    options: dict[str, Any] = {
        "max_new_tokens": _answer_budget(model, width, settings),
        "do_sample": settings.sampling,
        "pad_token_id": pad_id,
        "eos_token_id": tokenizer.eos_token_id,
        "use_cache": True,  # training turns it off in the config; decoding without it is quadratic
        "stopping_criteria": [_StopStrings(tokenizer, width, settings.single_line)],
    }
    if settings.sampling:
        options.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
    if settings.repetition_penalty != 1.0:
        options["repetition_penalty"] = settings.repetition_penalty
    output = model.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
    return output[:, width:]


def _stop_reason(token_ids: Sequence[int], raw_text: str, eos_id: int | None) -> str:
    if eos_id is not None and eos_id in token_ids:
        return "eos"
    return "stop_string" if _cut_at_stop(raw_text)[1] else "max_new_tokens"


def _decode_answer(tokenizer: Any, token_ids: Sequence[int], single_line: bool = False) -> tuple[str, str]:
    """(cleaned answer, raw decoded text) of one row, ignoring everything after its first EOS."""
    ids = list(token_ids)
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
    raw = tokenizer.decode(ids, skip_special_tokens=True)
    text = clean_generation(raw)
    return (text.split("\n", 1)[0].strip() if single_line else text), raw


def stream_answer(decoder: StreamingDecoder, tokenizer: Any, prompt_ids: Sequence[int], settings: GenerationSettings,
                  on_text: Callable[[str], None], variant: Hashable = None) -> GenerationResult:
    """Generate one answer, handing each newly visible piece of text to `on_text`; Ctrl-C ends it early.

    `variant` names the adapter state in use (see `StreamingDecoder`).
    """
    answer = _AnswerText(tokenizer, on_text)
    started = time.perf_counter()
    interrupted = False
    with _inference(decoder.model):
        try:
            decoder.generate(prompt_ids, _answer_budget(decoder.model, len(prompt_ids), settings), settings,
                             answer.add, variant)
        except KeyboardInterrupt:
            interrupted = True
    answer.end()
    finished = time.perf_counter()
    text, raw = _decode_answer(tokenizer, answer.token_ids)
    first = (answer.first_token_at or finished) - started
    reason = "interrupted" if interrupted else _stop_reason(answer.token_ids, raw, tokenizer.eos_token_id)
    return GenerationResult(text, len(answer.token_ids), first, finished - started, reason)


def generate_batch(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[Sequence[int]],
                   settings: GenerationSettings) -> list[str]:
    """Cleaned answers for several encoded prompts generated together (one left-padded batch)."""
    with _inference(model):
        new_tokens = _generate(model, tokenizer, prompts, settings).tolist()
    return [_decode_answer(tokenizer, row, settings.single_line)[0] for row in new_tokens]


def answer_records(model: torch.nn.Module, tokenizer: Any, records: Sequence[QARecord],
                   max_prompt_tokens: int | None = None, settings: GenerationSettings | None = None,
                   batch_size: int = EXTRACTIVE_BATCH_SIZE, on_progress: Callable[[int], None] | None = None) -> dict[str, str]:
    """{record id: answer} for each record's question and context.

    Prompts are sorted by length so each batch pads little; `on_progress(n)` is called after each batch of n.
    Abstentions come back as `prompts.ABSTAIN` (the scorer maps them to "").
    """
    settings = settings or EXTRACTIVE
    encoded = [encode_prompt(tokenizer, r.question, r.context, max_prompt_tokens) for r in records]
    order = sorted(range(len(records)), key=lambda index: len(encoded[index]))
    answers: dict[str, str] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for index, answer in zip(chunk, generate_batch(model, tokenizer, [encoded[i] for i in chunk], settings)):
            answers[records[index].id] = answer
        if on_progress is not None:
            on_progress(len(chunk))
    return {record.id: answers[record.id] for record in records}
