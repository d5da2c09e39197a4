"""`falcon-desktop runs` and `merge`, and how a run name or path becomes an adapter directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_runs import make_adapter_run
from legacy_falcon import legacy_falcon_copy

from falcon_desktop.cli import main
from falcon_desktop.errors import UserError
from falcon_desktop.runs import base_model_of, list_runs, resolve_adapter


@pytest.fixture(scope="module")
def run_a(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter_run(tmp_path_factory.mktemp("runs") / "run-a", tiny_model_dir, seed=1)


@pytest.fixture
def runs_root(run_a: Path, isolated_home: Path) -> Path:
    """Under the test's home: run-a (finished), an interrupted run without adapter, a bare adapter directory."""
    import shutil

    root = isolated_home / "runs"
    shutil.copytree(run_a, root / "run-a")
    (root / "stopped").mkdir()
    (root / "stopped" / "run.json").write_text(json.dumps({"model": "m", "status": "running", "steps": 3}), encoding="utf-8")
    shutil.copytree(run_a / "adapter", root / "bare")
    (root / "broken").mkdir()
    (root / "broken" / "run.json").write_text("{not json", encoding="utf-8")
    shutil.copytree(run_a, root / "group" / "nested")  # a folder of runs, as the demo writes
    (root / "group" / "base-model").mkdir()
    return root


def test_resolve_adapter_accepts_name_run_dir_and_adapter_dir(runs_root: Path, tmp_path, monkeypatch):
    expected = runs_root / "run-a" / "adapter"
    assert resolve_adapter("run-a") == expected
    assert resolve_adapter(runs_root / "run-a") == expected
    assert resolve_adapter(expected) == expected
    assert resolve_adapter(expected / "adapter_config.json") == expected
    assert resolve_adapter("group/nested") == runs_root / "group" / "nested" / "adapter"
    monkeypatch.chdir(runs_root)
    assert resolve_adapter("bare") == Path("bare")  # a relative path wins over a run name


def test_resolve_adapter_errors_name_what_exists(runs_root: Path):
    with pytest.raises(UserError, match="No run or adapter directory named 'nope'") as error:
        resolve_adapter("nope")
    assert "run-a" in error.value.hint and "group/nested" in error.value.hint and "stopped" not in error.value.hint
    with pytest.raises(UserError, match="holds no adapter .*its run's status is 'running'"):
        resolve_adapter("stopped")
    with pytest.raises(UserError, match="is a folder of runs, not a run") as error:
        resolve_adapter("group")
    assert error.value.hint == "Pass one of: group/nested."


def test_base_model_comes_from_the_run_card_then_peft(runs_root: Path, tiny_model_dir: Path):
    assert base_model_of(runs_root / "run-a" / "adapter") == str(tiny_model_dir)
    config = json.loads((runs_root / "bare" / "adapter_config.json").read_text(encoding="utf-8"))
    assert base_model_of(runs_root / "bare") == config["base_model_name_or_path"]


def test_runs_lists_every_run_with_its_metrics(runs_root: Path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    runs = {run.name: run for run in list_runs()}
    assert sorted(runs) == ["bare", "broken", "group/nested", "run-a", "stopped"]
    assert (runs["run-a"].status, runs["run-a"].steps, runs["run-a"].exact, runs["run-a"].f1) == ("finished", 7, 10.0, 12.5)
    assert runs["run-a"].final_loss == 3.5 and runs["run-a"].has_adapter
    assert (runs["stopped"].status, runs["stopped"].has_adapter) == ("stopped (crashed)", False)  # no live writer
    assert runs["broken"].status == "unreadable run card"
    assert (runs["bare"].status, runs["bare"].has_adapter) == ("no run card", True)

    assert main(["runs", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["runs_dir"] == str(runs_root)
    assert [run["name"] for run in printed["runs"]] == [run.name for run in list_runs()]
    assert main(["runs"]) == 0
    table = capsys.readouterr().out
    assert "run-a" in table and "stopped (crashed) (no adapter)" in table and "10.0 / 12.5" in table


def test_runs_on_an_empty_home_says_how_to_make_one(capsys):
    assert main(["runs"]) == 0
    assert "falcon-desktop demo" in capsys.readouterr().err
    assert main(["runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == []


def test_merge_writes_a_standalone_model_that_matches_base_plus_adapter(runs_root: Path, tmp_path: Path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from falcon_desktop.model import ModelSettings, load_adapter, load_base_model

    output = tmp_path / "merged"
    assert main(["merge", "--adapter", "run-a", "--output", str(output), "--dtype", "float32"]) == 0
    assert capsys.readouterr().out.strip() == str(output)
    names = {path.name for path in output.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert not any(name.startswith("adapter") for name in names)
    card = (output / "README.md").read_text(encoding="utf-8")
    assert "base_model: " in card and "| after fine-tuning | 10.00 | 12.50 |" in card and "fingerprint `abc123`" in card

    merged = AutoModelForCausalLM.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    loaded = load_base_model(ModelSettings(base_model_of(runs_root / "run-a" / "adapter"), quantize=False, device="cpu"))
    with_adapter = load_adapter(loaded.model, runs_root / "run-a" / "adapter")
    ids = torch.tensor([tokenizer("### Question:\nWhere?\n\n### Answer:\n").input_ids])
    with torch.no_grad():
        expected = with_adapter(input_ids=ids).logits
        plain = with_adapter.get_base_model()
        with with_adapter.disable_adapter():
            base_only = plain(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, base_only, atol=1e-3)  # the adapter really is in the weights


def test_merge_refuses_to_overwrite_and_saves_bf16_by_default(runs_root: Path, tmp_path: Path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("x", encoding="utf-8")
    assert main(["merge", "--adapter", "run-a", "--output", str(output)]) == 1
    assert "already exists and is not empty" in capsys.readouterr().err
    assert main(["merge", "--adapter", "run-a", "--output", str(output), "--overwrite"]) == 0
    config = json.loads((output / "config.json").read_text(encoding="utf-8"))
    assert config["dtype"] == "bfloat16" and not (output / "keep.txt").exists()
    assert not any(path.name.startswith(".") for path in tmp_path.iterdir())  # no staging or old copy left behind


def test_merge_opens_a_legacy_refinedwebmodel_base_without_remote_code(tiny_model_dir: Path, isolated_home: Path,
                                                                       tmp_path: Path, capsys):
    """Falcon-7B's published config names custom code (auto_map); merge must load it as train and ask do."""
    from transformers import AutoModelForCausalLM

    legacy = legacy_falcon_copy(tiny_model_dir, tmp_path / "falcon-legacy")
    make_adapter_run(isolated_home / "runs" / "legacy-run", legacy, seed=3)
    output = tmp_path / "merged"
    assert main(["merge", "--adapter", "legacy-run", "--output", str(output), "--dtype", "float32"]) == 0, \
        capsys.readouterr().err
    config = json.loads((output / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "falcon" and "auto_map" not in config  # the merged model is a native Falcon
    assert type(AutoModelForCausalLM.from_pretrained(output)).__name__ == "FalconForCausalLM"
