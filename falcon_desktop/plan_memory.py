"""How many bytes of VRAM a training or inference setup holds at its peak, component by component.

The model describes OUR trainer (`train.py`; docs/planner.md walks through it): frozen base weights
(NF4 double-quant blocksize 64, or 16-bit), fp32 LoRA A/B, autocast in the compute dtype, flash SDPA with
`is_causal` and no mask (Falcon through `attention.py`'s fast path), the LM head applied only to labelled positions,
and gradient checkpointing of the FIRST `checkpoint_layers` decoder layers. Peak = weights + adapters + gradients +
optimizer states + activations + the loss buffer + CUDA context + allocator slack. Pure Python: no torch import.

Every figure comes from `COEFFICIENTS`, one table. Where each stands:
- Per-element sizes are first principles (what PyTorch, peft and bitsandbytes store, read from their code) and were
  checked byte for byte against autograd's saved tensors, per row of tokens, for every architecture: on an H100
  (LoRA and QLoRA, tiny models) and on the CPU in tests/test_plan.py. NF4 weights and constants equal
  bitsandbytes' storage exactly.
- The two MLP-gradient counts (the backward working set) were fitted to the H100 memory matrix of Falcon-7B and a
  ~1B Llama (benchmarks/planner_accuracy.py: 22 runs, every one within 10% of max_memory_reserved, worst +8.6%).
- cuda_context_bytes, allocator_slack_fraction and safety_margin_fraction are estimates.
The speed model has its own table (`plan_speed.SpeedCoefficients`).
Change a figure only here, with the measurement that justifies it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from falcon_desktop.shapes import ModelShape

MIB = 1024**2


@dataclass(frozen=True)
class PlannerCoefficients:
    """Bytes per stored element and fractions: the memory model's only tunable numbers."""

    # --- Activations (per element, autocast in bf16/fp16) ---
    activation_bytes: float = 2.0        # hidden states, q/k/v, MLP intermediates in the compute dtype
    lora_input_bytes: float = 2.0        # each LoRA A keeps its (dropped-out) input; under autocast that copy is bf16
    dropout_mask_bytes: float = 1.0      # torch's native dropout keeps a bool mask per element (LoRA dropout > 0)
    layer_norm_input_bytes: float = 4.0  # CUDA autocast runs layer_norm in fp32: it keeps an fp32 copy of its input
    rms_norm_input_bytes: float = 4.0    # transformers' RMSNorm upcasts to fp32 and keeps that copy
    fused_rms_norm_input_bytes: float = 2.0  # F.rms_norm (fused_lora.py, what the trainer runs) keeps its 16-bit input
    layer_norm_stats_bytes: float = 8.0  # per token per LayerNorm: fp32 mean and rstd
    rms_norm_stats_bytes: float = 4.0    # per token per RMSNorm: fp32 rstd
    flash_lse_bytes: float = 4.0         # flash / efficient SDPA keep an fp32 log-sum-exp per head per token
    math_attention_bytes: float = 4.0    # generation's math SDPA fallback (Falcon) keeps fp32 probabilities
    gelu_mlp_gradient_tensors: int = 2   # MLP-width gradients alive in a layer's backward: GELU's input and output;
    gated_mlp_gradient_tensors: int = 4  # SwiGLU's down input, SiLU output, up and gate (fitted, see above)
    # --- Loss (the head runs on labelled positions only: answer tokens + EOS) ---
    labelled_token_fraction: float = 0.03  # SQuAD: ~5 labelled of ~230 tokens per example, rounded up
    loss_bytes_per_logit: float = 14.0   # bf16 head output (2) + fp32 copy (4) + log-softmax kept (4) + its grad (4)
    # --- Weights ---
    nf4_blocksize: int = 64              # bitsandbytes Linear4bit: one absmax per 64 weights ...
    nf4_nested_blocksize: int = 256      # ... itself 8-bit with an fp32 absmax per 256 blocks (double quantization)
    quant_state_bytes_per_tensor: int = 1092  # NF4 code (16 x fp32) + nested code (256 x fp32) + fp32 offset
    autocast_weight_copy_bytes: float = 2.0  # autocast's bf16 copy of each trainable fp32 weight, kept for backward
    # --- Optimizer (bitsandbytes 8-bit: blockwise, 256 per block; small tensors stay 32-bit) ---
    optimizer_8bit_min_elements: int = 4096
    optimizer_8bit_blocksize: int = 256
    # --- Fixed costs and margins ---
    cuda_context_bytes: int = 500 * MIB  # CUDA context, cuBLAS workspace, kernels (outside PyTorch's allocator)
    allocator_slack_fraction: float = 0.05  # reserved - allocated with expandable segments (set by our CLI)
    safety_margin_fraction: float = 0.08  # share of VRAM the planner leaves unused (other apps, spikes)
    # Steps recorded as CUDA graphs with checkpointed layers reserved up to this much more than the same plans' eager
    # steps, whatever the activations: Llama-3-8B +0.07 to +0.25 GB, Falcon-7B +0.18 to +0.44 GB (against eager rows
    # of older attention code) on the H200 planner matrix (docs/benchmarks.md, session 15). Left out, two Falcon-7B
    # rows peaked 1.7-1.8% above their predictions. Recorded plans without checkpointing measured within the model.
    # It comes out of the safety margin (plan.py, `_recording_room`).
    recorded_checkpoint_bytes: int = 320 * MIB


