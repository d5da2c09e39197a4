"""The installers: install.sh for real (fresh venv, install, launcher, re-run, uninstall), install.ps1 and
install.cmd by parsing and by what Windows PowerShell 5.1 and cmd.exe can read.

The end-to-end test takes minutes without `--system-site-packages`, so it is marked `slow`; set
FALCON_DESKTOP_SKIP_INSTALLER_TEST=1 to skip it, or FALCON_DESKTOP_INSTALLER_TEST_ISOLATED=1 to make it install every
dependency into the fresh environment (as a user's first install does) instead of reusing this Python's packages.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from falcon_desktop import __version__

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
    overrides = {"XDG_DATA_HOME", "FALCON_DESKTOP_VENV", "FALCON_DESKTOP_BIN"}
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
    assert "from pip's configured indexes (--torch-spec)" in install.stdout
    assert "download.pytorch.org" not in install.stdout + install.stderr
    assert "is not on your PATH" in install.stderr
    assert install.stdout.rstrip().endswith("doctor")
    assert "next:" in install.stdout

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
        capture_output=True, text=True, encoding="utf-8", check=True, cwd=tmp_path,
    ).stdout.strip()
    assert Path(imported_from).is_relative_to(venv), imported_from

    # Re-running upgrades in place; --cpu goes through the Python chooser.
    upgrade = run_install_sh(*common, "--cpu", env=env)
    assert upgrade.returncode == 0, describe(upgrade)
    assert f"Upgrading the environment in {venv}" in upgrade.stdout
    assert "torch build: cpu" in upgrade.stdout
    assert "Installing torch" in upgrade.stdout and "https://download.pytorch.org/whl/cpu" in upgrade.stdout

    uninstall = run_install_sh("--uninstall", "--prefix", venv, env=env)
    assert uninstall.returncode == 0, describe(uninstall)
    assert not venv.exists()
    assert not launcher.exists()
    assert home.is_dir(), "uninstall removed more than the environment and the launcher"
    again = run_install_sh("--uninstall", "--prefix", venv, env=env)
    assert again.returncode == 0 and "Nothing to remove" in again.stdout, describe(again)


@pytest.mark.parametrize(
    "arguments",
    [["--driver", "none"], ["--driver", "560.94", "--compute-capability", "8.9"], ["--driver", "470.01"]],
)
def test_chooser_json_has_the_keys_the_installers_read(arguments: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "falcon_desktop.torch_build", "--json", *arguments],
        capture_output=True, text=True, encoding="utf-8", check=True,
    )
    choice = json.loads(result.stdout)
    assert choice["index_url"].startswith("https://download.pytorch.org/whl/")
    assert choice["index_url"].endswith("/" + choice["tag"])
    assert choice["reason"]


def test_installers_call_the_python_chooser() -> None:
    sh = INSTALL_SH.read_text(encoding="utf-8")
    ps1 = INSTALL_PS1.read_text(encoding="utf-8")
    assert '-m falcon_desktop.torch_build "${chooser_args[@]}"' in sh
    assert "@('-m', 'falcon_desktop.torch_build', '--json')" in ps1
    for script in (sh, ps1):
        assert "'--driver', 'none'" in script or "--driver none" in script
        for key in ("index_url", "tag", "reason"):
            assert key in script


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
