"""Streaming decoder for one prompt at a time: a static KV cache and, on CUDA, each decoding step as a CUDA graph.

Why: at batch 1 a 7B model's decoding step is a few thousand small kernels, and plain `generate` spends its time
launching them from Python (13.8 tokens/s measured on an H100 in NF4, docs/benchmarks.md, where memory
bandwidth allows ~770). The step is recorded once as a CUDA graph and replayed per token, which removes that
launch cost. Replay needs every
tensor at a fixed address, hence transformers' `StaticCache`, whose length is rounded up to `_CACHE_BUCKET` so a
few recordings serve all prompts. `torch.compile` is not used: it needs Triton, which Windows lacks by default.

The prompt is recorded too, padded at its end to a power-of-two length: causal attention keeps the padding out
of the real positions, the logits are read at the last real one, and the cache is then declared to hold only the
real prompt. Without that, Python's launch overhead dominates the time to the first token as well. Recordings share
one memory pool, so they cost the memory of the largest, not the sum. On the CPU (tests, machines without CUDA) the
same loop runs eagerly, so the code path that the tests check is the one users run, less the recording.
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from falcon_desktop.attention import make_graph_safe
from falcon_desktop.console import warn
from falcon_desktop.cuda_graphs import clear_failed_recording
from falcon_desktop.decoding import GenerationSettings
from falcon_desktop.errors import first_line

_CACHE_BUCKET = 256     # static cache lengths are multiples of this: one recording serves many prompt lengths
_KEPT_RECORDINGS = 4    # (adapter, cache length) pairs kept, each a KV cache and its recordings
_MIN_PROMPT_BUCKET = 64


def apply_repetition_penalty(logits: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty, as transformers applies it: seen tokens' positive logits divided, negative ones multiplied."""
    seen = logits.gather(-1, history)
    return logits.scatter(-1, history, torch.where(seen < 0, seen * penalty, seen / penalty))


