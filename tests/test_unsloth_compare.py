"""benchmarks/unsloth_compare.py on the CPU: our side end to end, the Unsloth side's batches equal to what our
trainer feeds, and its training loop computing our loss. Unsloth itself is not tested: it needs CUDA and a Llama-type
model (it has no Falcon path), and is not installed here; the GPU run (.explore/gpu_unsloth.sh) covers it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "falcon_desktop" / "assets" / "demo-squad.json"
FALCON_TARGETS = "query_key_value,dense,dense_h_to_4h,dense_4h_to_h"
STEPS = 4


def _compare():
    spec = importlib.util.spec_from_file_location("unsloth_compare", ROOT / "benchmarks" / "unsloth_compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_benchmark(model: Path, tmp_path_factory: pytest.TempPathFactory, steps: int, *flags: str) -> Path:
    out = tmp_path_factory.mktemp("unsloth-compare")
    command = [sys.executable, str(ROOT / "benchmarks" / "unsloth_compare.py"), "run", "--model", str(model),
               "--data", str(DEMO), "--examples", "20", "--steps", str(steps), "--batch-size", "8", "--seq-len", "256",
               "--lora-targets", FALCON_TARGETS, "--lora-dropout", "0", "--device", "cpu", "--out", str(out), *flags]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "FALCON_DESKTOP_HOME": str(tmp_path_factory.mktemp("home"))}
    result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def benchmark_out(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CPU run of the whole benchmark on the tiny Falcon (20 questions, 4 steps of 8: the epoch wraps).

    No LoRA dropout, so splitting a step into other micro-batches draws no different dropout masks."""
    return _run_benchmark(tiny_model_dir, tmp_path_factory, STEPS)


