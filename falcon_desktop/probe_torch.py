"""`doctor`'s rows about the GPU stack: the NVIDIA driver and GPUs (from NVML), PyTorch and bitsandbytes.

torch and bitsandbytes are imported inside the functions: this module loads instantly, and a broken install
becomes a FAIL row instead of a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import warnings
from collections.abc import Iterator
from pathlib import PureWindowsPath

from falcon_desktop.errors import first_line
from falcon_desktop.hardware import has_bf16
from falcon_desktop.pip_commands import install_command, python_command, reinstall_command
from falcon_desktop.probe_gpu import GpuInfo, NvmlReport, gigabytes
from falcon_desktop.probe_system import FAIL, PASS, WARN, Check, installed_version, version_check
from falcon_desktop.torch_build import (
    OLDEST_SUPPORTED_CAPABILITY,
    OLDEST_SUPPORTED_DRIVER,
    TorchBuild,
    choose_torch_build,
    driver_branch,
)

# Falcon-7B QLoRA peaked at 6.4 GB reserved at batch 1 with checkpointing (H100, torch 2.11, bitsandbytes 0.50.2,
# max_memory_reserved); ~0.5 GB more for the CUDA context is an estimate. `falcon-desktop plan` gives the exact
# figure for a model and settings.
QLORA_7B_MIN_FREE_BYTES = 7 * 2**30
# NF4's mean relative error on N(0, 1) weights, blocksize 64, bitsandbytes 0.50.2: 0.091 measured on CPU and on
# the H100.
# A broken kernel returns garbage (error ~1) or NaN, far past this bound.
NF4_MAX_RELATIVE_ERROR = 0.2

# Windows' "WinError 126 ... c10.dll" (or another DLL) when torch is imported: the Visual C++ runtime is missing.
MSVC_RUNTIME_HINT = (
    "Install the Microsoft Visual C++ Redistributable (x64) from https://aka.ms/vs/17/release/vc_redist.x64.exe, "
    "then open a new terminal."
)

NO_GPU_HINT = "QLoRA needs an NVIDIA GPU; without one `falcon-desktop plan` and the CPU demo still work."

# NVML failure -> (what it means, or None to show NVML's own message; the fix).
_NVML_FAILURES: dict[str, tuple[str | None, str]] = {
    "not_installed": ("nvidia-ml-py is not installed", install_command("nvidia-ml-py")),
    "NVMLError_LibraryNotFound": (
        "not installed (NVML library not found)",
        "Install the NVIDIA driver from https://www.nvidia.com/drivers (under WSL: in Windows, not in Linux).",
    ),
    "NVMLError_DriverNotLoaded": ("installed but not loaded", "Reboot; if that does not help, reinstall the driver."),
    "NVMLError_LibRmVersionMismatch": (
        "updated but the old kernel module is still loaded", "Reboot to finish the driver update."
    ),
    "NVMLError_NoPermission": ("no permission to query the GPU", "Run as a user allowed to use the GPU."),
    "timeout": (None, "Reboot: the driver is hung."),
    "crashed": (None, f"Run {python_command(['-m', 'falcon_desktop.probe_gpu'])} to see the whole error."),
}


def torch_build_for(nvml: NvmlReport) -> TorchBuild:
    capabilities = [gpu.compute_capability for gpu in nvml.gpus if gpu.compute_capability]
    return choose_torch_build(nvml.driver_version, min(capabilities) if capabilities else None)


def driver_check(nvml: NvmlReport) -> Check:
    if nvml.driver_version is None:
        meaning, fix = _NVML_FAILURES.get(nvml.error_kind or "", (None, "Reinstall the NVIDIA driver."))
        return Check("NVIDIA driver", FAIL, meaning or nvml.error or "unknown error", fix)
    cuda = f"{nvml.cuda_driver_version[0]}.{nvml.cuda_driver_version[1]}" if nvml.cuda_driver_version else "unknown"
    value = f"{nvml.driver_version}, runs CUDA <= {cuda}"
    if driver_branch(nvml.driver_version) < OLDEST_SUPPORTED_DRIVER:
        return Check(
            "NVIDIA driver", FAIL, f"{value}: too old for PyTorch's CUDA builds (R{OLDEST_SUPPORTED_DRIVER}+)",
            "Update the NVIDIA driver (R580+ runs every current PyTorch build).",
        )
    if nvml.error:  # NVML answered, then failed on a GPU
        return Check("NVIDIA driver", FAIL, f"{value}; {nvml.error}", "Reboot; if it persists, reinstall the driver.")
    return Check("NVIDIA driver", PASS, value)


def gpu_check(gpu: GpuInfo) -> Check:
    name = f"GPU {gpu.index}"
    parts = [gpu.name, f"{gigabytes(gpu.total_bytes)} ({gigabytes(gpu.free_bytes)} free)"]
    if gpu.compute_capability:
        parts.append(f"cc {gpu.compute_capability[0]}.{gpu.compute_capability[1]}")
    if gpu.power_limit_watts:
        parts.append(f"{gpu.power_limit_watts:.0f} W")
    if gpu.processes:
        parts.append("in use by " + ", ".join(gpu.processes))
    value = ", ".join(parts)
    if gpu.compute_capability and gpu.compute_capability < OLDEST_SUPPORTED_CAPABILITY:
        oldest = f"{OLDEST_SUPPORTED_CAPABILITY[0]}.{OLDEST_SUPPORTED_CAPABILITY[1]}"
        return Check(name, FAIL, value, f"Current PyTorch builds need compute capability {oldest}+: use a newer GPU.")
    if gpu.total_bytes < QLORA_7B_MIN_FREE_BYTES:
        return Check(
            name, WARN, value,
            f"7B QLoRA needs ~{gigabytes(QLORA_7B_MIN_FREE_BYTES)}: `falcon-desktop plan` shows which smaller models fit.",
        )
    if gpu.free_bytes < QLORA_7B_MIN_FREE_BYTES:
        return Check(name, WARN, value, "Close the programs holding VRAM (listed) before training.")
    return Check(name, PASS, value)


def gpu_checks(nvml: NvmlReport) -> list[Check]:
    if not nvml.gpus:
        value = "none found" if nvml.driver_version is None else "the driver sees no GPU"
        return [Check("GPU", FAIL, value, NO_GPU_HINT)]
    return [gpu_check(gpu) for gpu in nvml.gpus]


def _version_pair(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor.split(".")[0] or 0)


def cuda_build_check(built_cuda: str | None, nvml: NvmlReport, build: TorchBuild) -> Check:
    """Can this PyTorch build run on this driver? `built_cuda` is torch.version.cuda ("12.8"; None for CPU builds)."""
    name = "PyTorch CUDA build"
    if built_cuda is None:
        hint = f"Install the CUDA build: {build.command()}" if nvml.gpus else NO_GPU_HINT
        return Check(name, FAIL, "CPU-only build", hint)
    if nvml.cuda_driver_version is None:
        return Check(name, FAIL, f"CUDA {built_cuda}; no NVIDIA driver to run it", NO_GPU_HINT)
    driver = nvml.cuda_driver_version
    value = f"CUDA {built_cuda}; the driver runs CUDA <= {driver[0]}.{driver[1]}"
    built = _version_pair(built_cuda)
    if built[0] > driver[0]:
        return Check(
            name, FAIL, value, f"Update the NVIDIA driver, or install the build this driver runs: {build.command()}"
        )
    if built > driver:  # same major, newer minor: CUDA's minor-version compatibility runs it, without PTX JIT
        return Check(name, WARN, value, "Runs through CUDA minor-version compatibility; a newer driver is safer.")
    return Check(name, PASS, value)


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Does a build compiled for `arch_list` (torch.cuda.get_arch_list(): "sm_86", "compute_90") run on this GPU?

    Binary kernels run on the same major with an equal or newer minor; PTX ("compute_XY") JIT-compiles for any newer GPU.
    """
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        if not digits.isdigit():
            continue
        built = (int(digits[:-1]), int(digits[-1]))
        if (kind == "sm" and built[0] == capability[0] and built <= capability) or (
            kind == "compute" and built <= capability
        ):
            return True
    return False


