"""The installers' decisions, in Python so they are unit-tested: which interpreter, whether the machine can take the
install (pre-flight, before any download), which torch build, and the ordered pip steps that install it.

install.ps1 and install.sh stay thin: they find candidate interpreters, create the virtual environment, and run

    python -X utf8 -m falcon_desktop.install_plan check-python --options FILE   # exit 0: this interpreter will do
    python -X utf8 -m falcon_desktop.install_plan preflight    --options FILE   # exit 1: stop, Error/Hint printed
    <venv python> -X utf8 -m falcon_desktop.install_plan install --options FILE # the pip steps, live

with PYTHONPATH naming the checkout (or wheel) being installed, before falcon-desktop is. FILE is UTF-8 JSON: paths
travel through files, never through a console's code page (PowerShell 5.1 decodes a child's piped output with the
OEM code page, which mangles an accented or Cyrillic user name). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from falcon_desktop import __version__
from falcon_desktop.paths import nearest_existing
from falcon_desktop.pip_commands import POSIX, POWERSHELL, command_line
from falcon_desktop.torch_build import (
    OLDEST_SUPPORTED_CAPABILITY,
    TORCH_VERSION,
    TorchBuild,
    build_for_index,
    choose_torch_build,
    detect_driver,
)

OLDEST_PYTHON, NEWEST_PYTHON = (3, 10), (3, 14)  # torch 2.13.0 ships cp310-cp314 wheels (win_amd64 and Linux)
PYTHON_RANGE = f"{OLDEST_PYTHON[0]}.{OLDEST_PYTHON[1]}-{NEWEST_PYTHON[0]}.{NEWEST_PYTHON[1]}"
GET_PYTHON_HINT = (
    "Install 64-bit Python 3.12 from https://www.python.org/downloads/windows/ (or: winget install --id "
    "Python.Python.3.12 -e), open a new terminal and run the installer again."
)

# Windows refuses paths of MAX_PATH (260) characters or more, the terminating NUL included, unless LongPathsEnabled
# is set. The deepest file in torch 2.13's Windows wheel lies 171 characters below site-packages (issue 19's count;
# the Linux CPU wheel's deepest is 119 here).
MAX_PATH = 260
DEEPEST_TORCH_FILE_CHARS = 171
WINDOWS_SITE_PACKAGES = "\\Lib\\site-packages\\"
LONG_PATHS_COMMAND = (
    "New-ItemProperty -Path HKLM:\\SYSTEM\\CurrentControlSet\\Control\\FileSystem -Name LongPathsEnabled "
    "-Value 1 -PropertyType DWORD -Force"
)

# Estimates, not measurements: a CUDA torch wheel is ~2.5 GB, pip keeps a copy in its cache while it unpacks one
# larger still; the CPU install measured 1.7 GB of environment on the Linux CI machine (du of a fresh venv).
INSTALL_FREE_BYTES = {"cpu": 4 * 10**9, "cuda": 12 * 10**9}

# How each installer spells its options, so a hint names the flag the user actually has.
FLAGS = {
    POWERSHELL: {"cpu": "-Cpu", "index_url": "-IndexUrl", "torch_spec": "-TorchSpec", "prefix": "-Prefix",
                 "python": "-Python"},
    POSIX: {"cpu": "--cpu", "index_url": "--index-url", "torch_spec": "--torch-spec", "prefix": "--prefix",
            "python": "--python"},
}


@dataclass(frozen=True)
class Finding:
    """Something pre-flight found: fatal ones stop the install before anything is downloaded or replaced."""

    message: str
    hint: str = ""
    fatal: bool = True


@dataclass(frozen=True)
class Options:
    """What the installer was asked to do (its command line, as the script parsed it)."""

    prefix: str
    source: str
    work_dir: str
    cpu: bool = False
    index_url: str = ""
    torch_spec: str = ""
    shell: str = POSIX  # which installer: names its flags in hints

    @classmethod
    def read(cls, path: Path) -> Options:
        fields = json.loads(path.read_text(encoding="utf-8-sig"))  # PowerShell 5.1 may write a BOM
        return cls(**{key: value for key, value in fields.items() if key in cls.__dataclass_fields__})

    def flag(self, name: str) -> str:
        return FLAGS[self.shell][name]


@dataclass(frozen=True)
class Step:
    """One pip run: `<venv python> arguments...`."""

    title: str
    arguments: list[str]
    env: dict[str, str] = field(default_factory=dict)
    network_hint: bool = True  # a failure is most likely the network's


# -- the interpreter --


def is_store_python(executable: str, base_prefix: str) -> bool:
    """Microsoft Store Python: it redirects writes under %LOCALAPPDATA% (where the environment goes) into its
    private package folder, where the installer cannot find them again."""
    return "\\windowsapps\\" in executable.lower() or "pythonsoftwarefoundation.python" in base_prefix.lower()


def python_findings(version: tuple[int, int], pointer_bits: int, executable: str, base_prefix: str) -> list[Finding]:
    found = []
    if not OLDEST_PYTHON <= tuple(version[:2]) <= NEWEST_PYTHON or pointer_bits != 64:
        found.append(Finding(
            f"{executable} is Python {version[0]}.{version[1]}, {pointer_bits}-bit; PyTorch needs 64-bit "
            f"Python {PYTHON_RANGE}.", GET_PYTHON_HINT,
        ))
    if is_store_python(executable, base_prefix):
        found.append(Finding(
            f"{executable} is the Microsoft Store's Python, which hides the environment the installer creates.",
            GET_PYTHON_HINT,
        ))
    return found


# -- the machine --


def long_path_overrun(prefix: str) -> int:
    """How many characters the deepest torch file under environment `prefix` passes Windows' MAX_PATH by (0: fits)."""
    deepest = len(str(PureWindowsPath(prefix))) + len(WINDOWS_SITE_PACKAGES) + DEEPEST_TORCH_FILE_CHARS
    return max(0, deepest - (MAX_PATH - 1))