COEFFICIENTS = PlannerCoefficients()

TRAINING_METHODS = ("full", "lora", "qlora")
METHODS = ("inference", *TRAINING_METHODS)
INFERENCE_DTYPES = ("fp32", "bf16", "fp16", "int8", "nf4")
COMPONENTS = ("weights", "quant_constants", "lora_weights", "gradients", "optimizer", "activations", "loss_buffer",
              "recorded_steps", "cuda_context", "allocator_slack")

_BYTES_PER_WEIGHT = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "nf4": 0.5}


@dataclass(frozen=True)
class Setup:
    """One concrete configuration to price: what `memory_breakdown` needs besides the shape."""

    method: str                       # inference | full | lora | qlora
    seq_len: int
    micro_batch_size: int = 1
    checkpoint_layers: int = 0
    optimizer: str = "adamw_fused"
    lora_targets: tuple[str, ...] = ()
    lora_r: int = 16
    lora_dropout: float = 0.05
    inference_dtype: str = "nf4"
    # The trainer's fused kernels (fused_lora.py): 4-bit LoRA layers as one function (not under FSDP), RMSNorms as
    # F.rms_norm in LoRA and QLoRA. Off: peft's and transformers' own modules (runs measured before them).
    fused_lora: bool = True
    fused_rms_norm: bool = True

    @property
    def weight_format(self) -> str:
        """How the frozen base linear weights are stored."""
        return {"qlora": "nf4", "lora": "bf16", "full": "fp32"}.get(self.method, self.inference_dtype)

    @property
    def tokens(self) -> int:
        return self.micro_batch_size * self.seq_len


def memory_breakdown(shape: ModelShape, setup: Setup, c: PlannerCoefficients = COEFFICIENTS) -> dict[str, int]:
    """Component -> bytes at the peak; the sum is the predicted peak VRAM."""
    trainable = _trainable_tensors(shape, setup)
    parts = {
        "weights": _weight_bytes(shape, setup, c),
        "quant_constants": _quant_constant_bytes(shape, setup.weight_format, c),
        "lora_weights": ((4 + c.autocast_weight_copy_bytes) * shape.lora_parameters(setup.lora_targets, setup.lora_r)
                         if _is_lora(setup) else 0),
        "gradients": 4 * sum(trainable),
        "optimizer": sum(_optimizer_state_bytes(n, setup.optimizer, c) for n in trainable),
        "activations": (_inference_activation_bytes(shape, setup, c) if setup.method == "inference"
                        else _training_activation_bytes(shape, setup, c)),
        "loss_buffer": _loss_buffer_bytes(shape, setup, c) if setup.method != "inference" else 0,
    }
    parts = {name: math.ceil(value) for name, value in parts.items()}
    parts["recorded_steps"] = 0  # the plan adds it where `train` records checkpointed steps (plan.py)
    parts["cuda_context"] = c.cuda_context_bytes
    parts["allocator_slack"] = math.ceil(c.allocator_slack_fraction * sum(v for k, v in parts.items()
                                                                          if k != "cuda_context"))
    return parts