def precision_check(capability: tuple[int, int] | None) -> Check:
    if capability is None:
        return Check("Precision", WARN, "unknown: no CUDA GPU", NO_GPU_HINT)
    cc = f"compute capability {capability[0]}.{capability[1]}"
    if has_bf16(capability):
        return Check("Precision", PASS, f"bf16 ({cc})")
    return Check(
        "Precision", WARN, f"fp16 planned ({cc} has no bf16)",
        "Nothing to fix: training runs in fp16 with loss scaling; bf16 needs compute capability 8.0+ (RTX 30xx or newer).",
    )


def torch_import_hint(error: BaseException, build: TorchBuild) -> str:
    """A missing DLL's fix is the C++ runtime; a damaged install's is torch's files rewritten; a missing torch's is
    the build for this driver."""
    message = str(error)
    if "WinError 126" in message or "DLL load failed" in message:
        return MSVC_RUNTIME_HINT
    if installed_version("torch") is not None:
        return f"Reinstall its files: {build.repair_command()}"
    return f"Install it: {build.command()}"


def torch_checks(nvml: NvmlReport, minimum: str | None, build: TorchBuild) -> list[Check]:
    """PyTorch's version, its CUDA build against the driver, whether CUDA works, and the training precision."""
    try:
        import torch
    except Exception as error:  # ImportError, or OSError when a DLL fails to load on Windows
        return [Check("PyTorch", FAIL, f"cannot be imported: {first_line(error)}", torch_import_hint(error, build))]
    rows = [version_check("PyTorch", torch.__version__, minimum, build.command())]
    rows.append(cuda_build_check(torch.version.cuda, nvml, build))
    if nvml.error_kind == "timeout":  # CUDA would hang in the same driver
        rows.append(Check("CUDA available", FAIL, "not tried: the driver did not answer NVML", "Reboot."))
        rows.append(precision_check(None))
        return rows
    with warnings.catch_warnings(record=True) as caught:  # torch explains a driver/build mismatch in a warning
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if not available:
        if torch.version.cuda is None or not nvml.gpus:
            why = "CPU-only build" if torch.version.cuda is None else "no NVIDIA GPU"
            hint = f"Install the CUDA build: {build.command()}" if nvml.gpus else NO_GPU_HINT
        else:  # torch says why in a warning, e.g. "The NVIDIA driver on your system is too old"
            why = first_line(caught[0].message) if caught else "PyTorch found no usable GPU"
            hint = f"Update the NVIDIA driver, or install the build this driver runs: {build.command()}"
        rows.append(Check("CUDA available", FAIL, f"no: {why}", hint))
        rows.append(precision_check(None))
        return rows
    capability = torch.cuda.get_device_capability(0)
    value = f"yes: {torch.cuda.device_count()} device(s), cuda:0 = {torch.cuda.get_device_name(0)}"
    arch_list = torch.cuda.get_arch_list()
    if not arch_supported(capability, arch_list):
        rows.append(Check(
            "CUDA available", FAIL,
            f"{value}, but this build has no kernels for compute capability {capability[0]}.{capability[1]} "
            f"({' '.join(arch_list)})",
            f"Install the build for this GPU: {build.command()}",
        ))
    else:
        rows.append(Check("CUDA available", PASS, value))
    rows.append(precision_check(capability))
    return rows


