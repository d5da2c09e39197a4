"""The PyTorch build chooser: driver + compute capability -> wheel index, nvidia-smi parsing, its CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from falcon_desktop.pip_commands import python_command
from falcon_desktop.torch_build import (
    TORCH_VERSION,
    build_for_index,
    choose_torch_build,
    detect_driver,
    main,
    parse_nvidia_smi,
    wait_with_deadline,
)


@pytest.mark.parametrize(
    ("driver", "capability", "tag"),
    [
        (None, None, "cpu"),
        (None, (8, 9), "cpu"),
        ("580.159.04", (9, 0), "cu130"),  # H100 on R580
        ("580.95.05", None, "cu130"),  # capability unknown: taken as new
        ("581.29", (12, 0), "cu130"),  # RTX 5090 on Windows
        ("579.99", (8, 9), "cu128"),
        ("560.94", (8, 9), "cu128"),  # RTX 4090 on R560
        ("535.183.01", (8, 6), "cu128"),
        ("525.60.13", (7, 5), "cu128"),  # the oldest driver and GPU the 12.8 wheels run on
        ("525.60.13", None, "cu128"),
        ("580.95.05", (7, 0), "cu126"),  # Volta: the 12.8/13.0 wheels start at 7.5
        ("560.94", (6, 1), "cu126"),  # Pascal GTX 1080
        ("560.94", (5, 2), "cu126"),  # Maxwell
        ("560.94", (3, 7), "cpu"),  # Kepler K80: no current CUDA wheel
        ("524.99", (8, 6), "cpu"),  # too old for any CUDA 12 build
        ("470.256.02", (8, 6), "cpu"),  # CUDA 11.4 driver
    ],
)
def test_choose_torch_build(driver, capability, tag):
    build = choose_torch_build(driver, capability)
    assert build.tag == tag
    assert build.index_url == f"https://download.pytorch.org/whl/{tag}"
    # The build's local version is pinned: an installed other build does not satisfy it ("already satisfied").
    assert build.pip_args() == ["install", f"torch=={TORCH_VERSION}+{tag}", "--index-url", build.index_url]
    assert build.command() == (
        f"{python_command([])} -m pip install torch==2.13.0+{tag} --index-url https://download.pytorch.org/whl/{tag}"
    )


def test_reasons_say_why_a_newer_build_was_passed_over():
    assert choose_torch_build(None, None).reason == "no NVIDIA driver found: the CPU build"
    assert choose_torch_build("580.95.05", (9, 0)).reason == "driver 580.95.05, compute capability 9.0: CUDA 13.0"
    assert "CUDA 13.0 needs driver R580+" in choose_torch_build("560.94", (8, 9)).reason
    volta = choose_torch_build("580.95.05", (7, 0)).reason
    assert "CUDA 13.0 wheels start at compute capability 7.5" in volta and "CUDA 12.6" in volta
    old = choose_torch_build("470.256.02", None).reason
    assert "no current PyTorch CUDA build runs here" in old and "R525+" in old


def test_bad_driver_version_is_rejected():
    with pytest.raises(ValueError, match="not an NVIDIA driver version"):
        choose_torch_build("latest", None)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("580.159.04, 9.0\n", ("580.159.04", (9, 0))),
        ("560.94, 8.9\n560.94, 6.1\n", ("560.94", (6, 1))),  # the oldest GPU decides
        ("470.256.02\n", ("470.256.02", None)),  # nvidia-smi before R510 has no compute_cap
        ("535.54.03, [N/A]\n", ("535.54.03", None)),
        ("", (None, None)),
    ],
)
def test_parse_nvidia_smi(output, expected):
    assert parse_nvidia_smi(output) == expected


def test_wait_with_deadline_kills_a_hung_child():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    started = time.monotonic()
    assert wait_with_deadline(child, 0.5) is None
    assert time.monotonic() - started < 5
    assert child.poll() is not None  # killed, not left running


def test_wait_with_deadline_returns_output():
    child = subprocess.Popen(
        [sys.executable, "-c", "print('hello')"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert wait_with_deadline(child, 30) == ("hello\n", "")


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA driver")
def test_detect_driver_without_nvidia_smi():
    assert detect_driver() == (None, None)


def _fake_nvidia_smi(directory: Path, script: str) -> None:
    # A stand-in for the driver's tool, which this machine lacks (absent hardware, not our code).
    executable = directory / "nvidia-smi"
    executable.write_text(f"#!{sys.executable}\nimport sys\n{script}\n", encoding="utf-8")
    executable.chmod(0o755)


@pytest.mark.skipif(sys.platform == "win32", reason="the fake nvidia-smi is a POSIX script")
def test_detect_driver_reads_nvidia_smi(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, "print('560.94, 8.9')")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert detect_driver() == ("560.94", (8, 9))


@pytest.mark.skipif(sys.platform == "win32", reason="the fake nvidia-smi is a POSIX script")
def test_detect_driver_falls_back_when_compute_cap_is_unknown(tmp_path, monkeypatch):
    _fake_nvidia_smi(
        tmp_path,
        "if 'compute_cap' in sys.argv[1]:\n"
        "    print('Field \"compute_cap\" is not a valid field to query.'); sys.exit(2)\n"
        "print('470.256.02')",
    )
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert detect_driver() == ("470.256.02", None)


@pytest.mark.skipif(sys.platform == "win32", reason="the fake nvidia-smi is a POSIX script")
def test_detect_driver_gives_up_on_a_hung_nvidia_smi(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, "import time; time.sleep(60)")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    started = time.monotonic()
    assert detect_driver(timeout_s=0.5) == (None, None)
    assert time.monotonic() - started < 8


def test_cli_prints_the_command(capsys):
    assert main(["--driver", "560.94", "--compute-capability", "8.9"]) == 0
    captured = capsys.readouterr()
    assert captured.out == (
        f"{python_command([])} -m pip install torch==2.13.0+cu128 --index-url https://download.pytorch.org/whl/cu128\n"
    )
    assert "CUDA 12.8" in captured.err


def test_cli_json(capsys):
    assert main(["--json", "--driver", "none"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["tag"] == "cpu"
    assert payload["pip_args"] == ["install", "torch==2.13.0+cpu", "--index-url", "https://download.pytorch.org/whl/cpu"]
    assert payload["driver_version"] is None and payload["compute_capability"] is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--driver", "560.94", "--compute-capability", "eight"], "not a compute capability"),
        (["--driver", "recent"], "not an NVIDIA driver version"),
    ],
)
def test_cli_rejects_bad_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("module", ["torch_build", "install_plan", "pip_commands"])
def test_installer_modules_import_only_the_standard_library(module):
    # The installers run them with a bare interpreter, before anything falcon-desktop needs is installed.
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"import falcon_desktop.{module}\n"
        "new = {name.split('.')[0] for name in set(sys.modules) - before}\n"
        "print(sorted(new - set(sys.stdlib_module_names) - {'falcon_desktop'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_runs_as_a_module():
    module = subprocess.run(
        [sys.executable, "-m", "falcon_desktop.torch_build", "--driver", "none"], capture_output=True, text=True
    )
    assert module.returncode == 0
    assert module.stdout.strip().endswith("/whl/cpu")


@pytest.mark.parametrize(
    ("url", "tag"),
    [
        ("https://download.pytorch.org/whl/cu126", "cu126"),
        ("https://mirror.example/pytorch/whl/cpu/", "cpu"),
        ("https://mirror.example/simple", None),
    ],
)
def test_build_for_an_explicit_index(url, tag):
    build = build_for_index(url)
    assert (build.tag if build else None) == tag
    if build:
        assert build.requirement == f"torch=={TORCH_VERSION}+{tag}" and build.index_url == url


def _fake_wheel(directory: Path, version: str) -> Path:
    """A tiny wheel standing in for torch's (same version scheme: release + local build tag)."""
    import zipfile

    name = "fdtorchstub"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{name}.py", f"VERSION = {version!r}\n")
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX venv layout")
def test_pinned_local_version_switches_builds_and_a_failed_download_keeps_the_old(tmp_path):
    """What the chooser's command relies on, checked against real pip: `==X+cu128` is not satisfied by an installed
    `X+cpu` (so it switches), and pip resolves before it uninstalls (an unreachable index leaves the old build)."""
    import venv

    venv.create(tmp_path / "env", with_pip=False)
    python = str(tmp_path / "env" / "bin" / "python")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    old = _fake_wheel(wheels, "2.13.0+cpu")
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_RETRIES": "0"}
    env.pop("PYTHONPATH", None)

    def pip(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pip", "--python", python, "install", "--no-build-isolation", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)

    def installed() -> str:
        code = "import fdtorchstub; print(fdtorchstub.VERSION)"
        return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()

    assert pip(str(old)).returncode == 0 and installed() == "2.13.0+cpu"
    failed = pip("fdtorchstub==2.13.0+cu128", "--index-url", "http://127.0.0.1:9/whl/cu128")
    assert failed.returncode != 0
    assert installed() == "2.13.0+cpu", "a failed download removed the installed build"
    _fake_wheel(wheels, "2.13.0+cu128")
    switched = pip("fdtorchstub==2.13.0+cu128", "--no-index", "--find-links", str(wheels))
    assert switched.returncode == 0, switched.stderr
    assert "already satisfied" not in switched.stdout and installed() == "2.13.0+cu128"
