"""`falcon-desktop doctor` end to end, on whatever machine the tests run on (here: no GPU)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from falcon_desktop.cli import main
from falcon_desktop.pip_commands import python_command
from falcon_desktop.probe import detect_gpus

HAS_GPU = bool(detect_gpus())
no_gpu_only = pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU")


@no_gpu_only
def test_doctor_json_without_a_gpu(capsys):
    assert main(["doctor", "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert set(payload) == {"checks", "gpus", "verdict"}
    assert payload["gpus"] == []
    for check in payload["checks"]:
        assert set(check) == {"name", "status", "value", "hint"}
        assert check["status"] in {"PASS", "WARN", "FAIL"}
        assert check["status"] == "PASS" or check["hint"], check  # every non-PASS row says how to fix it
    status = {check["name"]: check["status"] for check in payload["checks"]}
    assert status["NVIDIA driver"] == status["GPU"] == status["CUDA available"] == "FAIL"
    assert status["Python"] == "PASS"
    assert payload["verdict"].startswith("QLoRA fine-tune of 7B models: no: no CUDA GPU")


@no_gpu_only
def test_doctor_table_without_a_gpu(capsys):
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  NVIDIA driver" in out
    assert "To fix:" in out and "GPU, " in out  # rows sharing a fix are listed together
    assert "QLoRA fine-tune of 7B models: no" in out


@no_gpu_only
def test_doctor_survives_an_ascii_console(monkeypatch):
    # A Windows console redirected to a file is cp1252/ASCII: no UnicodeEncodeError, plain status marks.
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii"))
    assert main(["doctor"]) == 1
    sys.stdout.flush()
    out = raw.getvalue().decode("ascii")
    assert "x FAIL  NVIDIA driver" in out and "+ PASS  Python" in out
    assert "?" not in out.replace("(a hung driver?)", "")  # nothing was replaced for want of an encoding


@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU")
def test_doctor_on_a_gpu(capsys):
    code = main(["doctor", "--json"])
    payload = json.loads(capsys.readouterr().out)
    failed = [check for check in payload["checks"] if check["status"] == "FAIL"]
    assert code == 0 and failed == []
    assert payload["gpus"] and payload["gpus"][0]["total_bytes"] > 0
    assert payload["verdict"].startswith("QLoRA fine-tune of 7B models: yes")


def test_torch_command(capsys):
    assert main(["doctor", "--torch-command"]) == 0
    out = capsys.readouterr().out
    # This environment's own interpreter, then the pinned build's local version (a switch, never "already satisfied").
    assert out.startswith(f"{python_command([])} -m pip install torch==2.13.0+")
    assert "--index-url https://download.pytorch.org/whl/" in out
    if not HAS_GPU:
        assert out.strip().endswith("/whl/cpu")


def test_torch_command_json(capsys):
    assert main(["doctor", "--torch-command", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["tag"] in {"cu130", "cu128", "cu126", "cpu"}
    assert payload["command"].endswith(payload["index_url"])


def test_doctor_help_has_examples_and_stays_light():
    code = (
        "import sys\n"
        "from falcon_desktop.cli import main\n"
        "try:\n"
        "    main(['doctor', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "falcon-desktop doctor --torch-command" in result.stdout
    assert result.stdout.strip().endswith("False")
