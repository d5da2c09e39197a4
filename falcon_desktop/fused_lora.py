"""Training kernels for the adapted layers: LoRA-adapted 4-bit linears in autograd functions of their own, siblings
that read one input in one, and Llama-family RMSNorms in PyTorch's fused kernel.

peft runs a 4-bit LoRA layer as seven autograd nodes: bitsandbytes' matmul, a defensive copy of its output,
dropout, lora_A, lora_B, the scaling and the add. Each writes a tensor, most of the layer's full width, and lora_A
keeps its own dropped-out copy of the input for backward. Profiled on the H200 (Llama-3-8B shape, 24 GiB plan, 30
of 32 layers checkpointed; benchmarks/results/unsloth-fused-h200/peft-8b-profiled/), elementwise kernels took 268
of a step's 822 ms of kernel time and the step launched 13,824 kernels; Unsloth's fused layers on the same batches
spent ~105 ms there.
`QuantizedLoraGroup` computes the same function with fewer, larger kernels and fewer host operations: the adapter's
product is added to the base output inside the matmul (`addmm_`, scaling as its alpha), no copy; siblings that one
module calls in a row on the same input (q/k/v, gate/up: `SIBLINGS`) run as one function whose backward accumulates
the input's gradient in its matmuls; for backward it keeps the input once, each adapter's bool dropout mask
(re-applied in backward instead of a dropped-out copy per adapter) and the adapters' compute-dtype copies made in
forward. The dropout draws exactly what peft's `nn.Dropout` draws (the same native dropout from the same generator,
the siblings in the order the module calls them), so checkpointing's replayed random state, and recorded steps'
random streams, give the same masks. After session 11's fused layers the 8B step's kernels took 694 ms against
Unsloth's 712; the host launching them was the gap, which the grouping narrows (docs/benchmarks.md).

It runs only where it computes what peft would: a module in training mode (with gradients, or in a checkpointed
layer's first forward, which runs without: model.GraphlessCheckpoint), one active unmerged plain LoRA adapter
without a bias, over a bitsandbytes 4-bit base, outside torch.compile (compiled layers keep peft's modules, which
Inductor fuses itself). Everything else - generation, evaluation, merging, DoRA - takes peft's own forward.
"""

from __future__ import annotations

from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn

_SIBLINGS = "_falcon_desktop_siblings"
# transformers' RMSNorms that compute weight * x / rms(x) in fp32, as F.rms_norm does (Gemma's 1 + weight does not).
RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")


def _dequantized(weight, dtype: torch.dtype) -> torch.Tensor:
    import bitsandbytes.functional as bnb_functional

    return bnb_functional.dequantize_4bit(weight, weight.quant_state).to(dtype)


class Members:
    """What QuantizedLoraGroup needs of its members besides their adapters: each one's (4-bit weight, bias), scaling
    and dropout probability. One object, not nested tuples: autograd.Function.apply walks its arguments as a pytree,
    and an opaque object is one leaf (nested tuples cost ~0.2 ms a call on the CPU)."""

    __slots__ = ("bases", "scalings", "dropouts")

    def __init__(self, bases: list[tuple], scalings: list[float], dropouts: list[float]) -> None:
        self.bases, self.scalings, self.dropouts = bases, scalings, dropouts