def test_first_questions_keeps_file_order_and_structure() -> None:
    squad = json.loads(DEMO.read_text(encoding="utf-8"))
    cut = _compare().first_questions(squad, 5)
    questions = [qa for article in cut["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    original = [qa for article in squad["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    assert questions == original[:5]
    assert all(paragraph["qas"] for article in cut["data"] for paragraph in article["paragraphs"])


def test_ours_runs_end_to_end_and_an_unsloth_failure_is_recorded(benchmark_out: Path) -> None:
    report = json.loads((benchmark_out / "unsloth_compare.json").read_text(encoding="utf-8"))
    ours = report["ours"]
    assert "error" not in ours and ours["steps"] == STEPS and len(ours["losses"]) == STEPS
    assert ours["real_tokens_per_second"] > 0 and ours["wall_seconds"] > 0 and ours["steady_tokens_per_second"] > 0
    assert report["same_batches"] is True and report["batch_mismatches"] == []
    assert report["settings"]["lora"]["lora_r"] == 16 and report["settings"]["unsloth_gradient_checkpointing"] is False
    if importlib.util.find_spec("unsloth") is None:
        assert "No module named 'unsloth'" in report["unsloth"]["error"]
        assert report["comparison"] == {"complete": False} and "| unsloth | failed:" in report["table"]


def test_the_steady_ratio_leaves_out_each_sides_compiling_steps() -> None:
    """A side that compiles in its timed steps is compared at its pace once compiled too, not only on average."""
    module = _compare()
    steps = [{"seconds": s, "real_tokens": 1000, "padded_tokens": 1024, "samples": 4, "loss": 1.0}
             for s in (1, 1, 1, 0.1, 0.1, 0.1, 5.0, 0.1)]  # 3 warm-up steps, then one 5 s step that compiled
    ours = module.summarise("falcon-desktop", steps, 1, {"train_seconds": 1, "wall_seconds": 1, "checkpointing": "no"})
    peer = module.summarise("unsloth", [{**step, "seconds": 0.2} for step in steps], 1,
                            {"train_seconds": 1, "wall_seconds": 1, "checkpointing": "no"})
    assert ours["real_tokens_per_second"] == round(5000 / 5.4, 1) and ours["steady_tokens_per_second"] == 10_000
    compared = module.comparison(ours, peer)
    assert compared["ours_over_unsloth_speed"] < 1 < compared["ours_over_unsloth_steady_speed"] == 2.0
    assert "| falcon-desktop | 926 | 10,000 |" in module.table([ours, peer], compared)


def test_step_by_step_ratios_split_small_and_large_steps() -> None:
    """Per step on the same batches: ours 1.2x Unsloth's on the small steps, 1.0x on the large ones."""
    module = _compare()
    tokens = [1000, 1000, 1000, 2000, 8000, 2000, 8000, 2000, 8000]  # 3 warm-up steps first
    ours_steps = [{"seconds": 0.12 * t / 1000 if t < 5000 else 0.1 * t / 1000, "real_tokens": t, "padded_tokens": t,
                   "samples": 4, "loss": 1.0} for t in tokens]
    peer_steps = [{**step, "seconds": 0.1 * step["padded_tokens"] / 1000} for step in ours_steps]
    extra = {"train_seconds": 1, "wall_seconds": 1, "checkpointing": "no"}
    compared = module.comparison(module.summarise("falcon-desktop", ours_steps, 1, extra),
                                 module.summarise("unsloth", peer_steps, 1, extra))
    assert compared["step_time_ratio_median_smaller_half"] == 1.2
    assert compared["step_time_ratio_median_larger_half"] == 1.0
    assert compared["step_time_ratio_median"] == 1.1  # 3 of the 6 timed steps at 1.2, 3 at 1.0


def _trainer_session(benchmark_out: Path, tmp_path: Path):
    """Our trainer's own session for the benchmark's run (its data, its model with the same adapter init)."""
    from falcon_desktop.data import load_records
    from falcon_desktop.plan import Plan
    from falcon_desktop.train_config import TrainConfig
    from falcon_desktop.train_session import setup

    card = json.loads((benchmark_out / "ours-run" / "run.json").read_text(encoding="utf-8"))
    config = replace(TrainConfig.from_json(card["train"]), output=tmp_path / "replay")
    config.output.mkdir()  # setup writes its run card there (run_training creates the folder)
    return card, setup(config, Plan.from_json(card["plan"]), None, load_records(config.data))


def test_unsloth_side_gets_exactly_the_trainers_batches(benchmark_out: Path, tmp_path: Path) -> None:
    from falcon_desktop.data import collate, split_micro_batches
    from falcon_desktop.train import _step_indices

    card, session = _trainer_session(benchmark_out, tmp_path)
    fed = torch.load(benchmark_out / "batches.pt", weights_only=True)
    assert len(fed) == STEPS == card["total_steps"]
    for step, batches in enumerate(fed):
        groups = split_micro_batches(_step_indices(session, step), session.lengths, session.state.token_budget)
        expected = [collate([session.examples[i] for i in group], session.tokenizer.pad_token_id) for group in groups]
        assert len(batches) == len(expected)
        for got, want in zip(batches, expected):
            assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["labels"], want["labels"])
            assert got["real_tokens"] == want["real_tokens"] and got["labelled_tokens"] == want["labelled_tokens"]


def _one_row_each(batches: list[dict]) -> list[dict]:
    return [{"input_ids": b["input_ids"][row : row + 1], "labels": b["labels"][row : row + 1],
             "real_tokens": 0, "labelled_tokens": 0} for b in batches for row in range(len(b["input_ids"]))]


@pytest.mark.parametrize("split", [False, True], ids=["trainer micro-batches", "one row per micro-batch"])
def test_unsloth_side_loop_reproduces_our_trainers_losses(benchmark_out: Path, tmp_path: Path, split: bool) -> None:
    """The loop fed to Unsloth, run on our trainer's own model (same adapter init), gives the trainer's loss curve:
    the loss per answer token over the whole step however it is cut into micro-batches, the same optimizer, schedule
    and clipping."""
    card, session = _trainer_session(benchmark_out, tmp_path)
    fed = torch.load(benchmark_out / "batches.pt", weights_only=True)
    if split:
        fed = [_one_row_each(batches) for batches in fed]
    records = _compare().train_on_batches(session.model, fed, card)
    ours = [json.loads(line)["loss"] for line in (benchmark_out / "ours-run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records] == pytest.approx(ours, rel=1e-4)
    assert ours[0] != pytest.approx(ours[-1], rel=1e-4)  # the curve moves: a wrong update would show


def test_a_compiled_side_feeds_unsloth_its_padded_batches(tiny_model_dir: Path,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    """With --compile our trainer pads lengths to multiples of 8; the rebuilt batches must be padded the same, or they
    would not be the batches our side trained on (the check against its metrics would fail)."""
    out = _run_benchmark(tiny_model_dir, tmp_path_factory, 2, "--compile")
    report = json.loads((out / "unsloth_compare.json").read_text(encoding="utf-8"))
    assert "error" not in report["ours"] and report["same_batches"] is True, report.get("batch_mismatches")
    fed = torch.load(out / "batches.pt", weights_only=True)
    widths = [batch["input_ids"].shape[1] for step in fed for batch in step]
    assert widths and all(width % 8 == 0 for width in widths)


def test_steps_recorded_before_recording_stopped_are_rebuilt_padded_to_64(benchmark_out: Path) -> None:
    """A run whose recorded steps ran out of memory at step 2 trained step 1 padded to 64 (recorded) and the rest
    eagerly, unpadded: the rebuilt batches follow the card's event."""
    card = json.loads((benchmark_out / "ours-run" / "run.json").read_text(encoding="utf-8"))
    card["train"]["cuda_graphs"] = False
    card["events"] = [{"step": 2, "event": "cuda_graphs_off", "reason": "CUDA out of memory"}]
    steps = _compare().trainer_batches(card, card["train"]["model"])
    widths = [[batch["input_ids"].shape[1] for batch in step] for step in steps]
    assert all(width % 64 == 0 for width in widths[0])
    assert any(width % 64 for step in widths[1:] for width in step)
