"""The installers: install.sh for real (fresh venv, install, launcher, re-run, uninstall), install.ps1 and
install.cmd by parsing and by what Windows PowerShell 5.1 and cmd.exe can read.

The end-to-end test takes minutes without `--system-site-packages`, so it is marked `slow`; set
FALCON_DESKTOP_SKIP_INSTALLER_TEST=1 to skip it, or FALCON_DESKTOP_INSTALLER_TEST_ISOLATED=1 to make it install every
dependency into the fresh environment (as a user's first install does) instead of reusing this Python's packages.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from dataclasses import replace

from falcon_desktop import __version__
from falcon_desktop.install_plan import (
    Options,
    disk_finding,
    driver_finding,
    long_path_finding,
    long_path_overrun,
    network_hint,
    package_steps,
    processes_finding,
    python_findings,
    torch_choice,
    torch_steps,
)
from falcon_desktop.pip_commands import POSIX, POWERSHELL, command_line
from falcon_desktop.torch_build import TORCH_VERSION, choose_torch_build

INSTALLERS = Path(__file__).resolve().parents[1] / "installers"
INSTALL_SH = INSTALLERS / "install.sh"
INSTALL_PS1 = INSTALLERS / "install.ps1"
INSTALL_CMD = INSTALLERS / "install.cmd"

needs_bash = pytest.mark.skipif(shutil.which("bash") is None or sys.platform == "win32", reason="needs bash on Linux")


def run_install_sh(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL_SH), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=900,
    )


def installer_env(home: Path) -> dict[str, str]:
    """This environment with HOME moved to `home`, so the launcher lands there, and none of our overrides set."""
    # PYTHONPATH too: a developer's (pointing at a checkout) would decide which falcon_desktop the venv imports.
    overrides = {"XDG_DATA_HOME", "FALCON_DESKTOP_VENV", "FALCON_DESKTOP_BIN", "PYTHONPATH"}
    env = {name: value for name, value in os.environ.items() if name not in overrides}
    # Keep pip's download cache where it was: the test is about the installer, not about downloading.
    env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    # PyTorch's own index may be unreachable here (only PyPI is); fail over to the configured indexes at once.
    env["PIP_RETRIES"] = "0"
    env["HOME"] = str(home)
    return env


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"


@needs_bash
def test_install_sh_has_valid_syntax() -> None:
    result = subprocess.run(["bash", "-n", str(INSTALL_SH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@needs_bash
@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_install_sh_passes_shellcheck() -> None:
    result = subprocess.run(["shellcheck", str(INSTALL_SH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@needs_bash
def test_install_sh_rejects_unknown_option(tmp_path: Path) -> None:
    result = run_install_sh("--frobnicate", env=installer_env(tmp_path))
    assert result.returncode == 1
    assert "Error: unknown option '--frobnicate'" in result.stderr
    assert "--help" in result.stderr


@needs_bash
def test_install_sh_refuses_a_directory_that_is_not_a_venv(tmp_path: Path) -> None:
    precious = tmp_path / "my files"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me", encoding="utf-8")
    env = installer_env(tmp_path / "home")

    install = run_install_sh("--python", sys.executable, "--prefix", precious, env=env)
    uninstall = run_install_sh("--uninstall", "--prefix", precious, env=env)

    assert install.returncode == 1, describe(install)
    assert "is not a virtual environment; refusing to touch it" in install.stderr
    assert uninstall.returncode == 0, describe(uninstall)
    assert "left it alone" in uninstall.stderr
    assert (precious / "thesis.txt").read_text(encoding="utf-8") == "keep me"


def fake_nvidia_smi(directory: Path, answer: str) -> Path:
    """A stand-in for the driver's tool, which this machine lacks (absent hardware, not our code)."""
    directory.mkdir(parents=True, exist_ok=True)
    tool = directory / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\necho '{answer}'\n", encoding="utf-8")
    tool.chmod(0o755)
    return directory


def fake_torch_wheel(directory: Path, version: str) -> Path:
    """A tiny wheel named torch, so "the torch you had" is installed in seconds; `import torch` reads its version."""
    import zipfile

    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("torch/__init__.py", f"__version__ = {version!r}\n")
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return wheel


