"""benchmarks/quality.py end to end on the CPU: split by article, base/abstain/fine-tuned scores, curve, plot.

The base is the tiny random Falcon exported to GGUF, so this also runs `train` and `eval` on a .gguf base. Its
numbers are mechanics only (a random 2-layer model answers nothing).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "falcon_desktop" / "assets" / "demo-squad.json"


def _benchmark(name: str):
    """A script of benchmarks/ as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_split_keeps_whole_articles_on_one_side():
    squad = json.loads(DEMO.read_text(encoding="utf-8"))
    train, heldout = _benchmark("quality").split_by_article(squad, 0.34, seed=1)
    train_titles = {article["title"] for article in train["data"]}
    heldout_titles = {article["title"] for article in heldout["data"]}
    assert len(heldout_titles) == 2 and len(train_titles) == 4 and not train_titles & heldout_titles
    assert _benchmark("quality").split_by_article(squad, 0.34, seed=1) == (train, heldout)  # seeded


def test_quality_benchmark_runs_end_to_end_on_a_tiny_gguf(tiny_model_dir: Path, tmp_path: Path):
    from falcon_desktop.export_gguf import export_gguf

    base = export_gguf(tiny_model_dir, tmp_path / "tiny-falcon-f16.gguf", "f16").path
    out = tmp_path / "quality"
    command = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--model", str(base), "--data", str(DEMO),
               "--out", str(out), "--heldout-fraction", "0.34", "--heldout-questions", "6", "--curve-steps", "1",
               "--jobs", "2", "--compare-hf", "--compare-ungrouped", "--hf-micro-batch", "2", "--batch-size", "4", "--device", "cpu", "--", "--max-steps", "2", "--no-quantize", "--seq-len", "256",
               "--save-every", "100"]
    result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", timeout=900,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "quality.json").read_text(encoding="utf-8"))
    assert report["split"] == "by article" and report["heldout"]["questions"] == 6 and report["complete"] is True
    assert report["abstain_always"]["NoAns_f1"] in (100.0, None) and report["abstain_always"]["HasAns_f1"] in (0.0, None)
    for key in ("base", "finetuned"):
        assert report[key]["total"] == 6 and report[key]["questions_per_second"] > 0
        assert report[key]["command"].startswith(sys.executable) and report[key]["seconds"] > 0
    assert "--max-steps 2" in report["finetuned"]["train"]["command"]
    assert [point["steps"] for point in report["learning_curve"]] == [0, 1, 2]
    assert (out / "quality.png").stat().st_size > 10_000
    assert report["hf_trainer"]["steps"] == 2 and report["hf_trainer"]["total"] == 6
    assert "train_ungrouped.py train" in report["ungrouped"]["train"]["command"] and report["ungrouped"]["total"] == 6
    summary = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality_seeds.py"), "--data", str(DEMO),
                              "--heldout-fraction", "0.34", "--out", str(tmp_path / "seeds.json"), str(out)],
                             capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert summary.returncode == 0, summary.stderr[-3000:]
    seeds = json.loads((tmp_path / "seeds.json").read_text(encoding="utf-8"))
    assert seeds["runs"][0]["finetuned"] == round(report["finetuned"]["f1"], 2)  # rescored: the same F1
    assert seeds["runs"][0]["hf_trainer"] == round(report["hf_trainer"]["f1"], 2)
    assert set(seeds["comparisons"]) == {"finetuned_minus_hf_trainer", "finetuned_minus_ungrouped"}

    # Run again: every stage is on record, so nothing is trained or answered twice and the scores are the same.
    (out / "runs" / "final" / "adapter").rename(out / "moved-adapter")  # a retrained "final" would need it
    again = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", timeout=900,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert json.loads((out / "quality.json").read_text(encoding="utf-8"))["finetuned"] == report["finetuned"]


def test_seed_summary_pairs_the_same_questions_of_each_seed():
    seeds = _benchmark("quality_seeds")
    runs = [{"seed": 1, "steps": 100, "abstain_always": 50.0, "base": 5.0,
             "scores": {"finetuned": [1.0, 0.0, 1.0, 1.0], "hf_trainer": [1.0, 0.0, 0.0, 1.0]}},
            {"seed": 2, "steps": 100, "abstain_always": 50.0, "base": 5.0,
             "scores": {"finetuned": [0.0, 0.0, 1.0, 1.0], "hf_trainer": [0.0, 1.0, 1.0, 1.0]}}]
    summary = seeds.summarise(runs, resamples=400)
    comparison = summary["comparisons"]["finetuned_minus_hf_trainer"]
    assert comparison["per_seed"] == [25.0, -25.0] and comparison["mean"] == 0.0
    assert comparison["sd"] == 35.36 and comparison["ci95"] == [-317.65, 317.65]  # 12.706 * 35.36 / sqrt(2)
    low, high = comparison["bootstrap_ci95_questions_only"]
    assert -50.0 <= low < 0.0 < high <= 50.0  # each seed's resampled gap lies in [0, 100] or [-100, 0]
    assert "finetuned_minus_ungrouped" not in summary["comparisons"]  # no run had that side
    assert summary["runs"][0]["finetuned"] == 75.0 and "| 1 | 50.0 | 5.0 | 75.0 | 50.0 | — |" in seeds.table(summary)
    # Identical sides: every resample of the questions gives a difference of exactly 0.
    same = [{**runs[0], "scores": {"finetuned": [1.0, 0.0], "hf_trainer": [1.0, 0.0]}}]
    assert seeds.summarise(same, resamples=50)["comparisons"]["finetuned_minus_hf_trainer"][
        "bootstrap_ci95_questions_only"] == [0.0, 0.0]
