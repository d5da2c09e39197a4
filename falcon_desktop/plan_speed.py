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

    # Fitted together (scipy differential evolution on the worst plus half the RMS log error; `benchmarks/fit_speed.py`
    # refits) over every row of docs/planner.md's two speed tables but their known misses: the H200 step matrix of
    # Falcon-7B and the H100 one of a ~1B Llama (benchmarks/results/matrix-*.json), the H200 runs of
    # benchmarks/results/speed-measured.json (SmolLM2-135M, Falcon-7B, Llama-3-8B, the 8B Unsloth side by side) and
    # the H200 planner matrix (planner-matrix.json: three sizes x two LoRA target sets x 8/12/24 GiB caps, our
    # trainer on each plan). Refitted in session 8, when Falcon's LayerNorm outputs went bf16
    # (`model.cast_norm_outputs`) and its QLoRA step 1.1-1.3x faster. Six coefficients sit at an edge of the box the fit
    # searches (fit_speed.BOUNDS: compute_efficiency, layer_seconds, lora_module_seconds, nf4_linear_seconds,
    # micro_batch_seconds, unhidden_share): rows measured on different days and hosts disagree by up to 30%.
    # What pins each one down:
    # --- GPU (seconds at REFERENCE_TFLOPS; other cards scale by their peak) ---
    # Model FLOPs utilisation of the matmuls. The Falcon-7B qkv matrix on the H200, one micro-batch per step: 512x4
    # rows took 0.150 s and 512x16 rows 0.494 s, so each added token costs ~56 us for 26.9 GFLOP.
    compute_efficiency: float = 0.60
    # Dequantizing the NF4 weights once per pass (forward, backward, each recomputed forward), per weight: ~9 ms a
    # pass for Falcon-7B's 6.6e9 decoder weights (bitsandbytes writes a bf16 copy of each weight before its matmul).
    nf4_dequantize_seconds_per_weight: float = 1.4e-12
    # Each LoRA module's element-wise work (peft's fp32 copy of its input, dropout, the scaled add of B's output,
    # and their backward), per element of its input and output, per token. Falcon-7B 512x16 without checkpointing:
    # 0.494 s on query_key_value alone, 0.591 s on all four kinds (matrix-falcon-7b.json, H200), though the three
    # added adapters add almost no FLOPs.
    lora_element_seconds: float = 11.2e-12
    # --- CPU (launch, autograd and Python work, in seconds on the host CPUs of the lent H100/H200 machines) ---
    # One decoder layer's own kernels, forward + backward (norms, attention, base matmuls, MLP activations,
    # residual adds). SmolLM2-135M, 30 layers, 7 LoRA targets, 16-bit, on the H200, run alone: 0.2555 s per step of
    # one micro-batch, 7,474 kernel launches, 29.7 ms of GPU kernel time (GPU busy 7%; issue #16's tuning notes,
    # step-profile-smol-sdpa.json).
    layer_seconds: float = 3.0e-3
    # Each LoRA-targeted module on top: dropout, A, B, scale and add, forward and backward. The ~1B Llama matrix
    # row with 2 targets (512x4, 0.186 s) against 7 (512x16 at 256 tokens, 0.198 s), and the planner matrix's
    # attention-only rows against its all-linear ones, bound it.
    lora_module_seconds: float = 0.60e-3
    # Each 4-bit base linear on top, forward and backward: bitsandbytes' Python layer, its quant-state handling and
    # the dequantize launch before every matmul. SmolLM2-135M alone on the H200: 13,233 tokens/s on a 16-bit base,
    # 10,979 on a 4-bit one (speed-measured.json); a Falcon layer has 4 linears, a Llama layer 7.
    nf4_linear_seconds: float = 0.30e-3
    # A checkpointed layer runs its forward again in backward (plus the checkpoint's own hooks): this share of the
    # layer's launches and LoRA traffic again. The ~1B Llama matrix, 512x16: 0.233 s without, 0.333 s with all 22
    # layers checkpointed; the planner matrix's ~1B Llama at 0, 10 and 15 checkpointed layers (attention-only).
    # Fitted on torch's non-reentrant checkpoint; eager steps now run model.GraphlessCheckpoint, a third less host
    # work for checkpointing on the CPU box but inside the H200's run-to-run spread (docs/benchmarks.md): not refitted.
    forward_share: float = 0.90
    # Per micro-batch outside the layers: embedding, the head on the labelled positions, loss, the copy to the GPU.
    # Small beside each micro-batch's per-layer launches, which the fit now carries most of a micro-batch's cost in.
    micro_batch_seconds: float = 0.005
    # Per optimizer step: clip, fused AdamW over the adapters, zero_grad and the host syncs of logging.
    step_seconds: float = 0.033
    # How much of the shorter of the GPU and CPU work is not hidden behind the longer (host syncs inside the step:
    # the loss's labelled positions, the gradient norm). Fitted to none since session 8: the per-micro-batch and
    # per-layer costs account for SmolLM2 at 32 rows vs 16 and the ~1B Llama at 512x32 vs 512x16.
    unhidden_share: float = 0.0
    # --- Recorded steps (step_graphs.py: where the plan chooses them, plan_time.choose_recording, `train` replays
    # each micro-batch as a CUDA graph, its rows padded to RECORDED_PAD tokens; the host's launch work is gone, and a
    # step's loss is read after the next is queued, so the host's work per step hides behind the GPU's). Fitted in
    # session 9 on the four H200 runs of benchmarks/results/step-graphs-h200/long/ (train defaults, whole H200:
    # SmolLM2-135M and ~1B Llama shapes, Falcon-7B on all four targets and on query_key_value), recordings of new
    # shapes included: a grid over the two, least worst error (+0.4%, +6.9%, -6.9%, +4.7%; docs/planner.md). ---
    # The GPU still runs the recorded kernels one after another, each with its fixed start-up: this share of the
    # eager launch work remains, as GPU time. SmolLM2: 9,091 kernels in 35.7 ms of kernel time a step.
    # Refitted in session 15 with these two alone (`fit_speed.py --only recorded_launch_share,recorded_step_seconds`)
    # once the recorded planner matrix had its Llama-3-8B and Falcon-7B rows: at 0.11 (and 0.006 below) those ran
    # 10-24% faster than predicted (a 7B-8B layer's kernels are long enough to hide their start-ups); now every
    # row fitted is within 25% (worst: an eager row, Falcon-7B attention at 8 GiB, +24.6% in hours).
    recorded_launch_share: float = 0.0034
    # Per optimizer step that the queueing does not hide (the recordings of new shapes, amortised; graph launch).
    recorded_step_seconds: float = 0.0262
    # --- Fused kernels (fused_lora.py: what `train` runs since session 11; the rows above were measured on peft's
    # layers and transformers' RMSNorm, and keep their terms). These three were fitted alone, every other figure
    # held (`fit_speed.py --only fused_lora_element_seconds,fused_lora_module_seconds,fused_rms_norm_saved_seconds`),
    # on the H200 planner matrix (24 rows: Falcon-7B's six of session 11, the others re-measured in session 12 with
    # siblings grouped and adapter casts kept) and the Unsloth side by sides of session 11 (speed-measured.json):
    # every fitted row within 25% (worst: Llama-3-8B at 24 GiB from session 8's peft matrix, +23.2%). ---
    # GPU: the adapter's element-wise work left (dropout, its mask again in backward; the add is inside the matmul).
    fused_lora_element_seconds: float = 7.9e-12
    # CPU: per adapted layer, its share of the autograd function its siblings share, forward and backward, instead
    # of peft's modules and nodes.
    fused_lora_module_seconds: float = 0.42e-3
    # CPU saved per RMSNorm (Llama family) run as F.rms_norm's one kernel instead of transformers' seven.
    fused_rms_norm_saved_seconds: float = 0.17e-3
    # CPU per Llama-family layer that eager steps on attention.py's training fast path (session 14: q and k rotated
    # in one autograd function, SDPA called directly) cost less than the model of session 12 priced. Fitted, not
    # isolated: with `fused_lora_module_seconds` (0.38 -> 0.42 ms), chosen together on a grid, every other figure
    # held, over every row fit_speed.py fits (the planner matrix's SmolLM2, ~1B and 8B rows re-measured in session
    # 14, eager: attention-only rows ran 1.0-1.3x their session 12 speed, all-linear 0.8-1.4x; the 8B and ~1B side by
    # sides): worst error 24.6% (SmolLM2 all-linear at 8 GiB, whose one plan measured 10,546-13,416 tokens/s at the
    # three caps of one call). The rotation itself cut ~570 of ~11,300 kernel launches a step of the 8B profile
    # (benchmarks/results/rotary-h200/profile-8b-roll-1b against unsloth-graphless-h200/profile-8b), ~6 a layer
    # pass, less than this figure implies: the rest is these calls' host running faster than session 12's, which
    # the figure carries for the Llama family alone (Falcon-7B's rows are session 11's).
    rotary_fast_path_saved_seconds: float = 0.60e-3


