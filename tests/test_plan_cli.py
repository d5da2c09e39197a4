"""`falcon-desktop plan`: flags, output, exit codes, the NVML path, and that it never imports torch."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from falcon_desktop.cli import main
from falcon_desktop.cli.plan import add_plan_arguments, gpu_from_args, request_from_args
from falcon_desktop.hardware import GIB
from falcon_desktop.plan import PlanRequest

ROOT = Path(__file__).resolve().parents[1]


def words(text: str) -> str:
    """Text with rich's line wrapping undone."""
    return " ".join(text.split())


def plan_json(capsys, *flags: str) -> tuple[int, dict]:
    code = main(["plan", *flags, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture
def gpus(monkeypatch):
    """What NVML reports (the only thing mocked: there is no GPU here)."""
    import falcon_desktop.probe

    found: list = []
    monkeypatch.setattr(falcon_desktop.probe, "detect_gpus", lambda *args, **kwargs: list(found))
    return found


def test_json_has_the_promised_keys(capsys):
    code, data = plan_json(capsys, "--vram", "24", "--examples", "1000")
    assert code == 0
    for key in ("total_params", "trainable_params", "method", "peak_vram_bytes", "fits", "micro_batch_size",
                "gradient_accumulation_steps", "gradient_checkpointing", "optimizer", "max_seq_len",
                "estimated_hours", "breakdown", "methods", "checkpoint_layers", "reasons", "params", "costs",
                "rules_of_thumb", "lora_targets"):
        assert key in data, key
    assert data["total_params"] == 6_921_720_704 and data["method"] == "qlora" and data["fits"] is True
    assert set(data["methods"]) == {"inference_fp32", "inference_bf16", "inference_nf4", "full", "lora", "qlora"}
    assert sum(data["breakdown"].values()) == data["peak_vram_bytes"]
    assert data["vram_budget_bytes"] == 24 * GIB and data["gpu"]["source"] == "--vram"


def test_flags_reach_the_plan(capsys):
    code, data = plan_json(capsys, "--model", "llama-3.2-1b", "--method", "lora", "--lora-r", "8", "--lora-alpha",
                           "16", "--lora-targets", "q_proj, v_proj", "--seq-len", "1024", "--batch-size", "32",
                           "--tokens", "5000000", "--epochs", "2", "--gpu", "L4", "--micro-batch", "4",
                           "--checkpointing", "--price-per-kwh", "0.5")
    assert code == 0
    assert (data["method"], data["lora_r"], data["lora_alpha"], data["lora_targets"]) == ("lora", 8, 16,
                                                                                          ["q_proj", "v_proj"])
    assert (data["max_seq_len"], data["effective_batch_size"], data["micro_batch_size"]) == (1024, 32, 4)
    assert (data["gradient_accumulation_steps"], data["checkpoint_layers"]) == (8, 16)
    assert data["gpu"]["name"] == "L4" and data["costs"]["trained_tokens"] == 10_000_000
    assert data["costs"]["electricity"]["price_per_kwh"] == 0.5
    assert data["estimated_hours"] == pytest.approx(10_000_000 / data["estimated_tokens_per_second"] / 3600)


def test_no_checkpointing_and_inference(capsys):
    _, data = plan_json(capsys, "--vram", "80", "--no-checkpointing")
    assert data["checkpoint_layers"] == 0 and data["gradient_checkpointing"] is False
    _, data = plan_json(capsys, "--vram", "16", "--method", "inference", "--inference-dtype", "bf16")
    assert (data["method"], data["trainable_params"], data["fits"]) == ("inference", 0, True)


def test_gpu_with_vram_overrides_the_tables_memory(capsys):
    _, data = plan_json(capsys, "--gpu", "RTX 4090", "--vram", "20")
    assert data["gpu"]["name"] == "RTX 4090" and data["vram_budget_bytes"] == 20 * GIB
    assert data["gpu"]["bf16_tflops"] == 165.2


def test_human_output_shows_every_section(capsys):
    assert main(["plan", "--gpu", "RTX 4090", "--examples", "130319"]) == 0
    text = capsys.readouterr().out
    for fragment in ("Parameters", "6,921,720,704", "Memory at the peak", "activations", "predicted peak",
                     "Methods compared", "inference_fp32", "4 B/param", "The choice", "micro_batch_size",
                     "optimizer", "tokens/s", "Electricity", "Cloud equivalents", "g5.2xlarge"):
        assert fragment in text, fragment


def test_does_not_fit_prints_the_nearest_settings_and_exits_1(capsys):
    assert main(["plan", "--vram", "8", "--method", "lora"]) == 1
    text = capsys.readouterr().out
    assert "does not fit" in text and "Nearest settings that fit" in text and "--method qlora" in text


def test_unknown_lora_target_lists_the_valid_names(capsys):
    assert main(["plan", "--vram", "24", "--lora-targets", "query_key_valuedense"]) == 1
    err = words(capsys.readouterr().err)
    assert "query_key_valuedense" in err
    assert "query_key_value, dense, dense_h_to_4h, dense_4h_to_h" in err


def test_unknown_gpu_lists_close_names(capsys):
    assert main(["plan", "--gpu", "RTX 2080"]) == 1
    err = words(capsys.readouterr().err)
    assert "Unknown GPU 'RTX 2080'" in err and "RTX 3080" in err and "--vram" in err


@pytest.mark.parametrize(("flags", "message"), [
    (["--vram", "0"], "--vram must be a positive"),
    (["--vram", "24", "--lora-r", "0"], "rank must be at least 1"),
    (["--vram", "24", "--model", "gpt-9"], "Unknown model 'gpt-9'"),
])
def test_bad_values_are_user_errors(capsys, flags, message):
    assert main(["plan", *flags]) == 1
    assert message in words(capsys.readouterr().err)


def test_examples_and_tokens_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "--examples", "10", "--tokens", "10"])
    assert exit_info.value.code == 2


