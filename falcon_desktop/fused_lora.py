"""Training kernels for the adapted layers: each LoRA-adapted 4-bit linear in one autograd function, and
Llama-family RMSNorms in PyTorch's fused kernel.

peft runs a 4-bit LoRA layer as seven autograd nodes: bitsandbytes' matmul, a defensive copy of its output,
dropout, lora_A, lora_B, the scaling and the add. Each writes a tensor, most of the layer's full width, and lora_A
keeps its own dropped-out copy of the input for backward. Profiled on the H200 (Llama-3-8B shape, 24 GiB plan, 30
of 32 layers checkpointed; benchmarks/results/unsloth-fused-h200/peft-8b-profiled/), elementwise kernels took 268
of a step's 822 ms of kernel time and the step launched 13,824 kernels; Unsloth's fused layers on the same batches
spent ~105 ms there.
`QuantizedLoraLinear` computes the same function with fewer, larger kernels: the adapter's product is added to the
base output inside the matmul (`addmm_`, scaling as its alpha), no copy, and for backward it keeps the input it
was given (shared by the adapters that read it, q/k/v or gate/up) and the dropout's bool mask, re-applying the mask
in backward instead of keeping a dropped-out copy per adapter. The dropout draws exactly what peft's `nn.Dropout`
draws (the same native dropout from the same generator), so checkpointing's replayed random state, and recorded
steps' random streams, give the same masks.

It runs only where it computes what peft would: training with gradients, one active unmerged plain LoRA adapter
without a bias, over a bitsandbytes 4-bit base, outside torch.compile (compiled layers keep peft's modules, which
Inductor fuses itself). Everything else - generation, evaluation, merging, DoRA - takes peft's own forward.
"""

from __future__ import annotations

from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn

_FUSED_FORWARD = "_falcon_desktop_fused_forward"
# transformers' RMSNorms that compute weight * x / rms(x) in fp32, as F.rms_norm does (Gemma's 1 + weight does not).
RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")


class QuantizedLoraLinear(torch.autograd.Function):
    """y = x W^T + bias + scaling * dropout(x) A^T B^T, W in bitsandbytes 4-bit; gradients for x, A and B."""

    @staticmethod
    def forward(ctx, x, weight, quant_state, bias, lora_a, lora_b, scaling: float, dropout: float):
        import bitsandbytes as bnb

        rows = x.reshape(-1, x.shape[-1])
        # No grad here: bitsandbytes' one fused op. The output is returned whole, not as a view of it (Falcon adds
        # into its MLP output in place, which autograd forbids on a view made inside a custom function).
        output = bnb.matmul_4bit(x, weight, quant_state=quant_state, bias=bias)
        a, b = lora_a.to(rows.dtype), lora_b.to(rows.dtype)
        dropped, mask = torch.native_dropout(rows, dropout, True) if dropout > 0 else (rows, None)
        projected = dropped @ a.t()
        output.view(-1, output.shape[-1]).addmm_(projected, b.t(), alpha=scaling)
        ctx.save_for_backward(rows, mask, projected, lora_a, lora_b)
        ctx.weight, ctx.quant_state, ctx.scaling, ctx.dropout = weight, quant_state, scaling, dropout
        ctx.input_shape = x.shape
        return output

    @staticmethod
    def backward(ctx, grad_output):
        import bitsandbytes.functional as bnb_functional

        # Input-wide temporaries are freed as soon as used: at most two at once (the input's gradient and the
        # adapter's share of it), beside the dequantized weight.
        rows, mask, projected, lora_a, lora_b = ctx.saved_tensors
        grad = grad_output.reshape(-1, grad_output.shape[-1])
        a, b = lora_a.to(grad.dtype), lora_b.to(grad.dtype)
        keep = 1.0 / (1.0 - ctx.dropout)
        through_b = grad @ b  # [tokens, r]: the gradient reaching A's output, before scaling
        grad_b = (grad.t() @ projected).mul_(ctx.scaling)
        dropped = rows if mask is None else torch.ops.aten.native_dropout_backward(rows, mask, keep)
        grad_a = (through_b.t() @ dropped).mul_(ctx.scaling)
        del dropped
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ bnb_functional.dequantize_4bit(ctx.weight, ctx.quant_state).to(grad.dtype)
            if mask is None:
                grad_x.addmm_(through_b, a, alpha=ctx.scaling)
            else:
                grad_x.add_((through_b @ a).mul_(mask), alpha=keep * ctx.scaling)
            grad_x = grad_x.view(ctx.input_shape)
        return grad_x, None, None, None, grad_a.to(lora_a.dtype), grad_b.to(lora_b.dtype), None, None


def _fusable_adapter(layer: nn.Module, args: tuple, kwargs: dict) -> str | None:
    """The adapter name where QuantizedLoraLinear computes exactly what peft's forward would, else None."""
    if args or kwargs or not torch.is_grad_enabled() or torch.compiler.is_compiling():
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
    adapter = _fusable_adapter(self, args, kwargs)
    if adapter is None:
        return type(self).forward(self, x, *args, **kwargs)
    base = self.base_layer
    dropout = self.lora_dropout[adapter]
    p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
    compute = base.compute_dtype or x.dtype
    bias = None if base.bias is None else base.bias.to(compute)
    output = QuantizedLoraLinear.apply(x.to(compute), base.weight, base.weight.quant_state, bias,
                                       self.lora_A[adapter].weight, self.lora_B[adapter].weight,
                                       float(self.scaling[adapter]), float(p))
    return output.to(x.dtype)


def install_fused_lora(model: nn.Module) -> int:
    """Route every peft 4-bit LoRA layer's training forward through QuantizedLoraLinear; returns how many."""
    try:
        from peft.tuners.lora.bnb import Linear4bit
    except ImportError:  # peft defines it only where bitsandbytes imports: then no layer is 4-bit (--no-quantize)
        return 0

    installed = 0
    for module in model.modules():
        if type(module) is Linear4bit and not hasattr(module, _FUSED_FORWARD):
            module.forward = MethodType(_fused_forward, module)
            setattr(module, _FUSED_FORWARD, True)
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