def long_path_finding(prefix: str, long_paths_enabled: bool, options: Options) -> Finding | None:
    overrun = long_path_overrun(prefix)
    if long_paths_enabled or overrun == 0:
        return None
    budget = len(str(PureWindowsPath(prefix))) - overrun
    return Finding(
        f"torch's deepest file would be {overrun} characters past Windows' 260-character limit under {prefix} "
        "(long paths are off); pip would fail halfway with 'No such file or directory'.",
        f"Enable long paths (in an administrator PowerShell: {LONG_PATHS_COMMAND}), or install to a folder of at "
        f"most {budget} characters: {options.flag('prefix')} C:\\falcon-desktop\\venv",
    )


def disk_finding(free_bytes: int, tag: str, where: str) -> Finding | None:
    need = INSTALL_FREE_BYTES["cpu" if tag == "cpu" else "cuda"]
    if free_bytes >= need:
        return None
    return Finding(
        f"{free_bytes / 10**9:.1f} GB free at {where}; installing the {tag} build of torch needs about "
        f"{need // 10**9} GB.",
        "Free disk space there, or install elsewhere with the prefix option and set PIP_CACHE_DIR to a larger drive.",
    )


def driver_finding(driver: str | None, capability: tuple[int, int] | None, build: TorchBuild,
                   options: Options) -> Finding | None:
    """An NVIDIA driver whose GPU could train but whose age leaves only the CPU build: stop and say so, rather than
    installing a torch that cannot use the GPU and calling it done."""
    if driver is None or build.tag != "cpu":
        return None
    if capability is not None and capability < OLDEST_SUPPORTED_CAPABILITY:
        return Finding(
            f"the GPU (compute capability {capability[0]}.{capability[1]}) is older than any current PyTorch CUDA "
            "build supports: installing the CPU build, which cannot train 7B models.", fatal=False,
        )
    return Finding(
        f"NVIDIA driver {driver} is too old for PyTorch's CUDA builds ({build.reason}).",
        "Update the driver from https://www.nvidia.com/drivers (R580 or newer runs every build) and run the installer "
        f"again; or install the CPU build anyway with {options.flag('cpu')}.",
    )


def processes_finding(running: Sequence[str]) -> Finding | None:
    if not running:
        return None
    return Finding(
        f"falcon-desktop is running ({', '.join(running)}); Windows keeps its files locked (WinError 32).",
        "Close `ask`, `train` and every other falcon-desktop window (Ctrl-C in `train` saves a checkpoint), then "
        "run the installer again.",
    )


# -- torch and the steps --


def torch_choice(options: Options, driver: str | None, capability: tuple[int, int] | None) -> TorchBuild | None:
    """The build to install, or None when the user's own spec or index decides and its name does not say."""
    if options.cpu:
        return choose_torch_build(None, None)
    if options.index_url:
        return build_for_index(options.index_url)
    if options.torch_spec:
        return None
    return choose_torch_build(driver, capability)


def torch_steps(options: Options, build: TorchBuild | None) -> list[Step]:
    """Install or switch torch first, so the package's own step finds it satisfied (no resolver noise) and never
    re-resolves it. Each step downloads before pip removes anything: a failure leaves the old torch."""
    if options.torch_spec:
        index = ["--index-url", build.index_url if build else options.index_url] if build or options.index_url else []
        return [Step(f"Installing {options.torch_spec}", ["-m", "pip", "install", options.torch_spec, *index])]
    if build is not None:
        return [Step(f"Installing {build.requirement} ({build.reason})", ["-m", "pip", *build.pip_args()])]
    # An index whose name does not say its build: force the pinned release's files, then resolve its dependencies.
    pinned = f"torch=={TORCH_VERSION}"
    return [
        Step(f"Installing {pinned} from {options.index_url}",
             ["-m", "pip", "install", "--force-reinstall", "--no-deps", pinned, "--index-url", options.index_url]),
        Step("Installing torch's dependencies", ["-m", "pip", "install", pinned, "--index-url", options.index_url]),
    ]