@needs_bash
def test_install_sh_stops_on_an_old_driver_before_downloading(tmp_path: Path) -> None:
    env = installer_env(tmp_path / "home")
    env["PATH"] = f"{fake_nvidia_smi(tmp_path / 'bin', '470.256.02, 8.6')}{os.pathsep}{env['PATH']}"
    venv = tmp_path / "venv"
    result = run_install_sh("--python", sys.executable, "--prefix", venv, env=env)
    assert result.returncode == 1, describe(result)
    assert "Error: NVIDIA driver 470.256.02 is too old" in result.stderr
    assert "nvidia.com/drivers" in result.stderr and "--cpu" in result.stderr
    assert not venv.exists(), "pre-flight must stop before anything is created or downloaded"


@needs_bash
def test_install_sh_with_an_unreachable_index_keeps_the_installed_torch(tmp_path: Path) -> None:
    """A CUDA driver (fake nvidia-smi) and a PyTorch index that cannot be reached: the installer fails with the
    network hint, and the environment's torch is the one it had."""
    venv = tmp_path / "vënv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = installer_env(tmp_path / "home")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(fake_torch_wheel(tmp_path / "wheels", "2.13.0+cpu"))], check=True, env=env)
    env["PATH"] = f"{fake_nvidia_smi(tmp_path / 'bin', '560.94, 8.9')}{os.pathsep}{env['PATH']}"

    result = run_install_sh("--python", sys.executable, "--prefix", venv,
                            "--index-url", "http://127.0.0.1:9/whl/cu128", env=env)

    assert result.returncode == 1, describe(result)
    assert "==> Installing torch==2.13.0+cu128" in result.stdout
    assert "HTTPS_PROXY" in result.stderr and "Nothing was replaced" in result.stderr
    kept = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert kept == "2.13.0+cpu"


@pytest.mark.slow
@needs_bash
@pytest.mark.skipif(
    os.environ.get("FALCON_DESKTOP_SKIP_INSTALLER_TEST") == "1", reason="FALCON_DESKTOP_SKIP_INSTALLER_TEST=1"
)
def test_install_sh_installs_upgrades_and_uninstalls(tmp_path: Path) -> None:
    root = tmp_path / "spaced dir ünïcode"
    home = root / "hôme"
    venv = root / "vënv dir"
    launcher = home / ".local" / "bin" / "falcon-desktop"
    env = installer_env(home)
    # The torch already here (the CPU wheel on this machine): pip must resolve it without PyTorch's index.
    torch_spec = f"torch=={metadata.version('torch')}"
    common = ["--python", sys.executable, "--prefix", venv, "--torch-spec", torch_spec]
    if os.environ.get("FALCON_DESKTOP_INSTALLER_TEST_ISOLATED") != "1":
        common.append("--system-site-packages")

    install = run_install_sh(*common, env=env)
    assert install.returncode == 0, describe(install)
    assert f"==> Installing {torch_spec}" in install.stdout
    assert "download.pytorch.org" not in install.stdout + install.stderr
    assert "is not on your PATH" in install.stderr
    assert "QLoRA fine-tune of 7B models:" in install.stdout, "doctor's verdict ends the install"
    assert install.stdout.rstrip().endswith("demo") and "next:" in install.stdout
    # torch first, so the package's step never prints "falcon-desktop requires X, which is not installed"
    assert "which is not installed" not in install.stdout + install.stderr

    # Run from a folder holding a broken falcon_desktop package: the launcher must use the environment's copy.
    decoy = tmp_path / "decoy"
    (decoy / "falcon_desktop").mkdir(parents=True)
    decoy_init = decoy / "falcon_desktop" / "__init__.py"
    decoy_init.write_text("raise SystemExit('imported from the current directory')\n", encoding="utf-8")
    version = subprocess.run(
        [str(launcher), "--version"], capture_output=True, text=True, encoding="utf-8", env=env, cwd=decoy
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"falcon-desktop {__version__}"
    imported_from = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import falcon_desktop; print(falcon_desktop.__file__)"],
        capture_output=True, text=True, encoding="utf-8", check=True, cwd=tmp_path, env=env,
    ).stdout.strip()
    assert Path(imported_from).is_relative_to(venv), imported_from

    # Re-running upgrades in place.
    upgrade = run_install_sh(*common, env=env)
    assert upgrade.returncode == 0, describe(upgrade)
    assert f"Upgrading the environment in {venv}" in upgrade.stdout

    uninstall = run_install_sh("--uninstall", "--prefix", venv, env=env)
    assert uninstall.returncode == 0, describe(uninstall)
    assert not venv.exists()
    assert not launcher.exists()
    assert home.is_dir(), "uninstall removed more than the environment and the launcher"
    again = run_install_sh("--uninstall", "--prefix", venv, env=env)
    assert again.returncode == 0 and "Nothing to remove" in again.stdout, describe(again)