def nf4_round_trip_error(device: str) -> float:
    """Quantize random N(0, 1) weights to NF4 as the trainer does (blocksize 64, double quant) and back."""
    import bitsandbytes.functional as functional
    import torch

    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(1024, 1024, generator=generator).to(device=device, dtype=torch.bfloat16)
    packed, state = functional.quantize_4bit(weights, blocksize=64, quant_type="nf4", compress_statistics=True)
    restored = functional.dequantize_4bit(packed, state).float()
    original = weights.float()
    return float((restored - original).abs().mean() / original.abs().mean())


def bitsandbytes_fix() -> str:
    """Rewrite bitsandbytes' files at its installed version and nothing else (`--no-deps` keeps the CUDA torch)."""
    version = installed_version("bitsandbytes")
    if version is None:  # torch already satisfies its requirement, so pip leaves torch alone
        return f"Install it: {install_command('bitsandbytes')}"
    return f"Reinstall bitsandbytes: {reinstall_command('bitsandbytes', version)}"


def round_trip_check(device: str, relative_error: float | None, failure: str = "") -> Check:
    name = "4-bit round trip"
    fix = bitsandbytes_fix()
    if relative_error is None:
        return Check(name, FAIL, f"failed on {device}: {failure}", fix)
    value = f"NF4 on {device}: mean error {relative_error:.1%}"
    if not math.isfinite(relative_error) or relative_error > NF4_MAX_RELATIVE_ERROR:
        return Check(name, FAIL, f"{value}, expected about 9%", fix)
    return Check(name, PASS, value)