def _is_lora(setup: Setup) -> bool:
    return setup.method in ("lora", "qlora")


def _trainable_tensors(shape: ModelShape, setup: Setup) -> list[int]:
    if setup.method == "full":
        return [shape.total_params]  # all parameters (one figure: only the 8-bit size threshold looks at tensors)
    if _is_lora(setup):
        return shape.lora_tensors(setup.lora_targets, setup.lora_r)
    return []


def _weight_bytes(shape: ModelShape, setup: Setup, c: PlannerCoefficients) -> float:
    if setup.method == "full":  # fp32 master weights + the bf16 copies autocast keeps for backward
        return shape.total_params * (4 + c.autocast_weight_copy_bytes)
    fmt = setup.weight_format
    other = shape.total_params - shape.linear_weight_params  # embeddings, untied head, norms, biases
    other_bytes = other * (4 if fmt == "fp32" else 2)  # quantization leaves these in 16-bit
    if fmt == "nf4":  # two 4-bit codes per byte, per tensor
        per_layer = sum(math.ceil(n_in * n_out / 2) for n_in, n_out in shape.linear_modules().values())
        return shape.num_layers * per_layer + other_bytes
    return shape.linear_weight_params * _BYTES_PER_WEIGHT[fmt] + other_bytes


def _quant_constant_bytes(shape: ModelShape, fmt: str, c: PlannerCoefficients) -> int:
    per_layer = 0
    for n_in, n_out in shape.linear_modules().values():
        if fmt == "nf4":
            blocks = math.ceil(n_in * n_out / c.nf4_blocksize)
            per_layer += blocks + 4 * math.ceil(blocks / c.nf4_nested_blocksize) + c.quant_state_bytes_per_tensor
        elif fmt == "int8":  # LLM.int8: one fp32 scale per output row
            per_layer += 4 * n_out
    return shape.num_layers * per_layer


def _optimizer_state_bytes(elements: int, optimizer: str, c: PlannerCoefficients) -> float:
    """AdamW's two moments: fp32 (8 B/param), or 8-bit blockwise (2 B + two fp32 absmax per block)."""
    if optimizer in ("paged_adamw_8bit", "adamw_8bit") and elements >= c.optimizer_8bit_min_elements:
        return 2 * elements + 2 * 4 * math.ceil(elements / c.optimizer_8bit_blocksize)
    if optimizer == "none":
        return 0
    return 8 * elements


def _fp32_projections(shape: ModelShape, setup: Setup) -> bool:
    """Whether Falcon's projections come out in fp32: in full fine-tuning with biases, as FalconLinear adds its fp32
    bias after the matmul. (In LoRA and QLoRA the loader casts every LayerNorm's output to the compute dtype,
    `model.cast_norm_outputs`, so the 4-bit projections it feeds, which return their input's dtype, are 16-bit.)"""
    return shape.model_type == "falcon" and setup.method == "full" and bool(shape.biased_linears)


def _residual_bytes(setup: Setup, c: PlannerCoefficients) -> float:
    """The residual stream: fp32 in full fine-tuning (fp32 master embeddings), else the compute dtype."""
    return 4.0 if setup.method == "full" else c.activation_bytes


def _layer_norm_input_bytes(setup: Setup, c: PlannerCoefficients) -> float:
    return max(c.layer_norm_input_bytes, _residual_bytes(setup, c))


def _norm_bytes_per_token(shape: ModelShape, setup: Setup, c: PlannerCoefficients) -> float:
    """One norm: its kept input (and, for RMSNorm in full fine-tuning, the normalised x) plus its statistics."""
    h = shape.hidden_size
    if shape.norm_kind == "layernorm":
        return h * _layer_norm_input_bytes(setup, c) + c.layer_norm_stats_bytes
    if setup.fused_rms_norm and _is_lora(setup):
        return h * c.fused_rms_norm_input_bytes + c.rms_norm_stats_bytes
    kept = h * c.rms_norm_input_bytes + c.rms_norm_stats_bytes
    if setup.method == "full":  # `weight * x` keeps the fp32 normalised x for the weight's gradient
        kept += 4 * h
    return kept


