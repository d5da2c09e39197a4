"""The planner's search: price configurations with the memory model and find the best one that fits.

"Best" follows the order the trainer cares about: the requested sequence length (else the longest that fits),
then the largest micro-batch (fewer, fuller kernel launches), then the fewest checkpointed layers (each costs one
extra forward). Memory grows with micro-batch and sequence length and falls with every checkpointed layer, so each
step is a binary search. Pure Python, like `plan.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

from falcon_desktop.plan_memory import PlannerCoefficients, Setup, memory_breakdown
from falcon_desktop.shapes import DEFAULT_LORA_TARGETS, ModelShape

if TYPE_CHECKING:
    from falcon_desktop.plan import PlanRequest

SEQ_LEN_STEP = 64        # shortened sequence lengths are multiples of this
MIN_AUTO_SEQ_LEN = 256   # never shorten below this on our own: SQuAD prompts average ~214 tokens


@dataclass(frozen=True)
class Choice:
    seq_len: int
    micro_batch_size: int
    checkpoint_layers: int
    optimizer: str

    def rank(self) -> tuple[int, int, int]:
        """Better: longer sequences, then bigger micro-batches, then fewer recomputed layers."""
        return self.seq_len, self.micro_batch_size, -self.checkpoint_layers


class Pricer:
    """Prices configurations of one model and request."""

    def __init__(self, shape: ModelShape, request: PlanRequest, targets: tuple[str, ...], c: PlannerCoefficients):
        self.shape, self.request, self.targets, self.c = shape, request, targets, c

    def setup(self, choice: Choice, method: str | None = None, inference_dtype: str | None = None) -> Setup:
        """`choice` for `method` (default: the request's); other methods get the default LoRA targets."""
        method = method or self.request.method
        lora = method in ("lora", "qlora")
        training_optimizer = "adamw_fused" if choice.optimizer == "none" else choice.optimizer
        return Setup(method=method, seq_len=choice.seq_len, micro_batch_size=choice.micro_batch_size,
                     checkpoint_layers=choice.checkpoint_layers if method != "inference" else 0,
                     optimizer="none" if method == "inference" else training_optimizer,
                     lora_targets=(self.targets or DEFAULT_LORA_TARGETS[self.shape.model_type]) if lora else (),
                     lora_r=self.request.lora_r, lora_dropout=self.request.lora_dropout,
                     inference_dtype=inference_dtype or self.request.inference_dtype,
                     fused_lora=self.request.fused_kernels, fused_rms_norm=self.request.fused_kernels and lora)

    def breakdown(self, choice: Choice) -> dict[str, int]:
        return memory_breakdown(self.shape, self.setup(choice), self.c)

    def peak(self, choice: Choice) -> int:
        return sum(self.breakdown(choice).values())


def largest(low: int, high: int, ok: Callable[[int], bool]) -> int | None:
    """The largest n in [low, high] with ok(n), where ok holds up to some n and fails after it."""
    if high < low or not ok(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if ok(middle) else (low, middle - 1)
    return low


def most_useful_checkpoint_layers(layers: int) -> int:
    """Checkpointing the last layer never pays: backward needs its activations at once, so it would recompute
    them straight away while every checkpointed input is still kept. The least memory is at layers - 1."""
    return max(layers - 1, 0)


def fit_at(pricer: Pricer, seq_len: int, optimizer: str, usable: float) -> Choice | None:
    """The largest micro-batch that fits at this length, then the fewest checkpointed layers that fit it."""
    request, layers = pricer.request, pricer.shape.num_layers
    forced = request.gradient_checkpointing
    fewest, most = ((layers, layers) if forced else (0, 0) if forced is False else
                    (0, most_useful_checkpoint_layers(layers)))

    def fits(micro: int, ckpt: int) -> bool:
        return pricer.peak(Choice(seq_len, micro, ckpt, optimizer)) <= usable

    if request.micro_batch_size is not None:
        micro: int | None = request.micro_batch_size if fits(request.micro_batch_size, most) else None
    else:
        micro = largest(1, request.effective_batch_size, lambda m: fits(m, most))
        if micro is not None:  # as many rows as the same number of accumulation steps needs, no more
            micro = math.ceil(request.effective_batch_size / math.ceil(request.effective_batch_size / micro))
    if micro is None:
        return None
    # Memory falls with every layer checkpointed: the fewest that fit, counting down from `most`.
    spared = largest(0, most - fewest, lambda n: fits(micro, most - n))
    return Choice(seq_len, micro, most - (spared or 0), optimizer)


def best_fit(pricer: Pricer, optimizer: str, usable: float) -> Choice | None:
    """At the requested length if possible, else the longest multiple of SEQ_LEN_STEP down to MIN_AUTO_SEQ_LEN."""
    requested = pricer.request.max_seq_len
    choice = fit_at(pricer, requested, optimizer, usable)
    if choice is not None or requested <= MIN_AUTO_SEQ_LEN:
        return choice
    steps = largest(MIN_AUTO_SEQ_LEN // SEQ_LEN_STEP, (requested - 1) // SEQ_LEN_STEP,
                    lambda n: fit_at(pricer, n * SEQ_LEN_STEP, optimizer, usable) is not None)
    return None if steps is None else fit_at(pricer, steps * SEQ_LEN_STEP, optimizer, usable)


def least_memory(pricer: Pricer) -> Choice:
    """The request's cheapest configuration: one row (or the forced micro-batch), all useful checkpointing."""
    request, layers = pricer.request, pricer.shape.num_layers
    forced = request.gradient_checkpointing
    checkpointed = layers if forced else 0 if forced is False else most_useful_checkpoint_layers(layers)
    return Choice(request.max_seq_len, request.micro_batch_size or 1, checkpointed, "paged_adamw_8bit")


def choose_training(pricer: Pricer, usable: float) -> tuple[Choice | None, str]:
    """The best configuration that fits (None if none does) and why its optimizer.

    Only the trained parameters have optimizer states: all of them in full fine-tuning, only the adapters in LoRA
    (a few tens of MB for 7B), so fused fp32 AdamW is kept unless 8-bit states buy a better configuration.
    """
    fused, paged = (best_fit(pricer, name, usable) for name in ("adamw_fused", "paged_adamw_8bit"))
    trained = "all parameters are" if pricer.request.method == "full" else "only the LoRA adapters are"
    if fused is not None and (paged is None or fused.rank() >= paged.rank()):
        return fused, (f"fused AdamW with fp32 states, 8 B per trained parameter ({trained} trained): exact and "
                       "fastest, and 8-bit states would not buy a better configuration")
    if paged is not None:
        return paged, (f"paged 8-bit AdamW, 2 B per trained parameter instead of 8 ({trained} trained): it buys a "
                       "longer sequence, a bigger micro-batch or fewer recomputed layers, and its pages spill to "
                       "CPU RAM under pressure")
    return None, "8-bit paged AdamW: the least memory"


def longest_fitting_seq(pricer: Pricer, usable: float) -> int | None:
    """Below the automatic floor: the longest multiple of SEQ_LEN_STEP at which one row fits."""
    request = pricer.request
    one_row = Pricer(pricer.shape, replace(request, micro_batch_size=request.micro_batch_size or 1),
                     pricer.targets, pricer.c)
    steps = largest(1, (request.max_seq_len - 1) // SEQ_LEN_STEP,
                    lambda n: fit_at(one_row, n * SEQ_LEN_STEP, "paged_adamw_8bit", usable) is not None)
    return None if steps is None else steps * SEQ_LEN_STEP


def training_flops_per_token(shape: ModelShape, method: str, checkpoint_fraction: float, context_tokens: int,
                             trainable_params: int, labelled_fraction: float) -> float:
    """Model FLOPs per trained token, counted as in PaLM (appendix B).

    Each weight costs 2 FLOPs forward, 2 for its input's gradient and, when trained, 2 for its own gradient: 6N
    for full fine-tuning, 4N for LoRA/QLoRA (frozen base) plus 6 per adapter parameter. Causal attention costs
    2 x context x q_dim per layer forward and twice that backward. Checkpointed layers run their forward twice.
    The head sees only the labelled positions.
    """
    matmul = shape.linear_weight_params + labelled_fraction * shape.vocab_size * shape.hidden_size
    attention = 2 * shape.num_layers * context_tokens * shape.num_heads * shape.head_dim
    adapters = 0 if method == "full" else trainable_params
    forward = 2 * matmul + attention + 2 * adapters
    backward = 2 * matmul + 2 * attention + 4 * adapters + (2 * matmul if method == "full" else 0)
    return forward + backward + checkpoint_fraction * forward