def native_library_check(library: object, device: str) -> Check:
    """Which native library bitsandbytes loaded (`bitsandbytes.cextension.lib`): CUDA, CPU, or none."""
    name = "bitsandbytes library"
    fix = bitsandbytes_fix()
    # Read the instance's own fields: the wrapper's __getattr__ answers every other name with a stub function.
    fields = vars(library) if library is not None and hasattr(library, "__dict__") else {}
    native = fields.get("_lib")
    if native is None:
        load_error = str(fields.get("error_msg") or "unknown").strip()
        value = f"none loaded ({load_error.splitlines()[0] if load_error else 'unknown'})"
        # bitsandbytes runs NF4 on the CPU in pure PyTorch without its library; on the GPU it needs it.
        return Check(name, FAIL if device != "cpu" else WARN, value, fix)
    kind = "CUDA" if getattr(type(library), "compiled_with_cuda", False) else "CPU"
    value = f"{PureWindowsPath(str(getattr(native, '_name', 'unknown'))).name} ({kind})"  # parses "/" paths too
    if device != "cpu" and kind != "CUDA":
        return Check(name, FAIL, f"{value} although CUDA is available", fix)
    return Check(name, PASS, value)


@contextlib.contextmanager
def _compile_deferred() -> Iterator[None]:
    """`torch.compile` as the identity while bitsandbytes is first imported.

    bitsandbytes wraps its pure-PyTorch fallback kernels in `torch.compile` when imported, which imports dynamo and
    inductor: most of the ~10 s its import took on the H100 machine. The checks below use its native library, not
    those fallbacks; bitsandbytes itself runs them uncompiled wherever compiling fails.
    """
    import torch

    if "bitsandbytes" in sys.modules:
        yield
        return
    compile_function = torch.compile
    torch.compile = lambda model=None, **options: model if model is not None else (lambda function: function)
    try:
        yield
    finally:
        torch.compile = compile_function


def bitsandbytes_checks(minimum: str | None, device: str) -> list[Check]:
    """bitsandbytes' version, the native library it loaded, and a real NF4 round trip on `device` ("cuda:0"/"cpu")."""
    # bitsandbytes logs a library load failure with a full traceback; the row below reports it instead.
    logger = logging.getLogger("bitsandbytes")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with _compile_deferred():
            import bitsandbytes
            import bitsandbytes.cextension
    except Exception as error:  # a broken install raises anything from ImportError to RuntimeError
        return [Check(
            "bitsandbytes", FAIL, f"cannot be imported: {first_line(error)}",
            bitsandbytes_fix(),
        )]
    finally:
        logger.setLevel(level)
    rows = [version_check("bitsandbytes", installed_version("bitsandbytes") or bitsandbytes.__version__, minimum)]
    rows.append(native_library_check(getattr(bitsandbytes.cextension, "lib", None), device))
    try:
        rows.append(round_trip_check(device, nf4_round_trip_error(device)))
    except Exception as error:  # a missing kernel raises RuntimeError, a CUDA fault torch.AcceleratorError, ...
        rows.append(round_trip_check(device, None, first_line(error)))
    return rows
