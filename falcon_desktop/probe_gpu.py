"""NVIDIA GPUs through NVML (nvidia-ml-py), read in a child process with a deadline.

NVML can hang inside a wedged driver, so the caller never calls it directly: `probe_nvml` runs
`python -m falcon_desktop.probe_gpu` (which calls `read_nvml` and prints JSON) and gives up after `timeout_s`.
No torch here: the planner calls `detect_gpus` and must stay instant.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import PureWindowsPath
from typing import Any

from falcon_desktop.torch_build import wait_with_deadline

DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str  # "NVIDIA GeForce RTX 4090"
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int] | None
    power_limit_watts: float | None
    processes: tuple[str, ...]  # "pid 1234 (python.exe): 2.1 GB" for each process holding VRAM

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["compute_capability"] = list(self.compute_capability) if self.compute_capability else None
        data["processes"] = list(self.processes)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GpuInfo:
        capability = data.get("compute_capability")
        return cls(
            index=int(data["index"]),
            name=str(data["name"]),
            total_bytes=int(data["total_bytes"]),
            free_bytes=int(data["free_bytes"]),
            compute_capability=(int(capability[0]), int(capability[1])) if capability else None,
            power_limit_watts=data.get("power_limit_watts"),
            processes=tuple(data.get("processes") or ()),
        )


@dataclass(frozen=True)
class NvmlReport:
    """What NVML said, or why it said nothing (`error`, with `error_kind` naming the failure for the hint)."""

    driver_version: str | None = None  # "560.94"
    cuda_driver_version: tuple[int, int] | None = None  # the newest CUDA this driver runs, e.g. (12, 6)
    gpus: tuple[GpuInfo, ...] = ()
    error: str | None = None
    # "not_installed" | "timeout" | "crashed" | an NVML error class name ("NVMLError_LibraryNotFound", ...)
    error_kind: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "driver_version": self.driver_version,
            "cuda_driver_version": list(self.cuda_driver_version) if self.cuda_driver_version else None,
            "gpus": [gpu.to_json() for gpu in self.gpus],
            "error": self.error,
            "error_kind": self.error_kind,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NvmlReport:
        cuda = data.get("cuda_driver_version")
        return cls(
            driver_version=data.get("driver_version"),
            cuda_driver_version=(int(cuda[0]), int(cuda[1])) if cuda else None,
            gpus=tuple(GpuInfo.from_json(gpu) for gpu in data.get("gpus") or ()),
            error=data.get("error"),
            error_kind=data.get("error_kind"),
        )


def gigabytes(count: int) -> str:
    # Binary gigabytes, labelled GB as Windows and the cards' own specs do: a 24 GB RTX 4090 reads "24.0 GB".
    return f"{count / 2**30:.1f} GB"


def _text(value: str | bytes) -> str:
    # nvidia-ml-py before 11.515 returned bytes from the string getters; newer releases decode them.
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _optional(pynvml: Any, read: Any) -> Any:
    """`read()`, or None where this card or driver does not report it (NotSupported on GeForce, WDDM, MIG)."""
    try:
        return read()
    except pynvml.NVMLError:
        return None


def _running_processes(pynvml: Any, handle: Any, kind: str) -> list[Any]:
    # The unversioned getter calls the _v3 entry point, which drivers before ~R510 lack: nvidia-ml-py then raises
    # NVMLLibraryMismatchError (not an NVMLError), and the _v2 entry point still answers.
    mismatch = getattr(pynvml, "NVMLLibraryMismatchError", pynvml.NVMLError)
    for name in (f"nvmlDeviceGet{kind}RunningProcesses", f"nvmlDeviceGet{kind}RunningProcesses_v2"):
        getter = getattr(pynvml, name, None)
        if getter is None:
            continue
        try:
            return list(getter(handle))
        except mismatch:
            continue
        except pynvml.NVMLError:
            return []
    return []


def _processes(pynvml: Any, handle: Any) -> tuple[str, ...]:
    used: dict[int, int | None] = {}
    for kind in ("Compute", "Graphics"):  # a Windows process can be both ("C+G"); count it once
        for process in _running_processes(pynvml, handle, kind):
            used[process.pid] = max(used.get(process.pid) or 0, process.usedGpuMemory or 0) or None
    described = []
    for pid, used_bytes in sorted(used.items(), key=lambda item: -(item[1] or 0)):
        path = _optional(pynvml, lambda pid=pid: _text(pynvml.nvmlSystemGetProcessName(pid)))
        program = PureWindowsPath(path).name if path else ""  # parses "/" paths too
        label = f"pid {pid} ({program})" if program else f"pid {pid}"
        # Windows' WDDM driver model does not report per-process VRAM: NVML gives None.
        described.append(f"{label}: {gigabytes(used_bytes)}" if used_bytes else label)
    return tuple(described)


def _power_limit_watts(pynvml: Any, handle: Any) -> float | None:
    milliwatts = _optional(pynvml, lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle))
    if milliwatts is None:
        milliwatts = _optional(pynvml, lambda: pynvml.nvmlDeviceGetPowerManagementLimit(handle))
    return milliwatts / 1000 if milliwatts else None


def _read_gpu(pynvml: Any, index: int) -> GpuInfo:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    capability = _optional(pynvml, lambda: pynvml.nvmlDeviceGetCudaComputeCapability(handle))
    return GpuInfo(
        index=index,
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        total_bytes=int(memory.total),
        free_bytes=int(memory.free),
        compute_capability=(int(capability[0]), int(capability[1])) if capability else None,
        power_limit_watts=_power_limit_watts(pynvml, handle),
        processes=_processes(pynvml, handle),
    )


def read_nvml() -> NvmlReport:
    """Ask NVML in this process. May hang on a wedged driver: call `probe_nvml` instead, except in the child."""
    try:
        import pynvml
    except ImportError:
        return NvmlReport(error="nvidia-ml-py is not installed", error_kind="not_installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return NvmlReport(error=str(error), error_kind=type(error).__name__)
    driver: str | None = None
    cuda: tuple[int, int] | None = None
    gpus: list[GpuInfo] = []
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        encoded = _optional(pynvml, pynvml.nvmlSystemGetCudaDriverVersion)  # 12060 means CUDA 12.6
        cuda = (encoded // 1000, encoded % 1000 // 10) if encoded else None
        for index in range(pynvml.nvmlDeviceGetCount()):
            gpus.append(_read_gpu(pynvml, index))
    except pynvml.NVMLError as error:  # e.g. GpuIsLost: report what was read before it
        where = f"GPU {len(gpus)}: " if driver else ""
        return NvmlReport(driver, cuda, tuple(gpus), error=f"{where}{error}", error_kind=type(error).__name__)
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    return NvmlReport(driver, cuda, tuple(gpus))


class NvmlProbe:
    """`read_nvml` running in a child process; `result()` waits for it until the deadline."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._process = subprocess.Popen(
            [sys.executable, "-m", "falcon_desktop.probe_gpu"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
        )

    def result(self) -> NvmlReport:
        output = wait_with_deadline(self._process, self.timeout_s)
        if output is None:
            return NvmlReport(
                error=f"NVML did not answer within {self.timeout_s:g} s (a hung driver?)", error_kind="timeout"
            )
        stdout, stderr = output
        try:
            return NvmlReport.from_json(json.loads(stdout))
        except (ValueError, KeyError, TypeError, IndexError):
            last_line = (stderr.strip().splitlines() or [f"exit code {self._process.returncode}"])[-1]
            return NvmlReport(error=f"the NVML probe failed: {last_line}", error_kind="crashed")


def probe_nvml(timeout_s: float = DEFAULT_TIMEOUT_S) -> NvmlReport:
    return NvmlProbe(timeout_s).result()


def detect_gpus(timeout_s: float = DEFAULT_TIMEOUT_S) -> list[GpuInfo]:
    """The NVIDIA GPUs NVML sees; [] without a driver, without NVML, or when the driver does not answer in time."""
    return list(probe_nvml(timeout_s).gpus)


if __name__ == "__main__":
    print(json.dumps(read_nvml().to_json()))