def test_installers_call_the_python_plan() -> None:
    sh = INSTALL_SH.read_text(encoding="utf-8")
    ps1 = INSTALL_PS1.read_text(encoding="utf-8")
    for command in ("check-python", "preflight", "install"):
        assert f"-m falcon_desktop.install_plan {command}" in sh or f"install_plan {command}" in sh
        assert f"'{command}'" in ps1
    # Paths come back through UTF-8 files under -X utf8, never through a console code page.
    assert "-X utf8" in sh and "'-X', 'utf8'" in ps1 and "ReadAllText($Path, [System.Text.Encoding]::UTF8)" in ps1
    # pip runs on the console (live progress), not through PowerShell's pipeline; the launcher is pip's .exe.
    assert "UseShellExecute = $false" in ps1 and "Out-Host" not in ps1
    assert "falcon-desktop.exe" in ps1 and "@echo off" not in ps1
    # No fallback to a PyPI name that is not ours.
    assert "${source_spec:-falcon-desktop}" not in sh and "return 'falcon-desktop'" not in ps1
    for script in (sh, ps1):
        assert "git clone" in script and "zip" in script


# -- install_plan: the installers' decisions --

WINDOWS_PREFIX = "C:\\Users\\{user}\\AppData\\Local\\falcon-desktop\\venv"
PS_OPTIONS = Options(prefix="C:\\x", source="C:\\src", work_dir="C:\\tmp", shell=POWERSHELL)
SH_OPTIONS = Options(prefix="/x", source="/src", work_dir="/tmp/w")


@pytest.mark.parametrize(
    ("version", "bits", "executable", "base_prefix", "problems"),
    [
        ((3, 12), 64, "C:\\Python312\\python.exe", "C:\\Python312", 0),
        ((3, 14), 64, "/usr/bin/python3.14", "/usr", 0),  # torch 2.13.0 ships cp314 wheels
        ((3, 10), 64, "/usr/bin/python3.10", "/usr", 0),
        ((3, 9), 64, "/usr/bin/python3.9", "/usr", 1),
        ((3, 15), 64, "/usr/bin/python3.15", "/usr", 1),
        ((3, 12), 32, "C:\\Python312-32\\python.exe", "C:\\Python312-32", 1),
        # Microsoft Store Python, found by its path or by its package folder
        ((3, 12), 64, "C:\\Users\\Åsa\\AppData\\Local\\Microsoft\\WindowsApps\\python3.12.exe", "C:\\x", 1),
        ((3, 12), 64, "C:\\Program Files\\x\\python.exe",
         "C:\\Program Files\\WindowsApps\\PythonSoftwareFoundation.Python.3.12_3.12.2032.0_x64__qbz5n2kfra8p0", 1),
    ],
)
def test_python_vetting(version, bits, executable, base_prefix, problems) -> None:
    findings = python_findings(version, bits, executable, base_prefix)
    assert len(findings) == problems
    assert all(finding.fatal and "python.org" in finding.hint for finding in findings)


def test_long_path_budget() -> None:
    # site-packages adds 19 characters, the deepest torch file 171: prefixes of up to 69 characters fit in 259.
    fits = "C:\\" + "a" * 66
    assert len(fits) == 69 and long_path_overrun(fits) == 0 and long_path_overrun(fits + "b") == 1
    short_name, long_name = WINDOWS_PREFIX.format(user="a" * 26), WINDOWS_PREFIX.format(user="Анастасия-" * 3)
    assert long_path_finding(short_name, False, PS_OPTIONS) is None
    finding = long_path_finding(long_name, False, PS_OPTIONS)
    assert finding is not None and finding.fatal and "4 characters past" in finding.message
    assert "LongPathsEnabled -Value 1" in finding.hint and "-Prefix C:\\falcon-desktop\\venv" in finding.hint
    assert "at most 69 characters" in finding.hint
    assert long_path_finding(long_name, True, PS_OPTIONS) is None


