"""`doctor`'s rows about the machine around the GPU: Python, packages, memory, disk, the Hugging Face cache, and the
Windows / WSL specifics. Each check is a function of the facts it judges (so every branch is testable on any OS);
`system_checks` reads those facts from this machine.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from falcon_desktop import paths
from falcon_desktop.errors import first_line
from falcon_desktop.install_plan import PYTHON_RANGE
from falcon_desktop.pip_commands import install_command, python_command
from falcon_desktop.probe_gpu import gigabytes

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"

# Falcon-7B's bf16 checkpoint is ~14.4 GB; `merge` writes one of the same size into the run directory.
SEVEN_B_CHECKPOINT_BYTES = 15 * 10**9
MIN_FREE_DISK_BYTES = 1 * 10**9  # below this even tokenizers, datasets and adapters fail to save
# Heuristics, not measurements: with less RAM than a 7B bf16 checkpoint, loading it leans on swap. Windows never
# overcommits: allocations past RAM + page file fail ("The paging file is too small", os error 1455), so there we
# want room for the checkpoint twice over (the mapped file and the tensors being quantized from it).
RAM_FOR_7B_BYTES = 16 * 2**30
COMMIT_FOR_7B_BYTES = 32 * 2**30

PACKAGES = ("transformers", "peft", "accelerate", "datasets")  # version rows; torch and bitsandbytes get their own


@dataclass(frozen=True)
class Check:
    """One row of `doctor`: what was measured and, unless it passed, the fix in one sentence."""

    name: str
    status: str  # PASS | WARN | FAIL
    value: str
    hint: str = ""


def python_check(version: tuple[int, int, int], pointer_bits: int) -> Check:
    value = f"{version[0]}.{version[1]}.{version[2]}, {pointer_bits}-bit"
    if pointer_bits != 64:
        return Check(
            "Python", FAIL, value,
            f"Install 64-bit Python {PYTHON_RANGE} from python.org, then the installer again: PyTorch has no 32-bit wheels.",
        )
    return Check("Python", PASS, value)


# -- package versions against the minimums in falcon-desktop's own metadata (pyproject.toml's lower bounds) --


def normalize_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_minimums(requirements: list[str]) -> dict[str, str]:
    """{"transformers": "5.0", ...} from requirement strings such as "transformers>=5.0"; extras are skipped."""
    minimums = {}
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        if "extra" in marker:
            continue
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?(.*)", spec)
        lower_bound = re.search(r">=\s*([0-9][^,\s]*)", match.group(2)) if match else None
        if lower_bound:
            minimums[normalize_name(match.group(1))] = lower_bound.group(1)
    return minimums


def declared_minimums() -> dict[str, str]:
    """The lower bounds falcon-desktop's installed distribution declares; {} when it is not installed (a bare checkout)."""
    try:
        return parse_minimums(metadata.requires("falcon-desktop") or [])
    except metadata.PackageNotFoundError:
        return {}


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version, trailing zeros dropped: "2.13.0+cpu" -> (2, 13), "5.0" -> (5,)."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    numbers = [int(part) for part in match.group().split(".")] if match else []
    while numbers and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def install_command_for(name: str, minimum: str | None) -> str:
    return install_command(f"{name}>={minimum}" if minimum else name)


def version_check(name: str, installed: str | None, minimum: str | None, command: str = "") -> Check:
    command = command or install_command_for(name, minimum)
    if installed is None:
        return Check(name, FAIL, "not installed", f"Install it: {command}")
    if minimum is None:
        return Check(
            name, WARN, f"{installed} (minimum unknown)",
            "Install falcon-desktop with its installer (installers/README.md), or in its checkout: "
            f"{python_command(['-m', 'pip', 'install', '-e', '.'])}",
        )
    if release(installed) < release(minimum):
        return Check(name, FAIL, f"{installed}, older than the {minimum} falcon-desktop needs", f"Upgrade: {command}")
    return Check(name, PASS, f"{installed} (>= {minimum})")


def package_checks(minimums: dict[str, str]) -> list[Check]:
    return [version_check(name, installed_version(name), minimums.get(name)) for name in PACKAGES]


# -- memory and disk --


def ram_check(total_bytes: int, available_bytes: int) -> Check:
    value = f"{gigabytes(total_bytes)} total, {gigabytes(available_bytes)} available"
    if total_bytes < RAM_FOR_7B_BYTES:
        return Check(
            "RAM", WARN, value,
            f"Loading a 7B model wants {gigabytes(RAM_FOR_7B_BYTES)}: close other programs or enlarge swap / the page file.",
        )
    return Check("RAM", PASS, value)


def page_file_check(ram_bytes: int, page_file_bytes: int) -> Check:
    value = f"{gigabytes(page_file_bytes)} (RAM + page file {gigabytes(ram_bytes + page_file_bytes)})"
    if ram_bytes + page_file_bytes < COMMIT_FOR_7B_BYTES:
        return Check(
            "Page file", WARN, value,
            f"Let Windows manage the page file or raise it until RAM + page file >= {gigabytes(COMMIT_FOR_7B_BYTES)} "
            "(System > About > Advanced system settings > Performance > Virtual memory).",
        )
    return Check("Page file", PASS, value)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(paths.nearest_existing(path)).free


