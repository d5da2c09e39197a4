"""The planner-vs-measured matrix (benchmarks/planner_matrix.py): its machinery on the CPU, with the tiny model."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = ROOT / "falcon_desktop" / "assets" / "demo-squad.json"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def measured(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`run` as the GPU machine runs it, on the tiny model: one row (attention-only LoRA, 8 GiB cap: ignored on the
    CPU), one warm-up and one timed step, in a child process; it prints the table and writes the result."""
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_model_dir, models / "tiny-falcon")
    result = tmp_path_factory.mktemp("results") / "planner-matrix.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "planner_matrix.py"), "run", "--models", "tiny-falcon",
         "--models-dir", str(models), "--data", str(DEMO_DATA), "--result", str(result), "--targets", "attention",
         "--caps", "8", "--effective-batch", "4", "--warmup-steps", "1", "--steps", "1"],
        capture_output=True, text=True, encoding="utf-8", timeout=300, check=False)
    assert "| tiny-falcon | attention | 8 GiB |" in done.stdout, done.stderr[-2000:]
    assert (models / "tiny-falcon" / "config.json").is_file()  # a model folder it was given stays
    return result


def test_a_row_holds_the_plan_its_predictions_and_the_trainers_measurement(measured: Path) -> None:
    document = json.loads(measured.read_text(encoding="utf-8"))
    [row] = document["rows"]
    assert (row["model"], row["targets"], row["cap_gib"], row["status"]) == ("tiny-falcon", "attention", 8.0, "ok")
    assert row["lora_targets"] == ["query_key_value", "dense"]
    assert row["plan"]["fits"] and row["predicted"]["tokens_per_second"] > 0 and row["predicted"]["hours_per_epoch"] > 0
    steps = row["measured"]["steps"]
    assert len(steps) == 2 and all(step["real_tokens"] > 0 for step in steps)
    speed = row["measured"]["tokens_per_second"]
    assert speed == pytest.approx(steps[1]["real_tokens"] / steps[1]["seconds"], rel=0.01)  # the timed step only
    assert row["measured"]["hours_per_epoch"] == pytest.approx(row["epoch_tokens"] / speed / 3600, rel=0.01)
    assert row["measured"]["peak_reserved_bytes"] is None  # no CUDA allocator on the CPU
    assert document["models"]["tiny-falcon"]["config"]["model_type"] == "falcon"


def test_the_table_replans_each_row_and_flags_a_changed_plan(measured: Path, tmp_path: Path) -> None:
    matrix = _load("planner_matrix")
    text, _ = matrix.table(measured)
    lines = text.splitlines()
    assert lines[0] == matrix.HEADER.splitlines()[0]
    assert lines[2].startswith("| tiny-falcon | attention | 8 GiB | ") and lines[2].endswith("| n/a | n/a | no |")
    assert "1 rows, 1 measured on the plan the planner makes today" in text
    document = json.loads(measured.read_text(encoding="utf-8"))
    document["rows"][0]["plan"]["checkpoint_layers"] += 1   # measured on another plan than today's
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(document), encoding="utf-8")
    text, status = matrix.table(changed)
    assert "0 measured" in text and "re-measure" in text and status == 0


def test_the_verdict_checks_speed_hours_memory_and_oom() -> None:
    matrix = _load("planner_matrix")
    predicted = {"tokens_per_second": 1000.0, "hours_per_epoch": 1.0, "allocator_peak_bytes": 10 * 10**9}
    good = {"status": "ok", "measured": {"tokens_per_second": 900.0, "hours_per_epoch": 1.2,
                                         "peak_reserved_bytes": int(9.5 * 10**9)}}
    assert matrix.row_problems(good, predicted) == []
    slow = {**good, "measured": {**good["measured"], "tokens_per_second": 700.0}}
    assert matrix.row_problems(slow, predicted) == ["tokens/s off by +42.9%"]
    under = {**good, "measured": {**good["measured"], "peak_reserved_bytes": 11 * 10**9}}
    assert matrix.row_problems(under, predicted) == ["memory -9.1%"]
    assert matrix.row_problems({"status": "oom"}, predicted) == ["ran out of memory"]


def test_benchmark_shapes_are_the_real_models_for_the_planner() -> None:
    """llama-3-8b is the published shape; smollm2-135m differs only by Falcon's vocabulary (tied embeddings)."""
    from transformers import AutoConfig

    from falcon_desktop.shapes import load_shape, shape_from_config

    shapes = _load("gpu_bench").SHAPES

    def benchmark_shape(name: str):
        fields = dict(shapes[name])
        return shape_from_config(AutoConfig.for_model(fields.pop("model_type"), **fields).to_dict(), name)

    assert benchmark_shape("llama-3-8b").total_params == load_shape("llama-3-8b").total_params
    smol = benchmark_shape("smollm2-135m")
    assert smol.total_params == load_shape("smollm2-135m").total_params + (65024 - 49152) * 576


def test_steps_are_the_longest_then_a_spread_of_lengths() -> None:
    """Warm-up on the epoch's longest step (its memory peak), then its median; timed steps at quantiles of length."""
    lengths = list(range(1, 65))
    steps = _load("planner_matrix").choose_steps(lengths, effective_batch=1, seed=0, warmup=2, timed=4)
    assert [lengths[i] for [i] in steps] == [64, 33, 9, 25, 41, 57]


def test_recorded_rows_plan_as_train_and_time_steps_recorded_in_the_warm_up(tiny_model_dir: Path,
                                                                           tmp_path: Path) -> None:
    """`--recorded`: the plan is train's own (recorded steps where it records them), the timed steps run once more in
    the warm-up (their shapes recorded first), and `table` replans the row the same way. On the CPU nothing records."""
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "tiny-falcon")
    result = tmp_path / "planner-matrix.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "planner_matrix.py"), "run", "--models", "tiny-falcon",
         "--models-dir", str(models), "--data", str(DEMO_DATA), "--result", str(result), "--targets", "attention",
         "--caps", "8", "--effective-batch", "4", "--warmup-steps", "1", "--steps", "2", "--recorded"],
        capture_output=True, text=True, encoding="utf-8", timeout=300, check=False)
    assert "| tiny-falcon | attention | 8 GiB |" in done.stdout, done.stderr[-2000:]
    [row] = json.loads(result.read_text(encoding="utf-8"))["rows"]
    assert row["recorded"] is True and row["records_steps"] is True and row["status"] == "ok"
    steps = row["measured"]["steps"]
    assert row["measured"]["warmup_steps"] == 3 and len(steps) == 5
    assert [step["real_tokens"] for step in steps[1:3]] == [step["real_tokens"] for step in steps[3:]]
    assert row["measured"]["recorded_steps"] is False  # no CUDA here: the trainer's eager steps
    matrix = _load("planner_matrix")
    plan, predicted = matrix.replanned(json.loads(result.read_text(encoding="utf-8")), row)
    assert plan == row["plan"] and predicted == row["predicted"]