def test_old_driver_on_a_capable_gpu_stops_before_download() -> None:
    build = choose_torch_build("470.256.02", (8, 6))
    finding = driver_finding("470.256.02", (8, 6), build, PS_OPTIONS)
    assert build.tag == "cpu" and finding.fatal
    assert "too old" in finding.message and "nvidia.com/drivers" in finding.hint and "-Cpu" in finding.hint
    assert "--cpu" in driver_finding("470.256.02", None, build, SH_OPTIONS).hint
    kepler = driver_finding("560.94", (3, 7), choose_torch_build("560.94", (3, 7)), PS_OPTIONS)
    assert not kepler.fatal  # nothing to update: the CPU build, said out loud
    assert driver_finding(None, None, choose_torch_build(None, None), PS_OPTIONS) is None
    assert driver_finding("560.94", (8, 9), choose_torch_build("560.94", (8, 9)), PS_OPTIONS) is None


def test_disk_and_running_process_findings() -> None:
    assert disk_finding(13 * 10**9, "cu128", "C:\\") is None
    low = disk_finding(5 * 10**9, "cu128", "C:\\")
    assert low.fatal and "5.0 GB free at C:\\" in low.message
    assert disk_finding(5 * 10**9, "cpu", "/") is None
    assert processes_finding([]) is None
    busy = processes_finding(["falcon-desktop (pid 42)"])
    assert "WinError 32" in busy.message and "Close" in busy.hint


def test_torch_steps_come_first_and_download_before_replacing() -> None:
    chosen = torch_choice(SH_OPTIONS, "560.94", (8, 9))
    (step,) = torch_steps(SH_OPTIONS, chosen)
    assert step.arguments == ["-m", "pip", "install", f"torch=={TORCH_VERSION}+cu128", "--index-url",
                              "https://download.pytorch.org/whl/cu128"]
    cpu = replace(SH_OPTIONS, cpu=True)
    assert torch_steps(cpu, torch_choice(cpu, "560.94", (8, 9)))[0].arguments[3] == f"torch=={TORCH_VERSION}+cpu"
    # An index named for its build switches to it even over the same release of another build (PEP 440 local).
    cu126 = replace(SH_OPTIONS, index_url="https://download.pytorch.org/whl/cu126")
    assert torch_steps(cu126, torch_choice(cu126, None, None))[0].arguments[3] == f"torch=={TORCH_VERSION}+cu126"
    # A mirror whose name says nothing: the pinned release's files forced (--no-deps), then its dependencies.
    mirror = replace(SH_OPTIONS, index_url="https://mirror.example/simple")
    forced, deps = torch_steps(mirror, torch_choice(mirror, None, None))
    assert forced.arguments[3:6] == ["--force-reinstall", "--no-deps", f"torch=={TORCH_VERSION}"]
    assert deps.arguments[3:] == [f"torch=={TORCH_VERSION}", "--index-url", "https://mirror.example/simple"]
    local = replace(SH_OPTIONS, torch_spec="/wheels/torch-2.13.0+cu128-cp312-cp312-win_amd64.whl")
    assert torch_steps(local, torch_choice(local, None, None))[0].arguments == ["-m", "pip", "install", local.torch_spec]


def test_package_steps(tmp_path: Path) -> None:
    build, deps, package = package_steps(str(tmp_path), "/tmp/w", version="9.9")
    wheel = str(Path("/tmp/w") / "falcon_desktop-9.9-py3-none-any.whl")
    assert build.arguments[-1] == str(tmp_path) and build.env["DIST_EXTRA_CONFIG"].endswith("build.cfg")
    assert deps.arguments == ["-m", "pip", "install", wheel]
    assert package.arguments[-3:] == ["--force-reinstall", "--no-deps", wheel]
    assert [step.arguments[-1] for step in package_steps("/w/falcon_desktop-1.0-py3-none-any.whl", "/tmp/w")] == [
        "/w/falcon_desktop-1.0-py3-none-any.whl"] * 2