class QuantizedLoraGroup(torch.autograd.Function):
    """For adapted 4-bit linears reading one input x (one layer, or siblings such as q/k/v):
    output_i = x W_i^T + bias_i + scaling_i * dropout_i(x) A_i^T B_i^T, W_i in bitsandbytes 4-bit; gradients for x and
    every A_i, B_i. `adapters` is A_0, B_0, A_1, B_1, ..."""

    @staticmethod
    def forward(ctx, x, members: Members, *adapters):
        rows = x.reshape(-1, x.shape[-1])
        outputs, saved, casts = [], [rows], []
        for (weight, bias), scaling, p, lora_a, lora_b in zip(
                members.bases, members.scalings, members.dropouts, adapters[0::2], adapters[1::2]):
            # Whole outputs, not views made here: Falcon adds into its MLP output in place, which autograd forbids on
            # a view made inside a custom function.
            output = F.linear(x, _dequantized(weight, x.dtype), bias)
            dropped, mask = torch.native_dropout(rows, p, True) if p > 0 else (rows, None)
            a, b = lora_a.to(rows.dtype), lora_b.to(rows.dtype)
            projected = dropped @ a.t()
            del dropped
            output.view(-1, output.shape[-1]).addmm_(projected, b.t(), alpha=scaling)
            outputs.append(output)
            saved += [mask, projected]
            casts.append((a, b))
        ctx.save_for_backward(*saved)
        # The adapters in the compute dtype stay for backward (2 bytes a LoRA weight, checkpointed layers too: what
        # the memory model counts for autocast's copies): casting them again there cost two kernels an adapted layer
        # (~450 launches a step on Llama-3-8B). Weights change between a forward and the next (the optimizer), never
        # between a forward and its backward.
        ctx.members, ctx.casts, ctx.input_shape = members, casts, x.shape
        ctx.adapter_dtypes = [adapter.dtype for adapter in adapters]
        ctx.set_materialize_grads(False)  # a member whose output went unused gets no gradient work
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grad_outputs):
        rows, *kept = ctx.saved_tensors
        members = ctx.members
        masks, projections = kept[0::2], kept[1::2]
        grad_x, adapter_grads = None, []
        # Input-wide temporaries are freed as soon as used: the input's gradient (one, accumulated in the matmuls)
        # and at most two more, beside one member's dequantized weight.
        for member, grad_output in enumerate(grad_outputs):
            if grad_output is None:
                adapter_grads += [None, None]
                continue
            weight = members.bases[member][0]
            scaling, mask = members.scalings[member], masks[member]
            keep = 1.0 / (1.0 - members.dropouts[member])
            grad = grad_output.reshape(-1, grad_output.shape[-1])
            a, b = (cast.to(grad.dtype) for cast in ctx.casts[member])
            through_b = grad @ b  # [tokens, r]: the gradient reaching A's output, before scaling
            grad_b = (grad.t() @ projections[member]).mul_(scaling)
            dropped = rows if mask is None else torch.ops.aten.native_dropout_backward(rows, mask, keep)
            grad_a = (through_b.t() @ dropped).mul_(scaling)
            del dropped
            a_dtype, b_dtype = ctx.adapter_dtypes[2 * member:2 * member + 2]
            adapter_grads += [grad_a.to(a_dtype), grad_b.to(b_dtype)]
            if not ctx.needs_input_grad[0]:
                continue
            dequantized = _dequantized(weight, grad.dtype)
            grad_x = grad @ dequantized if grad_x is None else grad_x.addmm_(grad, dequantized)
            del dequantized
            if mask is None:
                grad_x.addmm_(through_b, a, alpha=scaling)
            else:  # the mask re-applied and scaled in one vectorised kernel
                grad_x.add_(torch.ops.aten.native_dropout_backward(through_b @ a, mask, keep * scaling))
        return (None if grad_x is None else grad_x.view(ctx.input_shape)), None, *adapter_grads