SPEED = SpeedCoefficients()
# The model types whose attention attention.py's fast path computes in training (ROTARY_ATTENTIONS; no torch here).
ROTARY_FAST_PATH_TYPES = ("llama", "mistral", "qwen2")
# Recorded micro-batches pad their length to a multiple of this (step_graphs.PAD_MULTIPLE; no torch import here).
RECORDED_PAD = 64


# Real examples are not one length, and the trainer's steps are bucketed by length (`schedule_steps` sorts each
# chunk of examples before cutting it into steps), so a step of long examples splits into more micro-batches than
# one of short ones. The lengths of a step relative to the data's mean, at the midpoints of ten equal shares of the
# steps: SQuAD v2's dev half as the trainer tokenizes it at 512 tokens with the Falcon tokenizer (6,078 examples,
# 206.6 tokens each on average). Over that epoch's steps of 16 examples they give the mean micro-batches per step
# exactly: 2.2, 1.5 and 1.2 for token budgets of 2,048, 3,072 and 4,096 (the mean length alone says 2, 2 and 1).
SQUAD_LENGTH_SPREAD = (0.62, 0.69, 0.75, 0.80, 0.86, 0.93, 1.02, 1.14, 1.33, 1.82)
ONE_LENGTH = (1.0,)   # rows all of one length (synthetic full-length rows)


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
    length_spread: tuple[float, ...] = SQUAD_LENGTH_SPREAD   # step lengths / mean length, equally likely
    recorded: bool = False          # steps replayed as CUDA graphs (step_graphs.py), not launched eagerly
    fused_lora: bool = False        # 4-bit LoRA layers as fused_lora.py's one function (train on one GPU), not peft's
    fused_rms_norm: bool = False    # RMSNorms as F.rms_norm (fused_lora.py), not transformers' own
    rotary_fast_path: bool = False  # Llama-family attention through attention.py's training fast path