def test_network_hint_names_the_installers_own_flags() -> None:
    ps = network_hint(PS_OPTIONS)
    assert "HTTPS_PROXY" in ps and "-IndexUrl" in ps and "-TorchSpec" in ps and "still installed" in ps
    assert "--index-url" in network_hint(SH_OPTIONS) and "--torch-spec" in network_hint(SH_OPTIONS)


def test_check_python_writes_its_path_as_utf8(tmp_path: Path) -> None:
    out = tmp_path / "пути" / "python.txt"
    out.parent.mkdir()
    result = subprocess.run(
        [sys.executable, "-X", "utf8", "-m", "falcon_desktop.install_plan", "check-python", "--out", str(out)],
        capture_output=True, text=True, encoding="utf-8",
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text(encoding="utf-8") == sys.executable


# -- pasteable commands --


@pytest.mark.parametrize(
    ("executable", "arguments", "shell", "expected"),
    [
        ("C:\\Users\\Jöran Ünal\\AppData\\Local\\falcon-desktop\\venv\\Scripts\\python.exe",
         ["-m", "pip", "install", "--force-reinstall", "--no-deps", "bitsandbytes==0.50.2"], POWERSHELL,
         '& "C:\\Users\\Jöran Ünal\\AppData\\Local\\falcon-desktop\\venv\\Scripts\\python.exe" -m pip install '
         "--force-reinstall --no-deps bitsandbytes==0.50.2"),
        ("C:\\Python312\\python.exe", ["-m", "pip", "install", "peft>=0.17"], POWERSHELL,
         '& "C:\\Python312\\python.exe" -m pip install "peft>=0.17"'),
        ("C:\\Users\\$pecial\\python.exe", ["-V"], POWERSHELL, "& 'C:\\Users\\$pecial\\python.exe' -V"),
        ("/home/a b/.venv/bin/python", ["-m", "pip", "install", "peft>=0.17"], POSIX,
         "'/home/a b/.venv/bin/python' -m pip install 'peft>=0.17'"),
    ],
)
def test_command_line_quoting(executable, arguments, shell, expected) -> None:
    assert command_line([executable, *arguments], shell) == expected


# -- one torch pin: the module, the README's commands, CI --

README = INSTALLERS.parent / "README.md"
CI_RUN = INSTALLERS.parent / ".ci" / "run"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if "pip install" in line]


def test_readme_and_ci_use_the_tested_torch_pin() -> None:
    setup = readme_commands()[:2]
    assert len(setup) == 2 and all(f"torch=={TORCH_VERSION}" in line for line in setup)
    # A fresh Debian 12 Python refuses system-wide pip installs (PEP 668): both make and use a venv.
    assert all(line.startswith("python3 -m venv .venv && . .venv/bin/activate && ") for line in setup)
    assert setup[1].rstrip().endswith("python -m pytest -q")
    ci = CI_RUN.read_text(encoding="utf-8")
    assert setup[1].strip() in ci.splitlines(), ".ci/run must run exactly the README's test command"
    assert re.search(r'requires-python = ">=3\.10,<3\.15"', (INSTALLERS.parent / "pyproject.toml").read_text("utf-8"))


# Syntax that Windows PowerShell 5.1 does not have (it arrived in PowerShell 6 or 7), and 7-only automatic variables
# that StrictMode turns into errors on 5.1.
PS7_ONLY = {
    "null-coalescing operator": re.compile(r"\?\?"),
    "null-conditional member access": re.compile(r"\?\.|\?\["),
    "pipeline chain operator": re.compile(r"&&|\|\|"),
    "ternary operator": re.compile(r"\s\?\s[^:]+\s:\s"),
    "ForEach-Object -Parallel": re.compile(r"-Parallel\b", re.IGNORECASE),
    "ConvertFrom-Json -AsHashtable": re.compile(r"-AsHashtable\b", re.IGNORECASE),
    "utf8NoBOM encoding": re.compile(r"utf8NoBOM", re.IGNORECASE),
    "$IsWindows/$IsLinux/$IsMacOS": re.compile(r"\$Is(Windows|Linux|MacOS)\b", re.IGNORECASE),
    "clean block": re.compile(r"^\s*clean\s*\{", re.IGNORECASE),
    "Join-Path with several children": re.compile(r"-AdditionalChildPath\b", re.IGNORECASE),
}