# Adapted layers that one module calls in a row on the same input: the first called computes them all.
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class SharedInput:
    """Siblings reading one input. The first one called computes every fusable sibling's output in one
    QuantizedLoraGroup (one dequantize-and-accumulate chain for the input's gradient, one node in the graph); the
    others, called next on the same tensor, take theirs. The dropout masks are drawn for the first called, then the
    others in SIBLINGS order: where the module calls them in that order (transformers' Llama, Mistral and Qwen
    attention and MLP), the order in which peft's own layers draw them."""

    def __init__(self, members: list[nn.Module]) -> None:
        self.members = members
        self._input: torch.Tensor | None = None
        self._pending: dict[int, torch.Tensor] = {}

    def take(self, member: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        if self._input is not x or id(member) not in self._pending:
            return None
        output = self._pending.pop(id(member))
        if not self._pending:
            self._input = None
        return output

    def compute(self, leader: nn.Module, adapter: str, x: torch.Tensor) -> torch.Tensor:
        group = [(leader, adapter)]
        for member in self.members:
            if member is not leader:
                sibling_adapter = _fusable_adapter(member, (), {})
                if sibling_adapter is not None and _compute_dtype(member, x) == _compute_dtype(leader, x):
                    group.append((member, sibling_adapter))
        outputs = _apply_group(group, x)
        self._pending = {id(member): output for (member, _), output in zip(group[1:], outputs[1:])}
        self._input = x if self._pending else None
        return outputs[0]


def _compute_dtype(layer: nn.Module, x: torch.Tensor) -> torch.dtype:
    return layer.base_layer.compute_dtype or x.dtype


def _apply_group(group: list[tuple[nn.Module, str]], x: torch.Tensor) -> list[torch.Tensor]:
    compute = _compute_dtype(group[0][0], x)
    bases, scalings, dropouts, adapters = [], [], [], []
    for layer, adapter in group:
        base = layer.base_layer
        dropout = layer.lora_dropout[adapter]
        bases.append((base.weight, None if base.bias is None else base.bias.to(compute)))
        scalings.append(float(layer.scaling[adapter]))
        dropouts.append(float(dropout.p) if isinstance(dropout, nn.Dropout) and dropout.training else 0.0)
        adapters += [layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
    outputs = QuantizedLoraGroup.apply(x.to(compute), Members(bases, scalings, dropouts), *adapters)
    return [output.to(x.dtype) for output in outputs]


def _fusable_adapter(layer: nn.Module, args: tuple, kwargs: dict) -> str | None:
    """The adapter name where QuantizedLoraGroup computes exactly what peft's forward would, else None."""
    if args or kwargs or not (torch.is_grad_enabled() or layer.training) or torch.compiler.is_compiling():
        return None
    if layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    adapter = layer.active_adapters[0]
    if adapter not in layer.lora_A or adapter in getattr(layer, "lora_variant", {}):
        return None
    base = layer.base_layer
    if layer.lora_B[adapter].bias is not None or getattr(base.weight, "quant_state", None) is None:
        return None
    if base.bias is not None and base.bias.requires_grad:  # the function returns no gradient for it
        return None
    dropout = layer.lora_dropout[adapter]
    if not isinstance(dropout, nn.Identity) and (type(dropout) is not nn.Dropout or dropout.inplace):
        return None
    return adapter


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    siblings: SharedInput = getattr(self, _SIBLINGS)
    taken = None if args or kwargs else siblings.take(self, x)  # computed by its sibling a moment ago
    if taken is not None:
        return taken
    adapter = _fusable_adapter(self, args, kwargs)
    if adapter is None:
        return type(self).forward(self, x, *args, **kwargs)
    return siblings.compute(self, adapter, x)


def install_fused_lora(model: nn.Module) -> int:
    """Route every peft 4-bit LoRA layer's training forward through QuantizedLoraGroup, siblings (SIBLINGS) sharing
    one; returns how many layers."""
    try:
        from peft.tuners.lora.bnb import Linear4bit
    except ImportError:  # peft defines it only where bitsandbytes imports: then no layer is 4-bit (--no-quantize)
        return 0

    installed = 0
    for parent in model.modules():
        children = {name: child for name, child in parent.named_children()
                    if type(child) is Linear4bit and not hasattr(child, _SIBLINGS)}
        groups = [[children[name] for name in names if name in children] for names in SIBLINGS]
        grouped = {id(member) for group in groups for member in group}
        groups += [[child] for child in children.values() if id(child) not in grouped]
        for group in filter(None, groups):
            siblings = SharedInput(group)
            for member in group:
                member.forward = MethodType(_fused_forward, member)
                setattr(member, _SIBLINGS, siblings)
                installed += 1
    return installed


def _rms_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    # Off autocast, which would run the norm in fp32 and hand fp32 to every consumer; the kernel computes in fp32.
    with torch.autocast(hidden_states.device.type, enabled=False):
        return F.rms_norm(hidden_states, (hidden_states.shape[-1],), self.weight.to(hidden_states.dtype),
                          self.variance_epsilon)


def install_fused_rms_norm(model: nn.Module) -> int:
    """Llama-family RMSNorms through F.rms_norm (one fused kernel on CUDA, keeping its 16-bit input and an fp32
    statistic per row for backward, where transformers' keeps an fp32 copy of the input); returns how many."""
    installed = 0
    for module in model.modules():
        if type(module).__name__ in RMS_NORMS and hasattr(module, "variance_epsilon"):
            module.forward = MethodType(_rms_norm_forward, module)
            installed += 1
    return installed