def disk_check(name: str, path: Path, free: int, need: str, writable: bool = True) -> Check:
    value = f"{gigabytes(free)} free at {path}"
    if not writable:  # free space is no use on a read-only drive or folder
        return Check(name, FAIL, f"{path} is not writable",
                     "Set FALCON_DESKTOP_HOME to a folder you can write to (or give train --output one).")
    if free < MIN_FREE_DISK_BYTES:
        return Check(name, FAIL, value, f"Free disk space there: {need}.")
    if free < SEVEN_B_CHECKPOINT_BYTES:
        return Check(name, WARN, value, f"Free ~15 GB there or move it to a larger drive: {need}.")
    return Check(name, PASS, value)


# -- Hugging Face cache, symlinks, Windows and WSL --


def hf_cache_check(cache: Path, offline: bool, writable: bool) -> Check:
    value = f"{cache}" + (" (offline: HF_HUB_OFFLINE)" if offline else "")
    if not writable:
        return Check("HF cache", FAIL, value, "Set HF_HOME to a folder you can write to.")
    if offline:
        return Check(
            "HF cache", WARN, value, "Only models already in the cache load; unset HF_HUB_OFFLINE to download others."
        )
    return Check("HF cache", PASS, value)


def symlink_check(directory: Path) -> Check:
    """Try a real symlink where the Hugging Face cache lives: without them huggingface_hub stores duplicate copies."""
    try:
        with tempfile.TemporaryDirectory(prefix="falcon-desktop-", dir=paths.nearest_existing(directory)) as scratch:
            target = Path(scratch, "target")
            target.write_text("x", encoding="utf-8")
            Path(scratch, "link").symlink_to(target)
    except OSError as error:
        if sys.platform == "win32":
            hint = ("Turn on Developer Mode (Settings > System > For developers) so the Hugging Face cache can link "
                    "files instead of keeping duplicate copies.")
        else:
            hint = "Keep HF_HOME on a file system with symlinks (not FAT/exFAT) to avoid duplicate copies."
        return Check("Symlinks", WARN, f"not available in {directory} ({first_line(error)})", hint)
    return Check("Symlinks", PASS, f"work in {directory}")


def long_paths_check(registry_value: int | None) -> Check:
    if registry_value == 1:
        return Check("Long paths", PASS, "enabled")
    return Check(
        "Long paths", WARN, "disabled: paths over 260 characters fail",
        "Enable them (one admin PowerShell command: New-ItemProperty -Path "
        "HKLM:\\SYSTEM\\CurrentControlSet\\Control\\FileSystem -Name LongPathsEnabled -Value 1 -PropertyType DWORD "
        "-Force) or keep HF_HOME short, e.g. C:\\hf.",
    )


def _long_paths_registry_value() -> int | None:
    import winreg

    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Control\FileSystem") as key:
            return int(winreg.QueryValueEx(key, "LongPathsEnabled")[0])
    except OSError:
        return None


def wsl_check(kernel_release: str, hf_cache: Path) -> Check:
    release_name = kernel_release.lower()
    if "microsoft" not in release_name:
        return Check("WSL", PASS, "no (native Linux)")
    if "wsl2" not in release_name and "microsoft-standard" not in release_name:
        return Check(
            "WSL", FAIL, f"WSL 1 ({kernel_release}): no GPU access",
            "Convert the distribution in Windows PowerShell: wsl --set-version <distro> 2",
        )
    if hf_cache.as_posix().startswith("/mnt/"):
        return Check(
            "WSL", WARN, f"WSL 2, Hugging Face cache on a Windows drive ({hf_cache})",
            "Models load slowly through /mnt: set HF_HOME inside the Linux file system (e.g. ~/.cache/huggingface).",
        )
    return Check("WSL", PASS, f"WSL 2 ({kernel_release}): the GPU comes from the Windows driver")


def system_checks() -> list[Check]:
    """RAM, disk, Hugging Face cache and the platform's own rows, read from this machine."""
    import psutil

    memory = psutil.virtual_memory()
    hf_cache = paths.hf_cache_dir()
    rows = [ram_check(memory.total, memory.available)]
    if sys.platform == "win32":
        rows.append(page_file_check(memory.total, psutil.swap_memory().total))
    runs = paths.runs_dir()
    rows.append(disk_check("Disk (runs)", runs, free_bytes(runs), "`merge` writes a full 7B model (~15 GB)",
                           os.access(paths.nearest_existing(runs), os.W_OK)))
    rows.append(disk_check("Disk (HF cache)", hf_cache, free_bytes(hf_cache), "Falcon-7B downloads ~15 GB"))
    rows.append(hf_cache_check(hf_cache, paths.hf_offline(), os.access(paths.nearest_existing(hf_cache), os.W_OK)))
    rows.append(symlink_check(hf_cache))
    if sys.platform == "win32":
        rows.append(long_paths_check(_long_paths_registry_value()))
    elif sys.platform.startswith("linux"):
        rows.append(wsl_check(platform.release(), hf_cache))
    return rows


def this_python_check() -> Check:
    return python_check(tuple(sys.version_info[:3]), struct.calcsize("P") * 8)
