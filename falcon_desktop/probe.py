"""`falcon-desktop doctor`: can this machine QLoRA fine-tune, and if not, what to fix.

`run_checks` gathers every check (a `Check(name, status, value, hint)` row) and a one-line verdict. The checks
live in `probe_gpu` (NVML, in a child process with a deadline), `probe_torch` (driver, GPUs, PyTorch,
bitsandbytes) and `probe_system` (Python, packages, memory, disk, Hugging Face cache, Windows, WSL).
The planner imports `detect_gpus` and `GpuInfo` from here; nothing here imports torch at module level.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from falcon_desktop.probe_gpu import (
    DEFAULT_TIMEOUT_S,
    GpuInfo,
    NvmlProbe,
    detect_gpus,
    gigabytes,
)
from falcon_desktop.probe_multi_gpu import multi_gpu_checks
from falcon_desktop.probe_system import (
    FAIL,
    PASS,
    WARN,
    Check,
    declared_minimums,
    package_checks,
    system_checks,
    this_python_check,
)
from falcon_desktop.probe_torch import (
    QLORA_7B_MIN_FREE_BYTES,
    bitsandbytes_checks,
    driver_check,
    gpu_checks,
    torch_build_for,
    torch_checks,
)

__all__ = ["FAIL", "PASS", "WARN", "Check", "DoctorReport", "GpuInfo", "detect_gpus", "run_checks", "verdict"]

VERDICT_SUBJECT = "QLoRA fine-tune of 7B models"


@dataclass(frozen=True)
class DoctorReport:
    checks: tuple[Check, ...]
    gpus: tuple[GpuInfo, ...]
    verdict: str

    @property
    def ok(self) -> bool:
        """True when nothing FAILed: `doctor` exits 0."""
        return all(check.status != FAIL for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "checks": [asdict(check) for check in self.checks],
            "gpus": [gpu.to_json() for gpu in self.gpus],
            "verdict": self.verdict,
        }


def _status(checks: tuple[Check, ...], name: str) -> str | None:
    return next((check.status for check in checks if check.name == name), None)


def verdict(checks: tuple[Check, ...], gpus: tuple[GpuInfo, ...]) -> str:
    """One line: can this machine QLoRA fine-tune a 7B model, and if not, the first thing in the way."""
    best = max(gpus, key=lambda gpu: gpu.free_bytes, default=None)
    failed = [check.name for check in checks if check.status == FAIL]
    if best is None:
        blocker = "no CUDA GPU"
    elif _status(checks, "CUDA available") != PASS:
        blocker = "PyTorch cannot use the GPU"
    elif _status(checks, "4-bit round trip") != PASS:
        blocker = "bitsandbytes cannot quantize on the GPU"
    elif best.free_bytes < QLORA_7B_MIN_FREE_BYTES:
        blocker = f"{gigabytes(best.free_bytes)} VRAM free, ~{gigabytes(QLORA_7B_MIN_FREE_BYTES)} needed"
    elif failed:
        blocker = "fix " + ", ".join(failed)
    else:
        precision = "bf16" if _status(checks, "Precision") == PASS else "fp16"
        return f"{VERDICT_SUBJECT}: yes, {gigabytes(best.free_bytes)} free on {best.name} ({precision})"
    return f"{VERDICT_SUBJECT}: no: {blocker} - `falcon-desktop plan` and the CPU demo still work"


def _preload_torch() -> None:
    # Importing torch takes seconds; doing it while the NVML child runs overlaps the two. Import errors are
    # reported by torch_checks, which imports it again (from sys.modules).
    try:
        import torch  # noqa: F401
    except Exception:  # noqa: BLE001 - reported as a row later
        pass


def run_checks(nvml_timeout_s: float = DEFAULT_TIMEOUT_S) -> DoctorReport:
    """Every check, in the order `doctor` prints them, and the verdict."""
    probe = NvmlProbe(nvml_timeout_s)
    _preload_torch()
    nvml = probe.result()
    minimums = declared_minimums()
    build = torch_build_for(nvml)
    rows = [this_python_check(), driver_check(nvml), *gpu_checks(nvml)]
    rows += torch_checks(nvml, minimums.get("torch"), build)
    rows += multi_gpu_checks(nvml.gpus, _status(tuple(rows), "CUDA available") == PASS)
    if nvml.error_kind == "timeout":  # importing bitsandbytes initialises CUDA, which would hang in that driver
        rows.append(Check("bitsandbytes", FAIL, "not tried: the driver did not answer NVML", "Reboot."))
    else:
        device = "cuda:0" if _status(tuple(rows), "CUDA available") == PASS else "cpu"
        rows += bitsandbytes_checks(minimums.get("bitsandbytes"), device)
    rows += package_checks(minimums)
    rows += system_checks()
    checks = tuple(rows)
    return DoctorReport(checks=checks, gpus=nvml.gpus, verdict=verdict(checks, nvml.gpus))
