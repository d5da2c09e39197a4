"""Which PyTorch build to install for this machine's NVIDIA driver: the CUDA wheel it can run, or the CPU wheel.

Standard library only: the installers import it (through `falcon_desktop.install_plan`) before torch, or anything
else falcon-desktop needs, is installed, and `falcon-desktop doctor --torch-command` prints the same command.

The command pins the build's local version (`torch==2.13.0+cu128`), which makes a switch between builds safe: an
installed `2.13.0+cpu` does not satisfy it (so pip does not answer "Requirement already satisfied"), and pip
downloads and resolves the new build, with its CUDA dependencies, before it removes the old one, so a failed
download (proxy, outage) leaves the old torch in place.

    python -m falcon_desktop.torch_build                      # read the driver with nvidia-smi
    python -m falcon_desktop.torch_build --json
    python -m falcon_desktop.torch_build --driver 560.94 --compute-capability 8.9
    python -m falcon_desktop.torch_build --driver none        # the CPU build
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from falcon_desktop.pip_commands import pip_command

INDEX_URL = "https://download.pytorch.org/whl/{tag}"
# The one torch release CI tests (.ci/run and the README's commands use it too; tests/test_installers.py checks).
TORCH_VERSION = "2.13.0"

# (tag, CUDA version, oldest driver branch that runs it, oldest compute capability its wheels carry kernels for).
# Newest first; the first row the machine satisfies wins. NVIDIA's CUDA compatibility tables: CUDA 13.x needs R580+,
# 12.x R525+ (minor-version compatibility); PyTorch 2.11's cu128/cu130 wheels start at Turing (7.5), so
# Pascal/Volta need cu126, whose wheels still carry Maxwell (5.0) kernels.
_CUDA_BUILDS: tuple[tuple[str, str, int, tuple[int, int]], ...] = (
    ("cu130", "13.0", 580, (7, 5)),
    ("cu128", "12.8", 525, (7, 5)),
    ("cu126", "12.6", 525, (5, 0)),
)
OLDEST_SUPPORTED_DRIVER = min(row[2] for row in _CUDA_BUILDS)
OLDEST_SUPPORTED_CAPABILITY = min(row[3] for row in _CUDA_BUILDS)

NVIDIA_SMI_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class TorchBuild:
    tag: str  # "cu130" | "cu128" | "cu126" | "cpu"
    index_url: str
    reason: str
    version: str = TORCH_VERSION

    @property
    def requirement(self) -> str:
        return f"torch=={self.version}+{self.tag}"

    def pip_args(self) -> list[str]:
        """Arguments after `python -m pip`: install or switch to this build, transactionally (see the module doc)."""
        return ["install", self.requirement, "--index-url", self.index_url]

    def repair_args(self) -> list[str]:
        """Rewrite this build's files in place (a damaged install); `--no-deps` keeps every other package as it is."""
        return ["install", "--force-reinstall", "--no-deps", self.requirement, "--index-url", self.index_url]

    def command(self, executable: str | None = None, shell: str | None = None) -> str:
        return pip_command(self.pip_args(), executable, shell)

    def repair_command(self, executable: str | None = None, shell: str | None = None) -> str:
        return pip_command(self.repair_args(), executable, shell)

    def to_json(self) -> dict:
        return {
            "tag": self.tag,
            "index_url": self.index_url,
            "reason": self.reason,
            "requirement": self.requirement,
            "pip_args": self.pip_args(),
            "command": self.command(),
        }


def index_tag(index_url: str) -> str | None:
    """The build a PyTorch-style index serves, from its last path segment: ".../whl/cu126" -> "cu126"; else None."""
    last = index_url.rstrip("/").rsplit("/", 1)[-1]
    return last if re.fullmatch(r"cpu|cu\d+|rocm[\d.]+|xpu", last) else None


def build_for_index(index_url: str, reason: str = "the index you chose") -> TorchBuild | None:
    """The build an explicitly chosen index serves, or None when its name does not say which."""
    tag = index_tag(index_url)
    return TorchBuild(tag=tag, index_url=index_url, reason=reason) if tag else None


def driver_branch(driver_version: str) -> int:
    """The driver's branch number: "560.94" -> 560, "535.183.01" -> 535."""
    head = driver_version.strip().split(".")[0]
    if not head.isdigit():
        raise ValueError(f"not an NVIDIA driver version: {driver_version!r} (expected e.g. 560.94)")
    return int(head)


def parse_compute_capability(text: str) -> tuple[int, int]:
    """ "8.9" -> (8, 9)."""
    major, dot, minor = text.strip().partition(".")
    if not (dot and major.isdigit() and minor.isdigit()):
        raise ValueError(f"not a compute capability: {text!r} (expected e.g. 8.9)")
    return int(major), int(minor)


def _build(tag: str, reason: str) -> TorchBuild:
    return TorchBuild(tag=tag, index_url=INDEX_URL.format(tag=tag), reason=reason)