def choose_token(logits: torch.Tensor, history: torch.Tensor, settings: GenerationSettings,
                 generator: torch.Generator | None) -> torch.Tensor:
    """The next token [1, 1] from the last position's logits [1, vocab]; `history` [1, n] is prompt + answer so far."""
    logits = logits.float()
    if settings.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, history, settings.repetition_penalty)
    if not settings.sampling:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / settings.temperature
    if settings.top_k:
        kth = torch.topk(logits, min(settings.top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        mass_before = ordered.softmax(dim=-1).cumsum(dim=-1) - ordered.softmax(dim=-1)
        ordered = ordered.masked_fill(mass_before > settings.top_p, float("-inf"))  # keeps at least the top token
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where the model's inputs go: the device of its embeddings (the first of several with `device_map`)."""
    return model.get_input_embeddings().weight.device


def _last_logits(model: torch.nn.Module, input_ids: torch.Tensor, cache: Any, keep: int | torch.Tensor = 1) -> torch.Tensor:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    output = model(input_ids=input_ids, **{_cache_keyword(type(base)): cache}, use_cache=True, logits_to_keep=keep)
    return output.logits[:, -1, :]


@functools.cache
def _cache_keyword(model_class: type) -> str:
    """transformers renamed `past_key_values` to `cache` after 5.17 (the old name warns, and goes in 5.40)."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _set_cache_length(cache: Any, length: int) -> None:
    """Declare the first `length` positions of a static cache valid; later ones are masked until overwritten."""
    for layer in cache.layers:
        layer.cumulative_length.fill_(length)


def _can_rewind(cache: Any) -> bool:
    """Whether `_set_cache_length` works on this cache: full-attention layers that count tokens in a tensor.

    Sliding-window layers (Mistral v0.1) roll their contents once full, so a padded prompt could push real tokens out.
    """
    return all(isinstance(getattr(layer, "cumulative_length", None), torch.Tensor) and not getattr(layer, "is_sliding", False)
               for layer in cache.layers)


def _prompt_bucket(prompt_length: int, cache_length: int) -> int:
    """Recorded prompt lengths: 64, 128, 256, ... (a prompt is padded at its end), never beyond the cache."""
    return min(max(_MIN_PROMPT_BUCKET, 1 << (prompt_length - 1).bit_length()), cache_length)


@dataclass
class _Recording:
    """A forward pass over fixed input tensors: a CUDA graph, or on the CPU the call itself."""

    forward: Callable[[], torch.Tensor]
    graph: Any = None                    # torch.cuda.CUDAGraph
    output: torch.Tensor | None = None   # the graph's output tensor, rewritten by each replay

    def replay(self) -> torch.Tensor:
        if self.graph is None:
            return self.forward()
        self.graph.replay()
        return self.output


class _CacheSlot:
    """A static KV cache with the recordings that use it: one decoding step, and prompts by padded length."""

    def __init__(self, model: torch.nn.Module, cache_length: int, device: torch.device, pool: Any,
                 pad_prompts: bool) -> None:
        from transformers import StaticCache

        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=cache_length)
        self.cache_length = cache_length
        self.device = device
        # Recording and padded prompts both rewind the cache; a transformers whose static cache cannot be rewound
        # gets neither.
        rewindable = _can_rewind(self.cache)
        self.pool = pool if rewindable else None  # a CUDA graph memory pool shared with other slots; None: no graphs
        self.pad_prompts = pad_prompts and rewindable
        self.token = torch.zeros((1, 1), dtype=torch.long, device=device)
        self.step_recording: _Recording | None = None
        self.prompt_recordings: dict[int, tuple[torch.Tensor, torch.Tensor, _Recording]] = {}

    def prepare(self, prompt_length: int) -> None:
        """Record what a prompt of this length needs (first use only): done before the prompt fills the cache."""
        if self.step_recording is None:
            self.step_recording = self._record(lambda: _last_logits(self.model, self.token, self.cache))
        bucket = _prompt_bucket(prompt_length, self.cache_length)
        if self.pad_prompts and bucket not in self.prompt_recordings:
            ids = torch.zeros((1, bucket), dtype=torch.long, device=self.device)
            last = torch.zeros(1, dtype=torch.long, device=self.device)
            self.prompt_recordings[bucket] = (ids, last, self._record(lambda: _last_logits(self.model, ids, self.cache, last)))

    def read_prompt(self, prompt: torch.Tensor) -> torch.Tensor:
        """Fill the cache with `prompt` [1, n]; the logits [1, vocab] of its last position."""
        length = prompt.shape[1]
        if not self.pad_prompts:
            self.cache.reset()
            return _last_logits(self.model, prompt, self.cache)
        ids, last, recording = self.prompt_recordings[_prompt_bucket(length, self.cache_length)]
        ids[:, :length] = prompt
        last.fill_(length - 1)
        _set_cache_length(self.cache, 0)
        logits = recording.replay()
        _set_cache_length(self.cache, length)  # the padding's keys and values are overwritten as answers grow
        return logits

    def step(self) -> torch.Tensor:
        """One decoding step on `self.token`; the next logits [1, vocab]."""
        return self.step_recording.replay()

    def _record(self, forward: Callable[[], torch.Tensor]) -> _Recording:
        if self.pool is None:
            return _Recording(forward)
        # Warm-up runs on a side stream (as capture requires) allocate the cache and let cuBLAS and bitsandbytes
        # pick their kernels; each starts from an empty cache so none writes past its end.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                _set_cache_length(self.cache, 0)
                forward()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = forward()
        return _Recording(forward, graph, output)


class StreamingDecoder:
    """Generates one answer at a time for `model`, token by token; keeps its recordings between answers.

    `variant` names what changes the model's computation without changing its tensors' addresses — the active
    adapter, or the adapters being disabled — so each variant gets its own recordings.
    """

    def __init__(self, model: torch.nn.Module, cuda_graphs: bool | None = None, pad_prompts: bool | None = None) -> None:
        self.model = model
        self.device = input_device(model)
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        self.pad_prompts = self.cuda_graphs if pad_prompts is None else pad_prompts  # only graphs need fixed lengths
        self._pool = None
        self._slots: OrderedDict[tuple[Hashable, int], _CacheSlot] = OrderedDict()

    def generate(self, prompt_ids: Sequence[int], budget: int, settings: GenerationSettings,
                 on_token: Callable[[int], bool], variant: Hashable = None) -> None:
        """Feed each new token to `on_token` until it returns True or `budget` tokens are made."""
        slot = self._slot(variant, len(prompt_ids) + budget)
        try:
            slot.prepare(len(prompt_ids))
        except RuntimeError as error:  # an operation that cannot be recorded (a host sync in some model's code)
            clear_failed_recording(self.device)
            warn(f"Cannot record this model's decoding as a CUDA graph ({first_line(error)}); answering without "
                 "graphs, which is slower.")
            self.cuda_graphs = self.pad_prompts = False
            self._slots.clear()
            slot = self._slot(variant, len(prompt_ids) + budget)
            slot.prepare(len(prompt_ids))
        generator = None
        if settings.sampling and settings.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        history = torch.empty((1, len(prompt_ids) + budget), dtype=torch.long, device=self.device)
        history[0, : len(prompt_ids)] = torch.tensor(prompt_ids, dtype=torch.long)
        logits = slot.read_prompt(history[:, : len(prompt_ids)])
        for produced in range(budget):
            length = len(prompt_ids) + produced
            token = choose_token(logits, history[:, :length], settings, generator)
            history[:, length : length + 1] = token
            if on_token(int(token)) or produced + 1 == budget:
                return
            slot.token.copy_(token)
            logits = slot.step()

    def _slot(self, variant: Hashable, length: int) -> _CacheSlot:
        cache_length = -(-length // _CACHE_BUCKET) * _CACHE_BUCKET
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions is not None:
            cache_length = min(cache_length, positions)
        key = (variant, cache_length)
        if key in self._slots:
            self._slots.move_to_end(key)
            return self._slots[key]
        while len(self._slots) >= _KEPT_RECORDINGS:
            self._slots.popitem(last=False)
        if self.cuda_graphs and self._pool is None:
            make_graph_safe(self.model)
            self._pool = torch.cuda.graph_pool_handle()
        slot = _CacheSlot(self.model, cache_length, self.device, self._pool if self.cuda_graphs else None,
                          self.pad_prompts)
        self._slots[key] = slot
        return slot