@dataclass(frozen=True)
class SpeedEstimate:
    tokens_per_second: float
    step_seconds: float             # mean over the steps of the length spread
    micro_batches: float            # mean per optimizer step, as the trainer's token budget splits the examples
    gpu_seconds: float              # one micro-batch's GPU work, at the mean length
    cpu_seconds: float              # one micro-batch's CPU launch work
    dequantize_seconds: float       # the 4-bit dequantization within gpu_seconds (0 on a 16-bit base)
    bound: str                      # "compute" | "overhead" | "recorded" (CUDA graphs: the GPU's work alone)

    def reason(self, gpu_name: str, tflops: float, c: SpeedCoefficients = SPEED) -> str:
        """Which bound sets the speed, with the figures behind it."""
        figures = (f"per micro-batch {1000 * self.gpu_seconds:,.0f} ms of GPU work (FLOPs at "
                   f"{c.compute_efficiency:.0%} of {gpu_name}'s {tflops:g} TFLOPS, adapter traffic"
                   f"{', 4-bit dequantization' if self.dequantize_seconds else ''}) vs "
                   f"{1000 * self.cpu_seconds:,.0f} ms of CPU kernel launches; "
                   f"{self.micro_batches:.3g} micro-batch(es) + {1000 * c.step_seconds:.0f} ms per optimizer step; "
                   "calibrated on H100/H200 runs (docs/planner.md)")
        if self.bound == "recorded":
            return (f"recorded as CUDA graphs (no layer checkpointed): per micro-batch {1000 * self.gpu_seconds:,.0f} "
                    f"ms of GPU work (FLOPs at {c.compute_efficiency:.0%} of {gpu_name}'s {tflops:g} TFLOPS, adapter "
                    f"traffic{', 4-bit dequantization' if self.dequantize_seconds else ''}) plus "
                    f"{1000 * c.recorded_launch_share * self.cpu_seconds:,.0f} ms of kernel start-ups, lengths padded "
                    f"to {RECORDED_PAD}; {self.micro_batches:.3g} micro-batch(es) per optimizer step; calibrated on "
                    "H200 runs (docs/planner.md)")
        if self.bound == "compute":
            return f"compute-bound: {figures}"
        return f"overhead-bound (the GPU waits on the CPU's kernel launches; a slower CPU is slower): {figures}"


