"""What common GPUs and cloud instances offer: one dated table each, and lookups by name.

Figures are vendor specifications, not our measurements: VRAM, dense (non-sparse) 16-bit tensor-core peak with fp32
accumulation (what a bf16 matmul in PyTorch runs at; GeForce cards run it at half their fp16-accumulate rate),
board power, compute capability. Cards without bf16 (T4, V100) list their fp16 tensor peak. Cloud prices are
on-demand Linux list prices and change often: check the provider before you rely on one.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from falcon_desktop.errors import UserError

GIB = 1024**3
# bf16 tensor cores arrived with Ampere (compute capability 8.0); older cards compute in fp16 with loss scaling.
BF16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class GpuModel:
    name: str
    vram_gib: float                         # as sold (an RTX 4090's 24 GB are 24 GiB)
    bf16_tflops: float                      # dense tensor peak, fp32 accumulate (fp16 where no bf16)
    watts: float                            # board power / TDP
    compute_capability: tuple[int, int]


# Sources: NVIDIA Ampere GA102 and Ada Lovelace whitepapers (GeForce), RTX Blackwell whitepaper (RTX 5090), and the
# A10, L4, T4, V100, A100, H100 and H200 datasheets (SXM variants for V100/A100/H100). The A10G is AWS's A10
# variant; NVIDIA publishes no separate peak for it, so it carries the A10's.
GPUS: tuple[GpuModel, ...] = (
    GpuModel("RTX 3060", 12, 25.5, 170, (8, 6)),
    GpuModel("RTX 3070", 8, 40.6, 220, (8, 6)),
    GpuModel("RTX 3080", 10, 59.5, 320, (8, 6)),
    GpuModel("RTX 3090", 24, 71.0, 350, (8, 6)),
    GpuModel("RTX 4060 Ti 16GB", 16, 44.1, 165, (8, 9)),
    GpuModel("RTX 4070", 12, 58.3, 200, (8, 9)),
    GpuModel("RTX 4080", 16, 97.5, 320, (8, 9)),
    GpuModel("RTX 4090", 24, 165.2, 450, (8, 9)),
    GpuModel("RTX 5090", 32, 209.5, 575, (12, 0)),
    GpuModel("T4", 16, 65.0, 70, (7, 5)),
    GpuModel("V100", 16, 125.0, 300, (7, 0)),
    GpuModel("A10G", 24, 125.0, 300, (8, 6)),
    GpuModel("L4", 24, 121.0, 72, (8, 9)),
    GpuModel("A100 40GB", 40, 312.0, 400, (8, 0)),
    GpuModel("A100 80GB", 80, 312.0, 400, (8, 0)),
    GpuModel("H100", 80, 989.0, 700, (9, 0)),
    GpuModel("H200", 141, 989.0, 700, (9, 0)),
)

CLOUD_PRICES_DATE = "2025-01"


@dataclass(frozen=True)
class CloudInstance:
    provider: str
    instance: str
    gpu: str           # a GPUS name
    gpu_count: int
    usd_per_hour: float


# AWS on-demand, Linux, us-east-1, as listed in early 2025 (p4d/p5 prices were cut later in 2025). Prices change:
# check https://aws.amazon.com/ec2/pricing/on-demand/ before relying on one.
CLOUD_PRICES: tuple[CloudInstance, ...] = (
    CloudInstance("AWS", "g4dn.xlarge", "T4", 1, 0.526),
    CloudInstance("AWS", "g6.xlarge", "L4", 1, 0.805),
    CloudInstance("AWS", "g5.2xlarge", "A10G", 1, 1.12),
    CloudInstance("AWS", "p3.2xlarge", "V100", 1, 3.06),
    CloudInstance("AWS", "p4d.24xlarge", "A100 40GB", 8, 32.77),
    CloudInstance("AWS", "p5.48xlarge", "H100", 8, 98.32),
)

_VENDOR_WORDS = {"nvidia", "geforce", "tesla", "quadro"}


def _tokens(name: str) -> set[str]:
    """Comparable words of a GPU name: 'NVIDIA GeForce RTX 4090' and 'rtx4090' both give {'rtx', '4090'}."""
    spaced = re.sub(r"(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])", " ", re.sub(r"[^a-z0-9]+", " ", name.lower()))
    return {word for word in spaced.split() if word not in _VENDOR_WORDS}


def gpu_model(name: str) -> GpuModel:
    """The table's entry for `name` ("RTX 4090", "4090", "NVIDIA A100-SXM4-80GB"); UserError naming close ones."""
    found = match_gpu(name)
    if isinstance(found, GpuModel):
        return found
    if found:
        raise UserError(f"GPU name {name!r} is ambiguous: it could be {' or '.join(found)}.",
                        f"Pass the full name, e.g. --gpu \"{found[-1]}\".")
    by_lower = {gpu.name.lower(): gpu.name for gpu in GPUS}
    close = [by_lower[key] for key in difflib.get_close_matches(name.lower(), list(by_lower), n=4, cutoff=0.5)]
    raise UserError(
        f"Unknown GPU {name!r}." + (f" Close names: {', '.join(close)}." if close else ""),
        f"Known GPUs: {', '.join(by_lower.values())}. For another card pass --vram GB (its memory) instead.",
    )


# Words that make a different card, not a different name for the same one: an "RTX 4060" is not an
# "RTX 4060 Ti 16GB" (8 GB vs 16), so a name matches an entry only if both have the same of these words.
VARIANT_WORDS = frozenset({"ti", "super", "laptop", "mobile", "max-q"})


def match_gpu(name: str, total_bytes: int | None = None) -> GpuModel | list[str] | None:
    """The entry for `name`, or the names it could mean (ambiguous), or None (nothing matches).

    An NVML name ("NVIDIA H100 80GB HBM3") contains all of an entry's words; a user's short name ("4090", "a100")
    is contained in an entry's words. `total_bytes` (from NVML) picks between sizes of one model.
    """
    query = _tokens(name)
    if not query:
        return None
    exact = [gpu for gpu in GPUS if _tokens(gpu.name) == query]
    if exact:
        return exact[0]
    matches = [gpu for gpu in GPUS if (_tokens(gpu.name) <= query or query <= _tokens(gpu.name))
               and _tokens(gpu.name) & VARIANT_WORDS == query & VARIANT_WORDS]
    if total_bytes is not None and len(matches) > 1:
        closest = min(abs(gpu.vram_gib * GIB - total_bytes) for gpu in matches)
        matches = [gpu for gpu in matches if abs(gpu.vram_gib * GIB - total_bytes) == closest]
    if len(matches) == 1:
        return matches[0]
    return [gpu.name for gpu in matches] or None


def has_bf16(capability: tuple[int, int]) -> bool:
    """Whether a card of this compute capability computes in bf16: the one rule the planner, doctor and ask use."""
    return tuple(capability) >= BF16_CAPABILITY


def compute_dtype_for_capability(capability: tuple[int, int] | None) -> str:
    """"bfloat16" where the card has it (or nothing is known of the card), else "float16"."""
    return "float16" if capability is not None and not has_bf16(capability) else "bfloat16"