def choose_torch_build(driver_version: str | None, compute_capability: tuple[int, int] | None) -> TorchBuild:
    """The newest PyTorch CUDA build this driver and GPU can run, else the CPU build, with the reason.

    `compute_capability` is the oldest GPU's (a build must run on all of them); None means unknown, taken as new.
    """
    if driver_version is None:
        return _build("cpu", "no NVIDIA driver found: the CPU build")
    branch = driver_branch(driver_version)
    machine = f"driver {driver_version}"
    if compute_capability is not None:
        machine += f", compute capability {compute_capability[0]}.{compute_capability[1]}"
    passed_over: list[str] = []
    for tag, cuda, oldest_branch, oldest_capability in _CUDA_BUILDS:
        if branch < oldest_branch:
            passed_over.append(f"CUDA {cuda} needs driver R{oldest_branch}+")
        elif compute_capability is not None and compute_capability < oldest_capability:
            passed_over.append(f"CUDA {cuda} wheels start at compute capability {oldest_capability[0]}.{oldest_capability[1]}")
        else:
            why = f" ({'; '.join(passed_over)})" if passed_over else ""
            return _build(tag, f"{machine}: CUDA {cuda}{why}")
    return _build("cpu", f"{machine}: no current PyTorch CUDA build runs here ({'; '.join(passed_over)}): the CPU build")


def wait_with_deadline(process: subprocess.Popen, timeout_s: float) -> tuple[str, str] | None:
    """`process`'s (stdout, stderr), or None once it outlives `timeout_s` (then it is killed).

    NVIDIA tools can hang inside a wedged driver, and a process stuck there may not even die when killed, so
    after the kill we wait only briefly and never block on it.
    """
    try:
        return process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        try:
            process.communicate(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        return None


def _nvidia_smi() -> str | None:
    found = shutil.which("nvidia-smi")
    if found:
        return found
    if sys.platform == "win32":  # older (non-DCH) Windows drivers install it outside PATH
        legacy = Path(os.environ.get("ProgramFiles", r"C:\Program Files")) / "NVIDIA Corporation" / "NVSMI"
        candidate = legacy / "nvidia-smi.exe"
        if candidate.is_file():
            return str(candidate)
    return None


def _query(executable: str, fields: str, timeout_s: float) -> str | None:
    try:
        process = subprocess.Popen(
            [executable, f"--query-gpu={fields}", "--format=csv,noheader"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
    except OSError:
        return None
    result = wait_with_deadline(process, timeout_s)
    if result is None or process.returncode != 0:
        return None
    return result[0]


def parse_nvidia_smi(output: str) -> tuple[str | None, tuple[int, int] | None]:
    """(driver version, oldest compute capability) from `--query-gpu=driver_version[,compute_cap]` CSV lines."""
    driver: str | None = None
    capabilities: list[tuple[int, int]] = []
    for line in output.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if not fields[0]:
            continue
        driver = fields[0]
        if len(fields) > 1:
            try:
                capabilities.append(parse_compute_capability(fields[1]))
            except ValueError:  # "[N/A]"
                pass
    return driver, min(capabilities) if capabilities else None


def detect_driver(timeout_s: float = NVIDIA_SMI_TIMEOUT_S) -> tuple[str | None, tuple[int, int] | None]:
    """(driver version, oldest GPU's compute capability) from nvidia-smi; (None, None) without a working driver."""
    executable = _nvidia_smi()
    if executable is None:
        return None, None
    # nvidia-smi before R510 has no compute_cap field and rejects the whole query; ask for the driver alone then.
    output = _query(executable, "driver_version,compute_cap", timeout_s)
    if output is None:
        output = _query(executable, "driver_version", timeout_s)
    return parse_nvidia_smi(output or "")


def _parse_capability_flag(text: str) -> tuple[int, int]:
    try:
        return parse_compute_capability(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m falcon_desktop.torch_build",
        description="Print the pip command that installs the PyTorch build matching this machine's NVIDIA driver.",
        epilog=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print the choice as one JSON object")
    parser.add_argument(
        "--driver", metavar="VERSION", help="driver version instead of asking nvidia-smi; 'none' for no driver"
    )
    parser.add_argument(
        "--compute-capability", type=_parse_capability_flag, metavar="X.Y", help="the oldest GPU's compute capability"
    )
    args = parser.parse_args(argv)
    if args.driver is None:
        driver, detected_capability = detect_driver()
        capability = args.compute_capability or detected_capability
    else:
        driver = None if args.driver.strip().lower() == "none" else args.driver.strip()
        capability = args.compute_capability
    try:
        build = choose_torch_build(driver, capability)
    except ValueError as error:
        parser.error(str(error))
    if args.json:
        payload = build.to_json() | {
            "driver_version": driver,
            "compute_capability": list(capability) if capability else None,
        }
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        print(build.command())
        print(f"({build.reason})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