def powershell_code_only(source: str) -> str:
    """`source` without comments and string contents, so only code is searched (approximate but conservative)."""
    source = re.sub(r"<#.*?#>", "", source, flags=re.DOTALL)
    lines = []
    for line in source.splitlines():
        line = re.sub(r"'[^']*'", "''", line)
        line = re.sub(r'"(?:`.|[^"`])*"', '""', line)
        lines.append(line.split("#", 1)[0])
    return "\n".join(lines)


def powershell7_constructs(source: str) -> list[str]:
    code = powershell_code_only(source)
    return [name for name, pattern in PS7_ONLY.items() if pattern.search(code)]


@pytest.mark.parametrize(
    ("snippet", "construct"),
    [
        ("$a = $b ?? 'x'", "null-coalescing operator"),
        ("$n = $item?.Name", "null-conditional member access"),
        ("git status && echo ok", "pipeline chain operator"),
        ("$x = $ok ? 'yes' : 'no'", "ternary operator"),
        ("1..3 | ForEach-Object -Parallel { $_ }", "ForEach-Object -Parallel"),
        ("if ($IsWindows) { }", "$IsWindows/$IsLinux/$IsMacOS"),
    ],
)
def test_powershell7_check_catches(snippet: str, construct: str) -> None:
    assert powershell7_constructs(snippet) == [construct]
    assert powershell7_constructs(f"# {snippet}\n$s = '{snippet.replace(chr(39), '')}'") == []


def test_install_ps1_runs_on_windows_powershell_5_1() -> None:
    raw = INSTALL_PS1.read_bytes()
    # Windows PowerShell 5.1 reads a script without a BOM in the ANSI code page: keep it ASCII.
    assert raw.isascii(), "install.ps1 must be pure ASCII"
    source = raw.decode("ascii")
    assert powershell7_constructs(source) == []
    assert "Set-StrictMode -Version Latest" in source
    assert "$ErrorActionPreference = 'Stop'" in source
    assert re.search(r"^\s*\[switch\]\$Uninstall", source, re.MULTILINE)
    # Parameters and paths go to native programs as arrays, never pasted into one command string.
    assert "Invoke-Expression" not in source and "iex " not in source


def powershell_parse_errors(source: bytes) -> list[str]:
    tree_sitter = pytest.importorskip("tree_sitter")
    grammar = pytest.importorskip("tree_sitter_powershell")
    parser = tree_sitter.Parser(tree_sitter.Language(grammar.language()))
    errors: list[str] = []
    pending = [parser.parse(source).root_node]
    while pending:
        node = pending.pop()
        if node.type == "ERROR" or node.is_missing:
            line, column = node.start_point
            errors.append(f"line {line + 1}, column {column + 1}: {node.text[:60]!r}")
        pending.extend(node.children)
    return errors


def test_install_ps1_parses() -> None:
    source = INSTALL_PS1.read_bytes()
    assert powershell_parse_errors(source) == []
    # The parser must see a real mistake, or the line above proves nothing.
    broken = source.replace(b"'Pass one of them.'", b"'Pass one of them.", 1)
    assert broken != source and powershell_parse_errors(broken)


def test_install_cmd_wraps_install_ps1_for_double_click() -> None:
    raw = INSTALL_CMD.read_bytes()
    assert raw.isascii()
    lines = raw.split(b"\r\n")
    assert all(b"\n" not in line for line in lines), "install.cmd needs CRLF line endings"
    text = raw.decode("ascii")
    assert 'powershell.exe -NoProfile -ExecutionPolicy Bypass -File "%~dp0install.ps1" %*' in text
    assert re.search(r"^pause\r$", text, re.MULTILINE)
    assert re.search(r"^exit /b %INSTALL_EXIT_CODE%\r$", text, re.MULTILINE)