def package_steps(source: str, work_dir: str, version: str = __version__) -> list[Step]:
    """Build the checkout into a wheel (outside it: setuptools' <checkout>/build keeps deleted modules), install
    its other dependencies, then this exact build of falcon-desktop over whatever version was there."""
    steps = []
    wheel = source
    if Path(source).is_dir():
        wheel = str(Path(work_dir) / f"falcon_desktop-{version}-py3-none-any.whl")
        steps.append(Step(
            f"Building falcon-desktop {version} from {source}",
            ["-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", work_dir, source],
            env={"DIST_EXTRA_CONFIG": str(Path(work_dir) / "build.cfg")},
        ))
    steps.append(Step("Installing falcon-desktop's other dependencies", ["-m", "pip", "install", wheel]))
    steps.append(Step(
        "Installing this build of falcon-desktop",
        ["-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", wheel], network_hint=False,
    ))
    return steps


def network_hint(options: Options) -> str:
    return (
        "If pip could not connect: behind a proxy, set HTTPS_PROXY (PowerShell: $env:HTTPS_PROXY = "
        "'http://proxy:8080'; bash: export HTTPS_PROXY=http://proxy:8080) and run the installer again; or use a "
        f"mirror of PyTorch's index with {options.flag('index_url')} URL, or a downloaded torch wheel with "
        f"{options.flag('torch_spec')} PATH\\TO\\torch-{TORCH_VERSION}-....whl. Nothing was replaced: the torch you "
        "had is still installed."
    )


def run_steps(steps: Sequence[Step], python: str, options: Options) -> int:
    """Run each step with pip's output going straight to the console (its live progress bar); stop at the first
    failure with the hint. PYTHONPATH (the checkout, set only so this module loads) is kept from pip."""
    base_env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    for step in steps:
        print(f"==> {step.title}", flush=True)
        code = subprocess.run([python, *step.arguments], env=base_env | step.env).returncode
        if code != 0:
            print(f"Error: {step.title} failed: {command_line([python, *step.arguments], options.shell)} exited "
                  f"with {code}.", file=sys.stderr)
            if step.network_hint:
                print(f"Hint: {network_hint(options)}", file=sys.stderr)
            return 1
    return 0


# -- the commands the installers run --


def _report(findings: Sequence[Finding]) -> int:
    for finding in findings:
        if finding.fatal:
            print(f"Error: {finding.message}", file=sys.stderr)
            if finding.hint:
                print(f"Hint: {finding.hint}", file=sys.stderr)
        else:
            print(f"Warning: {finding.message}", file=sys.stderr)
    return 1 if any(finding.fatal for finding in findings) else 0


def _long_paths_enabled() -> bool:
    import winreg

    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Control\FileSystem") as key:
            return int(winreg.QueryValueEx(key, "LongPathsEnabled")[0]) == 1
    except OSError:
        return False


def check_python(out: Path | None) -> int:
    """This interpreter's verdict; its path goes to `out` (UTF-8) for the script to build the environment with."""
    code = _report(python_findings(sys.version_info[:2], struct.calcsize("P") * 8, sys.executable, sys.base_prefix))
    if code == 0 and out is not None:
        out.write_text(sys.executable, encoding="utf-8")
    return code


def preflight(options: Options, running: Sequence[str]) -> int:
    """Every check that can stop the install, before anything is downloaded or replaced."""
    driver, capability = detect_driver()
    build = torch_choice(options, driver, capability)
    findings = python_findings(sys.version_info[:2], struct.calcsize("P") * 8, sys.executable, sys.base_prefix)
    if sys.platform == "win32":
        findings.append(long_path_finding(options.prefix, _long_paths_enabled(), options))
    where = nearest_existing(Path(options.prefix))
    findings.append(disk_finding(shutil.disk_usage(where).free, build.tag if build else "cuda", str(where)))
    if build is not None and not (options.cpu or options.index_url):
        findings.append(driver_finding(driver, capability, build, options))
    findings.append(processes_finding(running))
    return _report([finding for finding in findings if finding is not None])


def install(options: Options) -> int:
    """The pip steps, run by the environment's own interpreter (this one)."""
    driver, capability = detect_driver()
    work_dir = Path(options.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "build.cfg").write_text(f"[build]\nbuild_base = {work_dir / 'build'}\n", encoding="utf-8")
    steps = torch_steps(options, torch_choice(options, driver, capability))
    steps += package_steps(options.source, options.work_dir)
    return run_steps(steps, sys.executable, options)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m falcon_desktop.install_plan", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["check-python", "preflight", "install"])
    parser.add_argument("--options", type=Path, help="UTF-8 JSON with the installer's options")
    parser.add_argument("--out", type=Path, help="check-python: write this interpreter's path here")
    parser.add_argument("--running", action="append", default=[], help="preflight: a falcon-desktop process found")
    args = parser.parse_args(argv)
    if args.command == "check-python":
        return check_python(args.out)
    if args.options is None:
        parser.error(f"{args.command} needs --options FILE")
    options = Options.read(args.options)
    return preflight(options, args.running) if args.command == "preflight" else install(options)


if __name__ == "__main__":
    raise SystemExit(main())
