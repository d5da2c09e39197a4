"""Attention made fast for training (Falcon: flash SDPA; Falcon and the Llama family: one rotary function) and
Falcon's recordable for decoding (CUDA graphs).

transformers' Falcon always materialises the causal mask (to add ALiBi onto it) and hands SDPA a single key/value
head for Falcon-7B's 71 query heads. Either one keeps SDPA off its flash kernel; together they make the math
kernel store fp32 scores of shape [batch, 71, T, T] per layer (measured on an H100: ~270 KB per token per layer,
docs/benchmarks.md). During our training forward the rows are right-padded and the mask is purely causal, so we
can drop it, broadcast the key/value head to every query head, and call SDPA with `is_causal=True`.

Llama, Mistral and Qwen2 attention rotate q and k with transformers' `apply_rotary_pos_emb`: per tensor a
multiply, `rotate_half`'s negation and concatenation, another multiply and an add, on the heads-first transposed
view (strided, unvectorised kernels), and more than as many again in backward. Profiled on the H200, that was the
largest share of a Llama-3-8B step's element-wise kernel time after LoRA's dropout (docs/benchmarks.md, session 13).
`RotaryEmbedding` computes the same rotation as one autograd node of three kernels per tensor each way (a multiply
and two half-width in-place `addcmul_`), on the projections' own layout, before they are transposed for SDPA.
Falcon's fast path rotates with it too: Falcon-7B 3-4% faster and 0.4-1.2 GB lighter at batch 64 than with
transformers' rotation (H200, session 15, docs/benchmarks.md).

The fast path is on only inside `causal_fast_path(model)` (the trainer's forward and backward, where recomputed
layers run again); generation, which needs the padding mask and the KV cache, takes transformers' own code.
Inside it SDPA is also kept off cuDNN's attention for every architecture: on Hopper torch prefers cuDNN, which
builds an execution plan per sequence shape, and training batches change length every step. Measured on the H200
(SmolLM2-135M, batch 16, `benchmarks/step_profile.py`): `_cudnn_attention_forward`/`_backward` took 2.8/3.4 ms of
CPU per call, 180 ms of a 534 ms step whose GPU kernels ran 30 ms; flash attention computes the same causal result.

For decoding, `make_graph_safe` swaps one detail of that code: Falcon splits the fused QKV projection with list
indices (`x[..., [-2], :]`), which copies a CPU index tensor to the GPU at every call, and such copies cannot be
recorded in a CUDA graph. Slices select the same heads without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

_FLAG = "_falcon_desktop_causal_fast_path"


def _fast_forward(self, hidden_states, alibi, attention_mask, position_ids=None, layer_past=None, use_cache=False,
                  output_attentions=False, position_embeddings=None, **kwargs):
    if not getattr(self, _FLAG, False) or alibi is not None or layer_past is not None or output_attentions \
            or position_embeddings is None:
        return type(self).forward(self, hidden_states, alibi, attention_mask, position_ids=position_ids,
                                  layer_past=layer_past, use_cache=use_cache, output_attentions=output_attentions,
                                  position_embeddings=position_embeddings, **kwargs)
    query, key, value = self._split_heads(self.query_key_value(hidden_states))  # [batch, T, heads, head_dim]
    batch, length = query.shape[:2]
    compiling = torch.compiler.is_compiling()
    if not compiling:  # compiled, transformers' element-wise rotation is Inductor's to fuse (as for the Llama family)
        query, key = RotaryEmbedding.apply(query, key, *position_embeddings)
    query, key, value = (x.transpose(1, 2) for x in (query, key, value))  # [batch, heads, T, head_dim]
    if compiling:
        from transformers.models.falcon.modeling_falcon import apply_rotary_pos_emb

        query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
    grouped = key.shape[1] != query.shape[1]  # multi-query: one key/value head shared by all query heads
    # Compiled, SDPA gets the one head and `enable_gqa`: for a broadcast (stride-0) key PyTorch's fake flash backward
    # predicts another gradient layout than the real kernel returns, and Inductor's stride check stops the step
    # (Falcon-7B, H200, torch 2.11). Eager keeps the broadcast view: every SDPA backend takes it, and of the
    # backends only flash and math take `enable_gqa`.
    native_gqa = grouped and compiling
    if grouped:
        # A copy of the shared head (1/71 of the projection on Falcon-7B), not a slice: SDPA keeps value for
        # backward, and a slice would keep the whole fused projection with it. Recorded steps split by slices
        # (make_graph_safe); Falcon-7B's recorded 24 GiB plan held 1.6 GB more than eager for it, 77 MB a layer
        # (H200 memory trace, docs/benchmarks.md). transformers' split by list indices copies already.
        value = value.contiguous()
    if grouped and not native_gqa:
        key = key.expand(-1, query.shape[1], -1, -1)
        value = value.expand(-1, query.shape[1], -1, -1)
    output = F.scaled_dot_product_attention(query, key, value, is_causal=length > 1, enable_gqa=native_gqa)
    output = output.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
    return self.dense(output), None


class RotaryEmbedding(torch.autograd.Function):
    """transformers' rotary embedding of q and k (`x * cos + rotate_half(x) * sin`) in one node, on
    [batch, tokens, heads, head_dim]. With the first half of sin negated (`signed`), `rotate_half(x) * sin` adds
    x's second half times signed's first half onto the first half, and x's first half times signed's second half onto
    the second: a multiply and two half-width `addcmul_` per tensor, and backward the same with the halves' roles
    swapped (the rotation's transpose). Half-width updates in place read and write less than rolling the whole
    tensor (H200, Llama-3-8B: `roll` was 17 ms of a 740 ms step). Keeps only cos and the signed sin for backward,
    as transformers' keeps cos and sin."""

    @staticmethod
    def forward(ctx, query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        half = cos.shape[-1] // 2
        cos, sin = cos.unsqueeze(2).to(query.dtype), sin.unsqueeze(2).to(query.dtype)  # broadcast over the heads
        signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        ctx.save_for_backward(cos, signed)
        return tuple(_rotate(x, cos, signed, half, transpose=False) for x in (query, key))

    @staticmethod
    def backward(ctx, grad_query: torch.Tensor | None, grad_key: torch.Tensor | None):
        cos, signed = ctx.saved_tensors
        half = cos.shape[-1] // 2
        return (*(None if grad is None else _rotate(grad, cos, signed, half, transpose=True)
                  for grad in (grad_query, grad_key)), None, None)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed: torch.Tensor, half: int, transpose: bool) -> torch.Tensor:
    """x * cos plus the half-swapped x times signed: the rotation, or with `transpose` its transpose (which takes
    each half's factor from the half it lands on in the other direction)."""
    rotated = x * cos
    first, second = slice(None, half), slice(half, None)
    rotated[..., first].addcmul_(x[..., second], signed[..., second if transpose else first])
    rotated[..., second].addcmul_(x[..., first], signed[..., first if transpose else second])
    return rotated


# Attention classes whose training forward `_rotary_fast_forward` computes: the same projections, rotary embedding
# and causal SDPA (Mistral and Qwen2 add a sliding window, which the fast path leaves to transformers where it binds).
ROTARY_ATTENTIONS = ("LlamaAttention", "MistralAttention", "Qwen2Attention")


def _rotary_fast_path_applies(self, length: int, position_embeddings, args: tuple, kwargs: dict) -> bool:
    """Inside causal_fast_path, for a causal forward without a cache, attention dropout or a binding sliding window.
    Compiled layers keep transformers' code, whose element-wise rotation Inductor fuses itself."""
    window = self.sliding_window if hasattr(self, "sliding_window") else getattr(self.config, "sliding_window", None)
    return (getattr(self, _FLAG, False) and not torch.compiler.is_compiling() and position_embeddings is not None
            and not args and not kwargs.get("output_attentions") and kwargs.get("cache") is None
            and kwargs.get("past_key_values") is None and not (self.training and self.attention_dropout)
            and (window is None or length <= window))


def _rotary_fast_forward(self, hidden_states, position_embeddings=None, attention_mask=None, *args, **kwargs):
    *input_shape, length, _ = hidden_states.shape
    if not _rotary_fast_path_applies(self, length, position_embeddings, args, kwargs):
        return type(self).forward(self, hidden_states, position_embeddings, attention_mask, *args, **kwargs)
    shape = (*input_shape, length, -1, self.head_dim)
    query, key = RotaryEmbedding.apply(self.q_proj(hidden_states).view(shape), self.k_proj(hidden_states).view(shape),
                                       *position_embeddings)
    value = self.v_proj(hidden_states).view(shape)
    query, key, value = (x.transpose(1, 2) for x in (query, key, value))  # [batch, heads, T, head_dim]
    # The mask is purely causal here (module docstring); key/value heads shared by query heads as transformers' SDPA
    # path shares them without a mask.
    output = F.scaled_dot_product_attention(query, key, value, is_causal=length > 1, scale=self.scaling,
                                            enable_gqa=self.num_key_value_groups > 1)
    return self.o_proj(output.transpose(1, 2).reshape(*input_shape, length, -1)), None


def install_fast_attention(model: nn.Module) -> int:
    """Give every Falcon (non-ALiBi) and Llama-family (ROTARY_ATTENTIONS) attention module its training fast path,
    switched off; returns how many."""
    from transformers.models.falcon.modeling_falcon import FalconAttention

    patched = 0
    for module in model.modules():
        if type(module) is FalconAttention and not module.config.alibi:
            module.forward = MethodType(_fast_forward, module)
        elif type(module).__name__ in ROTARY_ATTENTIONS:
            module.forward = MethodType(_rotary_fast_forward, module)
        else:
            continue
        setattr(module, _FLAG, False)
        patched += 1
    return patched


@contextlib.contextmanager
def causal_fast_path(model: nn.Module) -> Iterator[None]:
    """Within this block the patched attention ignores the (purely causal) mask, and every SDPA call (any
    architecture) prefers flash over cuDNN."""
    modules = [m for m in model.modules() if hasattr(m, _FLAG)]
    for module in modules:
        setattr(module, _FLAG, True)
    try:
        # Listed in priority order; math is the fallback the CPU and old GPUs take.
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
                         set_priority=True):
            yield
    finally:
        for module in modules:
            setattr(module, _FLAG, False)