def _layer_norms_bytes_per_token(shape: ModelShape, setup: Setup, c: PlannerCoefficients) -> float:
    """A layer's norms. Falcon-40B's two parallel LayerNorms read one tensor: without a cast they keep it once."""
    total = shape.norms_per_layer * _norm_bytes_per_token(shape, setup, c)
    residual = _residual_bytes(setup, c)
    if (shape.parallel_attention and shape.norms_per_layer == 2 and shape.norm_kind == "layernorm"
            and _layer_norm_input_bytes(setup, c) == residual):
        total -= shape.hidden_size * residual
    return total


def generation_uses_math_attention(shape: ModelShape) -> bool:
    """True where transformers' own attention (used for generation) falls back to PyTorch's math SDPA kernel.

    transformers' FalconAttention hands SDPA a single K/V head for multi-query models without `enable_gqa`, and a
    materialised mask; the fused kernels refuse both, so PyTorch takes the math path, which upcasts to fp32 and
    stores the (seq x seq) probabilities of every head. Training never takes it: attention.py's fast path calls
    flash SDPA with `is_causal` and the K/V head broadcast. Llama-family models pass `enable_gqa=True` themselves.
    """
    return shape.model_type == "falcon" and shape.attention_kv_heads != shape.num_heads


def attention_bytes_per_token(shape: ModelShape, c: PlannerCoefficients = COEFFICIENTS,
                              fp32_projections: bool = False) -> float:
    """What flash SDPA keeps for backward in training, per token of one layer: q, k and v as SDPA receives them,
    its output and an fp32 log-sum-exp per head (no mask: rows are right-padded and attention is causal)."""
    q_dim = shape.num_heads * shape.head_dim
    kv_dim = shape.attention_kv_heads * shape.head_dim
    if fp32_projections:  # autocast casts them to bf16 copies; a broadcast K/V head becomes a full-size copy
        qkv = 3 * q_dim
    elif shape.model_type == "falcon" and not shape.new_decoder_architecture and shape.num_kv_heads == shape.num_heads:
        # q, k and v are views of the fused qkv output, which therefore stays alive whole; RoPE (not ALiBi) gives q
        # and k their own rotated copies.
        qkv = q_dim + 2 * kv_dim + (0 if shape.alibi else q_dim + kv_dim)
    else:
        qkv = q_dim + 2 * kv_dim
    return c.activation_bytes * (qkv + q_dim) + c.flash_lse_bytes * shape.num_heads


def layer_activation_bytes_per_token(shape: ModelShape, setup: Setup, c: PlannerCoefficients = COEFFICIENTS) -> float:
    """Bytes one decoder layer keeps for backward per token when it is NOT checkpointed."""
    a, f = c.activation_bytes, shape.intermediate_size
    kept = _layer_norms_bytes_per_token(shape, setup, c)
    fp32_projections = _fp32_projections(shape, setup)
    kept += attention_bytes_per_token(shape, c, fp32_projections)
    kept += (4 if fp32_projections else a) * f * (3 if shape.gated_mlp else 1)  # SiLU in, out and up / GELU input
    if setup.method == "full":  # each linear keeps the bf16 (cast) input its weight gradient needs ...
        inputs = shape.linear_inputs()  # ... but o_proj's is a view of SDPA's output, kept above
        kept += a * sum(n_in for name, (n_in, _) in shape.linear_modules().items()
                        if inputs[name] != "attention_output")
    elif _is_lora(setup):
        kept += _lora_input_bytes(shape, setup, c) + len(setup.lora_targets) * a * setup.lora_r
    return kept


def _lora_input_bytes(shape: ModelShape, setup: Setup, c: PlannerCoefficients) -> float:
    """Inputs kept by the LoRA A matrices (and their dropout masks), one layer, per token.

    peft's adapters keep their own copy of their input in the compute dtype: with dropout because each draws its own
    mask; without, because peft's 16-bit layer casts the input to the fp32 adapter dtype (autocast casts it back, a
    new tensor each time). QLoRA adapters without dropout, and fused ones (fused_lora.QuantizedLoraGroup, which
    keeps the input and each adapter's bool mask), use their input itself (a norm's output is in the compute dtype:
    `model.cast_norm_outputs`), so adapters on one input share it (and o_proj's is a view of the attention output
    that SDPA keeps anyway).
    """
    modules, inputs = shape.linear_modules(), shape.linear_inputs()
    fused = setup.method == "qlora" and setup.fused_lora
    masks = c.dropout_mask_bytes * sum(modules[name][0] for name in setup.lora_targets) if setup.lora_dropout > 0 \
        else 0.0
    if setup.lora_dropout > 0 and not fused:
        return masks + sum(c.lora_input_bytes * modules[name][0] for name in setup.lora_targets)
    copies: dict[str, str] = {}
    for name in setup.lora_targets:
        source = inputs[name]
        if setup.method != "qlora":
            copies[name] = name  # its own cast copy
        elif source != "attention_output":
            copies[source] = name  # the input itself, shared by the adapters that read it
        # else: a view of SDPA's output, which the attention already keeps
    return masks + sum(c.lora_input_bytes * modules[name][0] for name in copies.values())


