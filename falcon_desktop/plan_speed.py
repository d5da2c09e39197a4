"""How fast a training setup runs: the GPU's work or the CPU's kernel launches, whichever is longer, per micro-batch.

A training step of our trainer is `micro_batches` forward + backward passes and one optimizer step. Each pass costs
the GPU its FLOPs at an efficiency of the card's peak plus, with a 4-bit base, the dequantization of every weight;
and it costs the CPU the Python, autograd and launch work of its kernels, a fixed amount per decoder layer and per
LoRA-targeted module whatever the number of tokens. The CPU queues kernels ahead of the GPU, so a pass takes the
longer of the two: a 7B model is compute-bound, a 135M one overhead-bound (its GPU idles ~90% of the step).
Every coefficient below names the run it was fitted on; `docs/planner.md` ("speed: estimate vs measured") and
`benchmarks/planner_speed.py` compare the model with every measured run. Pure Python: no torch import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from falcon_desktop.plan_search import training_flops_per_token
from falcon_desktop.shapes import ModelShape

# The card the GPU-side coefficients were measured on: its dense bf16 peak (H100 and H200 share it, hardware.py).
REFERENCE_TFLOPS = 989.0


@dataclass(frozen=True)
class SpeedCoefficients:
    """The speed model's only tunable numbers. CPU times are seconds on the GPU machines' host CPUs (server
    cores of the lent H100 and H200 machines); a desktop CPU is similar or slower, so overhead-bound estimates
    there are, if anything, optimistic."""

    # Fitted together (scipy Nelder-Mead on the worst and the RMS log error) over every row of docs/planner.md's
    # "speed: estimate vs measured" table: the H100 step matrices of Falcon-7B and a ~1B Llama
    # (benchmarks/results/matrix-*.json), the H100 Falcon-7B trainer runs (ours*.json) and the H200 runs of
    # benchmarks/results/speed-measured.json (SmolLM2-135M, Falcon-7B, Llama-3-8B). What pins each one down:
    # --- GPU (seconds at REFERENCE_TFLOPS; other cards scale by their peak) ---
    # Model FLOPs utilisation of the matmuls. The Falcon-7B qkv matrix, one micro-batch per step: 512x4 rows took
    # 0.279 s and 512x16 rows 0.642 s, so each added token costs ~59 us for 26.9 GFLOP.
    compute_efficiency: float = 0.42
    # Dequantizing the NF4 weights once per pass (forward, backward, each recomputed forward), per weight: ~6 ms a
    # pass for Falcon-7B's 6.6e9 decoder weights, about what reading 0.5 B and writing 2 B per weight takes at
    # HBM3 bandwidth.
    nf4_dequantize_seconds_per_weight: float = 1.0e-12
    # Each LoRA module's element-wise work (peft's fp32 copy of its input, dropout, the scaled add of B's output,
    # and their backward), per element of its input and output, per token. Falcon-7B 512x16 without checkpointing:
    # 0.642 s on query_key_value alone, 0.901 s on all four kinds (matrix-falcon-7b.json), though the three added
    # adapters add almost no FLOPs.
    lora_element_seconds: float = 1.1e-11
    # --- CPU (launch, autograd and Python work, in seconds on the host CPUs of the lent H100/H200 machines) ---
    # One decoder layer's own kernels, forward + backward (norms, attention, 16-bit or 4-bit base matmuls, MLP
    # activations, residual adds). SmolLM2-135M, 30 layers, 7 LoRA targets, on the H200, run alone: 0.2555 s per
    # step of one micro-batch, 7,474 kernel launches, 29.7 ms of GPU kernel time (GPU busy 7%; issue #16's tuning
    # notes, step-profile-smol-sdpa.json): ~8.5 ms of CPU per layer with its adapters.
    layer_seconds: float = 6.0e-3
    # Each LoRA-targeted module on top: dropout, A, B, scale and add, forward and backward. The ~1B Llama matrix
    # row with 2 targets (512x4, 0.186 s) against 7 (512x16 at 256 tokens, 0.198 s) bounds it.
    lora_module_seconds: float = 0.34e-3
    # A checkpointed layer runs its forward again in backward (plus the checkpoint's own hooks): this share of the
    # layer's launches and LoRA traffic again. The ~1B Llama matrix, 512x16: 0.233 s without, 0.333 s with all 22
    # layers checkpointed.
    forward_share: float = 0.76
    # Per micro-batch outside the layers: embedding, the head on the labelled positions, loss, the copy to the GPU.
    micro_batch_seconds: float = 0.0115
    # Per optimizer step: clip, fused AdamW over the adapters, zero_grad and the host syncs of logging.
    step_seconds: float = 0.0475
    # How much of the shorter of the GPU and CPU work is not hidden behind the longer: host syncs inside the step
    # (the loss's labelled positions, the gradient norm) let neither run ahead. SmolLM2 at 32 rows vs 16, and the
    # ~1B Llama at 512x32 vs 512x16, grow by more than the longer side alone.
    unhidden_share: float = 0.09


SPEED = SpeedCoefficients()


@dataclass(frozen=True)
class Workload:
    """One training setup as the speed model sees it."""

    method: str                     # full | lora | qlora
    lora_targets: tuple[str, ...]
    trainable_params: int
    effective_batch_size: int       # examples per optimizer step
    token_budget: int               # micro-batch x max_seq_len: the trainer's tokens per micro-batch
    tokens_per_example: int         # mean real tokens per example (full-length rows: the sequence length)
    checkpoint_layers: int
    labelled_fraction: float        # share of tokens the LM head and loss see


@dataclass(frozen=True)
class SpeedEstimate:
    tokens_per_second: float
    step_seconds: float
    micro_batches: int              # per optimizer step, as the trainer's token budget splits the examples
    gpu_seconds: float              # one micro-batch's GPU work
    cpu_seconds: float              # one micro-batch's CPU launch work
    dequantize_seconds: float       # the 4-bit dequantization within gpu_seconds (0 on a 16-bit base)
    bound: str                      # "compute" | "overhead"

    def reason(self, gpu_name: str, tflops: float, c: SpeedCoefficients = SPEED) -> str:
        """Which bound sets the speed, with the figures behind it."""
        figures = (f"per micro-batch {1000 * self.gpu_seconds:,.0f} ms of GPU work (FLOPs at "
                   f"{c.compute_efficiency:.0%} of {gpu_name}'s {tflops:g} TFLOPS, adapter traffic"
                   f"{', 4-bit dequantization' if self.dequantize_seconds else ''}) vs "
                   f"{1000 * self.cpu_seconds:,.0f} ms of CPU kernel launches; "
                   f"{self.micro_batches} micro-batch(es) + {1000 * c.step_seconds:.0f} ms per optimizer step; "
                   "calibrated on H100/H200 runs (docs/planner.md)")
        if self.bound == "compute":
            return f"compute-bound: {figures}"
        return f"overhead-bound (the GPU waits on the CPU's kernel launches; a slower CPU is slower): {figures}"


def micro_batches_per_step(workload: Workload) -> int:
    """How many micro-batches the trainer cuts a step into: as many rows as fit the token budget each."""
    rows_per_micro = max(1, workload.token_budget // workload.tokens_per_example)
    return math.ceil(workload.effective_batch_size / rows_per_micro)


def estimate_speed(shape: ModelShape, workload: Workload, tflops: float,
                   c: SpeedCoefficients = SPEED) -> SpeedEstimate:
    """Real tokens per second of `workload` on a card of `tflops` dense bf16 peak."""
    micro = micro_batches_per_step(workload)
    step_tokens = workload.effective_batch_size * workload.tokens_per_example
    tokens = step_tokens / micro
    layers = shape.num_layers
    checkpointed = min(workload.checkpoint_layers, layers) / layers
    flops = training_flops_per_token(shape, workload.method, checkpointed, workload.tokens_per_example,
                                     workload.trainable_params, workload.labelled_fraction)
    gpu = tokens * flops / (c.compute_efficiency * tflops * 1e12)
    lora_elements = sum(sum(shape.linear_modules()[name]) for name in workload.lora_targets) * layers
    gpu += tokens * lora_elements * c.lora_element_seconds * (1 + c.forward_share * checkpointed) * \
        REFERENCE_TFLOPS / tflops
    dequantize = 0.0
    if workload.method == "qlora":
        dequantize = (2 + checkpointed) * shape.linear_weight_params * c.nf4_dequantize_seconds_per_weight * \
            REFERENCE_TFLOPS / tflops
    gpu += dequantize
    per_layer = c.layer_seconds + len(workload.lora_targets) * c.lora_module_seconds
    cpu = layers * per_layer * (1 + c.forward_share * checkpointed) + c.micro_batch_seconds
    step = micro * (max(gpu, cpu) + c.unhidden_share * min(gpu, cpu)) + c.step_seconds
    return SpeedEstimate(step_tokens / step, step, micro, gpu, cpu, dequantize,
                         "compute" if gpu >= cpu else "overhead")