def _split_heads_by_slicing(self, fused_qkv):
    """transformers' `FalconAttention._split_heads`, with slices where it indexes by lists (same values)."""
    batch, length, _ = fused_qkv.shape
    if self.new_decoder_architecture:
        qkv = fused_qkv.view(batch, length, -1, self.num_heads // self.num_kv_heads + 2, self.head_dim)
        query, key, value = qkv[:, :, :, :-2], qkv[:, :, :, -2:-1], qkv[:, :, :, -1:]
        key, value = key.expand(query.shape), value.expand(query.shape)
        return tuple(x.flatten(2, 3) for x in (query, key, value))
    if not self.multi_query:
        qkv = fused_qkv.view(batch, length, self.num_heads, 3, self.head_dim)
        return qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
    qkv = fused_qkv.view(batch, length, self.num_heads + 2, self.head_dim)
    return qkv[..., :-2, :], qkv[..., -2:-1, :], qkv[..., -1:, :]


def make_graph_safe(model: nn.Module) -> int:
    """Let every Falcon attention module of `model` be recorded in a CUDA graph; returns how many were changed."""
    from transformers.models.falcon.modeling_falcon import FalconAttention

    changed = 0
    for module in model.modules():
        if isinstance(module, FalconAttention):
            module._split_heads = MethodType(_split_heads_by_slicing, module)
            changed += 1
    return changed