def kept_activation_bytes(shape: ModelShape, setup: Setup, c: PlannerCoefficients = COEFFICIENTS) -> float:
    """What the forward pass leaves for backward: the first `checkpoint_layers` layers keep only their input."""
    k = setup.checkpoint_layers
    per_token = (k * _residual_bytes(setup, c) * shape.hidden_size
                 + (shape.num_layers - k) * layer_activation_bytes_per_token(shape, setup, c)
                 + _norm_bytes_per_token(shape, setup, c))  # the final norm
    alibi_mask = 0.0
    if shape.alibi:  # the ALiBi bias is materialised once as a (batch, heads, seq, seq) mask shared by all layers
        alibi_mask = c.activation_bytes * setup.micro_batch_size * shape.num_heads * setup.seq_len**2
    return setup.tokens * per_token + alibi_mask


def _training_activation_bytes(shape: ModelShape, setup: Setup, c: PlannerCoefficients) -> float:
    """Kept activations plus what backward adds at its peak.

    Backward frees the kept layers before it reaches the checkpointed ones, which then recompute one at a time: only
    when every layer is checkpointed does a recomputed layer coexist with all that is kept. QLoRA dequantizes one
    weight to 16-bit per matmul. A layer's backward holds gradients of its MLP-width tensors; the loss buffer is
    freed before that, so only what the working set needs beyond the loss buffer is added here.
    """
    one_layer = setup.tokens * layer_activation_bytes_per_token(shape, setup, c)
    recompute = one_layer if setup.checkpoint_layers == shape.num_layers else 0.0
    dequantized = 2 * shape.largest_linear_params if setup.weight_format == "nf4" else 0
    hidden_bytes = 4.0 if _fp32_projections(shape, setup) else c.activation_bytes
    gradients = c.gated_mlp_gradient_tensors if shape.gated_mlp else c.gelu_mlp_gradient_tensors
    working = setup.tokens * gradients * shape.intermediate_size * hidden_bytes
    beyond_loss = max(0.0, working - _loss_buffer_bytes(shape, setup, c))
    return kept_activation_bytes(shape, setup, c) + recompute + dequantized + beyond_loss


def _inference_activation_bytes(shape: ModelShape, setup: Setup, c: PlannerCoefficients) -> float:
    """KV cache for the prompt plus the largest intermediates of one layer's prefill and the last token's logits."""
    a = c.activation_bytes
    kv_cache = setup.tokens * shape.num_layers * 2 * shape.attention_kv_heads * shape.head_dim * a
    widest = max(n_out for _, n_out in shape.linear_modules().values())
    working = setup.tokens * a * (2 * widest + 2 * shape.hidden_size)  # a projection's input, output and residual
    if generation_uses_math_attention(shape):
        working += setup.tokens * c.math_attention_bytes * shape.num_heads * setup.seq_len
    dequantized = 2 * shape.largest_linear_params if setup.weight_format in ("nf4", "int8") else 0
    logits = setup.micro_batch_size * shape.vocab_size * 4
    return kv_cache + working + dequantized + logits


def _loss_buffer_bytes(shape: ModelShape, setup: Setup, c: PlannerCoefficients) -> float:
    labelled = max(setup.micro_batch_size, math.ceil(setup.tokens * c.labelled_token_fraction))
    return labelled * shape.vocab_size * c.loss_bytes_per_logit


def peak_bytes(shape: ModelShape, setup: Setup, c: PlannerCoefficients = COEFFICIENTS) -> int:
    return sum(memory_breakdown(shape, setup, c).values())
