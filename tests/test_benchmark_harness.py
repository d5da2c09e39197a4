"""The GPU benchmark's arithmetic, checked on the CPU: warm-up exclusion, real tokens, padding efficiency, MFU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_skips_warmup_and_counts_real_tokens() -> None:
    bench = _bench()
    warmup = [{"seconds": 100.0, "real_tokens": 1, "padded_tokens": 1, "samples": 1, "loss": 9.0}] * bench.WARMUP_STEPS
    timed = [{"seconds": 2.0, "real_tokens": 8000, "padded_tokens": 10000, "samples": 40, "loss": 1.0}] * 5
    summary = bench.summarise("x", warmup + timed, params=1_000_000_000, extra={})
    assert summary["timed_steps"] == 5 and summary["steps"] == 5 + bench.WARMUP_STEPS
    assert summary["real_tokens_per_second"] == 4000.0
    assert summary["samples_per_second"] == 20.0
    assert summary["padding_efficiency"] == 0.8
    assert summary["mfu"] == pytest.approx(round(4 * 1e9 * 4000 / bench.H100_BF16_PEAK, 4))
    assert summary["losses"] == [9.0] * bench.WARMUP_STEPS + [1.0] * 5


def test_ours_runs_end_to_end_on_the_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = tmp_path / "ours.json"
    data = ROOT / "falcon_desktop" / "assets" / "demo-squad.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "ours", "--model", str(tiny_model_dir),
                    "--data", str(data), "--steps", "5", "--effective-batch", "8", "--result", str(result)],
                   check=True, capture_output=True, timeout=300)
    summary = json.loads(result.read_text(encoding="utf-8"))
    assert summary["name"] == "ours" and summary["steps"] == 5 and summary["timed_steps"] == 2
    assert 0.5 < summary["padding_efficiency"] <= 1.0
    assert summary["real_tokens_per_second"] > 0 and len(summary["losses"]) == 5


def _result(name: str, tokens_per_second: float) -> dict:
    return {"name": name, "device": "H100", "real_tokens_per_second": tokens_per_second, "samples_per_second": 1.0,
            "peak_reserved_bytes": 10**9, "padding_efficiency": 0.5, "mfu": 0.1}


def test_comparison_speedups_and_table() -> None:
    bench = _bench()
    summary = bench.comparison({"hf-seed.json": _result("hf-seed", 500.0), "hf-careful.json": _result("hf-careful", 2000.0),
                                "ours.json": _result("ours", 8000.0)})
    assert summary["speedup_over_seed"] == 16.0 and summary["speedup_over_careful"] == 4.0
    assert summary["table"].splitlines()[2].startswith("| hf-seed | 500 |") and summary["table"].endswith("| 1.00 |")


def test_committed_comparison_matches_its_runs() -> None:
    results = ROOT / "benchmarks" / "results"
    runs = {name: json.loads((results / name).read_text(encoding="utf-8")) for name, _ in _bench().COMPARED}
    assert _bench().comparison(runs) == json.loads((results / "comparison.json").read_text(encoding="utf-8"))


def test_compare_runs_baselines_and_ours_in_one_command(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = ROOT / "falcon_desktop" / "assets" / "demo-squad.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "compare", "--model", str(tiny_model_dir),
                    "--data", str(data), "--steps", "4", "--out", str(tmp_path)], check=True, capture_output=True, timeout=600)
    summary = json.loads((tmp_path / "comparison.json").read_text(encoding="utf-8"))
    assert set(summary["real_tokens_per_second"]) == {"hf-seed", "hf-careful", "ours"}
    assert summary["speedup_over_seed"] > 0 and "| ours |" in summary["table"]


def test_step_profile_steady_pace_leaves_out_the_recompiling_steps() -> None:
    spec = importlib.util.spec_from_file_location("step_profile", ROOT / "benchmarks" / "step_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    walls, tokens = [0.2, 0.25, 12.0, 0.2, 0.3], [2000, 2500, 3000, 2000, 3000]
    assert module.steady_tokens_per_second(walls, tokens) == 10_000  # 9,500 tokens in 0.95 s; the 12 s step dropped
    assert module.steady_tokens_per_second([0.5, 0.5], [1000, 3000]) == 4000
    assert module.steady_tokens_per_second([], []) is None