def test_model_from_a_directory(capsys, tmp_path):
    config = {"model_type": "mistral", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    code, data = plan_json(capsys, "--model", str(tmp_path), "--vram", "8")
    assert code == 0 and data["model_type"] == "mistral" and data["model"] == str(tmp_path)


def test_without_a_gpu_it_plans_the_least_memory_and_says_so(capsys, gpus):
    assert main(["plan", "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["fits"] is False and data["gpu"] is None and data["vram_budget_bytes"] == 0
    assert data["alternatives"] and data["alternatives"][-1]["flags"].startswith("--gpu")
    assert "no GPU detected: pass --vram or --gpu" in words(captured.err)


def test_the_detected_gpu_budget_is_its_free_memory(capsys, gpus):
    from falcon_desktop.probe import GpuInfo

    gpus.append(GpuInfo(0, "NVIDIA GeForce RTX 4090", 24 * GIB, 20 * GIB, (8, 9), 400.0, ("pid 1: 4.0 GB",)))
    code, data = plan_json(capsys, "--examples", "1000")
    assert code == 0
    assert data["gpu"] == {"name": "NVIDIA GeForce RTX 4090", "vram_bytes": 20 * GIB, "compute_capability": [8, 9],
                           "bf16_tflops": 165.2, "watts": 400.0, "source": "nvml"}
    assert data["estimated_hours"] is not None


def test_vram_caps_the_detected_gpu_and_keeps_its_speed(capsys, gpus):
    """`train --vram 24` on an H200 emulates a 24 GiB card: the H200's speed with 24 GiB, so the plan can price its
    steps (and choose recorded ones); without a GPU, --vram alone stays a card of unknown speed."""
    from falcon_desktop.probe import GpuInfo

    _, anonymous = plan_json(capsys, "--vram", "24", "--model", "llama-3.2-1b", "--batch-size", "32")
    gpus.append(GpuInfo(0, "NVIDIA H200", 141 * GIB, 140 * GIB, (9, 0), 700.0, ()))
    code, data = plan_json(capsys, "--vram", "24", "--model", "llama-3.2-1b", "--batch-size", "32")
    assert code == 0
    assert data["gpu"]["name"] == "NVIDIA H200" and data["gpu"]["source"] == "--vram"
    assert data["vram_budget_bytes"] == 24 * GIB and data["gpu"]["bf16_tflops"] == 989.0
    assert data["checkpoint_layers"] and data["records_steps"] and data["estimated_tokens_per_second"]
    assert anonymous["gpu"]["bf16_tflops"] is None and not anonymous["records_steps"]
    assert (anonymous["micro_batch_size"], anonymous["checkpoint_layers"]) == (data["micro_batch_size"],
                                                                             data["checkpoint_layers"])


def test_a_detected_card_missing_from_the_table_plans_memory_without_time(capsys, gpus):
    from falcon_desktop.probe import GpuInfo

    gpus.append(GpuInfo(0, "NVIDIA RTX A6000", 48 * GIB, 47 * GIB, (8, 6), None, ()))
    code, data = plan_json(capsys)
    assert code == 0 and data["fits"] and data["estimated_tokens_per_second"] is None
    assert "unknown" in data["reasons"]["estimated_tokens_per_second"]


def test_shared_flags_parse_to_the_default_request():
    parser = argparse.ArgumentParser()
    add_plan_arguments(parser)
    args = parser.parse_args([])
    assert request_from_args(args) == PlanRequest()
    assert args.model == "falcon-7b"
    assert gpu_from_args(parser.parse_args(["--vram", "12"])).vram_bytes == 12 * GIB


def test_help_has_runnable_examples(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    assert "examples:" in capsys.readouterr().out


def test_plan_imports_neither_torch_nor_transformers_and_starts_fast():
    code = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "import falcon_desktop.cli\n"
        "from falcon_desktop.cli import main\n"
        "imported = time.perf_counter() - start\n"
        "main(['plan', '--vram', '24', '--json'])\n"
        "heavy = [name for name in ('torch', 'transformers', 'peft', 'bitsandbytes') if name in sys.modules]\n"
        "print(repr((heavy, imported, time.perf_counter() - start)), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    heavy, import_s, total_s = eval(result.stderr.strip().splitlines()[-1])  # noqa: S307 - our own repr
    assert heavy == []
    assert import_s < 1.0 and total_s < 2.0
    assert json.loads(result.stdout)["fits"] is True