def micro_batches_per_step(workload: Workload, tokens_per_example: int | None = None) -> int:
    """How many micro-batches the trainer cuts a step of examples of this length (default: the mean) into: as many
    rows as fit the token budget each."""
    rows_per_micro = max(1, workload.token_budget // (tokens_per_example or workload.tokens_per_example))
    return math.ceil(workload.effective_batch_size / rows_per_micro)


@dataclass(frozen=True)
class _MicroBatch:
    gpu: float
    cpu: float
    dequantize: float


def _micro_batch(shape: ModelShape, workload: Workload, tokens: float, context: int, tflops: float,
                 c: SpeedCoefficients) -> _MicroBatch:
    """One forward + backward of `tokens` tokens in rows of `context` tokens: its GPU and CPU seconds."""
    layers = shape.num_layers
    checkpointed = min(workload.checkpoint_layers, layers) / layers
    flops = training_flops_per_token(shape, workload.method, checkpointed, context, workload.trainable_params,
                                     workload.labelled_fraction)
    gpu = tokens * flops / (c.compute_efficiency * tflops * 1e12)
    fused = workload.fused_lora and workload.method == "qlora"
    lora_elements = sum(sum(shape.linear_modules()[name]) for name in workload.lora_targets) * layers
    element_seconds = c.fused_lora_element_seconds if fused else c.lora_element_seconds
    gpu += tokens * lora_elements * element_seconds * (1 + c.forward_share * checkpointed) * REFERENCE_TFLOPS / tflops
    dequantize = 0.0
    if workload.method == "qlora":
        dequantize = (2 + checkpointed) * shape.linear_weight_params * c.nf4_dequantize_seconds_per_weight * \
            REFERENCE_TFLOPS / tflops
    per_layer = c.layer_seconds + len(workload.lora_targets) * (c.fused_lora_module_seconds if fused
                                                                else c.lora_module_seconds)
    if workload.method == "qlora":
        per_layer += len(shape.linear_modules()) * c.nf4_linear_seconds
    if workload.fused_rms_norm and shape.norm_kind == "rmsnorm":
        per_layer -= shape.norms_per_layer * c.fused_rms_norm_saved_seconds
    if workload.rotary_fast_path and shape.model_type in ROTARY_FAST_PATH_TYPES:
        per_layer -= c.rotary_fast_path_saved_seconds
    cpu = layers * per_layer * (1 + c.forward_share * checkpointed) + c.micro_batch_seconds
    return _MicroBatch(gpu + dequantize, cpu, dequantize)


def estimate_speed(shape: ModelShape, workload: Workload, tflops: float,
                   c: SpeedCoefficients = SPEED) -> SpeedEstimate:
    """Real tokens per second of `workload` on a card of `tflops` dense bf16 peak: the tokens of one step at each
    length of the spread over the seconds of those steps."""
    tokens = seconds = micro_batches = 0.0
    for share in workload.length_spread:
        length = max(1, round(share * workload.tokens_per_example))
        computed = -(-length // RECORDED_PAD) * RECORDED_PAD if workload.recorded else length
        micro = micro_batches_per_step(workload, computed)
        work = _micro_batch(shape, workload, workload.effective_batch_size * computed / micro, computed, tflops, c)
        tokens += workload.effective_batch_size * length
        if workload.recorded:
            seconds += micro * (work.gpu + c.recorded_launch_share * work.cpu) + c.recorded_step_seconds
        else:
            seconds += micro * (max(work.gpu, work.cpu) + c.unhidden_share * min(work.gpu, work.cpu)) + \
                c.step_seconds
        micro_batches += micro
    steps = len(workload.length_spread)
    typical = _micro_batch(shape, workload, workload.effective_batch_size * workload.tokens_per_example /
                           micro_batches_per_step(workload), workload.tokens_per_example, tflops, c)
    bound = "recorded" if workload.recorded else "compute" if typical.gpu >= typical.cpu else "overhead"
    return SpeedEstimate(tokens / seconds, seconds / steps, micro_batches / steps, typical.gpu, typical.cpu,
                         typical.dequantize, bound)
