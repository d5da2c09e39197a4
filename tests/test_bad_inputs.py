"""Every bad input a user can give, across all verbs: exit code 1, `Error:` and `Hint:` on stderr, no traceback.

One table; each row builds its inputs from a few shared files (a trained tiny run, a damaged copy of it, a model
folder without weights, ...). docs/reliability.md quotes the number of rows.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from falcon_desktop.cli import main
from falcon_desktop.paths import environment
from falcon_desktop.tiny import asset_path

DEMO = str(asset_path("demo-squad.json"))


@pytest.fixture(scope="module")
def world(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The files the rows refer to, built once."""
    root = tmp_path_factory.mktemp("bad-inputs")
    run = root / "run"
    # Module-scoped, so set up before the per-test isolation: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    with environment({"FALCON_DESKTOP_HOME": str(root / "home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}):
        assert main(["train", "--model", str(tiny_model_dir), "--data", DEMO, "--output", str(run), "--max-steps",
                     "2", "--eval-examples", "0", "--batch-size", "8"]) == 0
    unfinished = root / "unfinished"
    shutil.copytree(run, unfinished)
    card = json.loads((run / "run.json").read_text(encoding="utf-8"))
    (unfinished / "run.json").write_text(json.dumps({**card, "status": "interrupted"}), encoding="utf-8")
    mistyped = root / "mistyped"
    shutil.copytree(run, mistyped)
    (mistyped / "run.json").write_text(json.dumps({**card, "plan": "qlora"}), encoding="utf-8")
    truncated = root / "truncated"
    shutil.copytree(run, truncated)
    weights = truncated / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    broken_config = root / "broken-config"
    shutil.copytree(run, broken_config)
    (broken_config / "adapter" / "adapter_config.json").write_text('{"r": ', encoding="utf-8")
    no_weights = root / "no-weights"
    no_weights.mkdir()
    shutil.copy(tiny_model_dir / "config.json", no_weights)
    other_base = _other_base(tiny_model_dir, root / "other-base")
    user_folder = root / "my-folder"
    (user_folder / "checkpoints").mkdir(parents=True)
    (user_folder / "checkpoints" / "mine.txt").write_text("keep me", encoding="utf-8")
    no_answers = root / "no-answers.csv"
    no_answers.write_text("id,context,question,answer_span\nq1,The sky is blue.,What colour?,blue\n", encoding="utf-8")
    questions = root / "questions.jsonl"
    questions.write_text('{"id": "q1", "question": "Who?", "context": "Ann ran."}\n', encoding="utf-8")
    existing = root / "answers.jsonl"
    existing.write_text("{}\n", encoding="utf-8")
    return {"tiny": tiny_model_dir, "run": run, "unfinished": unfinished, "mistyped": mistyped,
            "truncated": truncated, "broken_config": broken_config, "no_weights": no_weights,
            "other_base": other_base, "user_folder": user_folder, "no_answers": no_answers,
            "questions": questions, "existing": existing, "root": root}


def _other_base(tiny: Path, directory: Path) -> Path:
    """The tiny Falcon with another hidden size: an adapter of the tiny one does not fit it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny)
    config.hidden_size = 32
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    for tokenizer_file in tiny.glob("tokenizer*"):
        shutil.copy(tokenizer_file, directory)
    return directory


def _train(w, *extra: str, output: str | None = None) -> list[str]:
    return ["train", "--model", str(w["tiny"]), "--data", DEMO, "--output", output or str(w["root"] / "new-run"),
            "--batch-size", "8", *extra]


# (name, argv from the world, words the error must contain)
CASES = [
    ("max-steps 0", lambda w: _train(w, "--max-steps", "0"), "--max-steps 0"),
    ("max-steps negative", lambda w: _train(w, "--max-steps", "-3"), "--max-steps -3"),
    ("save-every 0", lambda w: _train(w, "--save-every", "0"), "--save-every 0"),
    ("learning-rate nan", lambda w: _train(w, "--learning-rate", "nan"), "--learning-rate nan"),
    ("epochs 0", lambda w: _train(w, "--epochs", "0"), "--epochs 0"),
    ("eval-fraction 1", lambda w: _train(w, "--eval-fraction", "1"), "--eval-fraction 1"),
    ("method full", lambda w: _train(w, "--method", "full"), "cannot run method 'full'"),
    ("data with brackets missing", lambda w: [*_train(w)[:4], str(w["root"] / "squad[/v2].json"), *_train(w)[5:]],
     "squad[/v2].json"),
    ("data without answer column", lambda w: [*_train(w)[:4], str(w["no_answers"]), *_train(w)[5:]],
     "has no answer column"),
    ("output over a run", lambda w: _train(w, output=str(w["run"])), "already holds a run"),
    ("output over user files", lambda w: _train(w, output=str(w["user_folder"])), "already holds checkpoints"),
    ("output inside a file", lambda w: _train(w, output=str(w["questions"] / "run")), "Cannot create the run folder"),
    ("model without weights", lambda w: ["train", "--model", str(w["no_weights"]), "--data", DEMO], "lacks weights"),
    ("default model offline and uncached", lambda w: ["train", "--data", DEMO, "--output", str(w["root"] / "offline"),
                                                      "--device", "cpu"], "local Hugging Face cache"),
    ("hub model offline and unknown", lambda w: ["train", "--model", "falcon-desktop-tests/uncached", "--data", DEMO],
     "not in the Hugging Face cache"),
    ("resume a non-run", lambda w: ["train", "--resume", str(w["user_folder"])], "not a run directory"),
    ("resume with another learning rate", lambda w: ["train", "--resume", str(w["unfinished"]), "--learning-rate", "5e-2"],
     "--learning-rate 0.05 (this run: 0.001)"),
    ("resume with other data", lambda w: ["train", "--resume", str(w["unfinished"]), "--data", str(w["no_answers"])],
     "--data"),
    ("resume with another seq-len", lambda w: ["train", "--resume", str(w["unfinished"]), "--seq-len", "256"], "--seq-len 256"),
    ("resume a finished run to fewer steps", lambda w: ["train", "--resume", str(w["run"]), "--max-steps", "1"],
     "already finished: it trained 2 steps"),
    ("resume a finished run", lambda w: ["train", "--resume", str(w["run"])], "already finished: it trained 2 steps"),
    ("resume a mistyped card", lambda w: ["train", "--resume", str(w["mistyped"])], "'plan' should be dict"),
    ("plan vram nan", lambda w: ["plan", "--vram", "nan"], "--vram"),
    ("plan vram negative", lambda w: ["plan", "--vram", "-1"], "--vram"),
    ("plan unknown gpu", lambda w: ["plan", "--gpu", "banana card"], "banana"),
    ("ask device banana", lambda w: ["ask", "--model", str(w["tiny"]), "--device", "banana", "--question", "Who?"],
     "Unknown device"),
    ("ask output is input", lambda w: ["ask", "--adapter", str(w["run"]), "--input", str(w["questions"]),
                                       "--output", str(w["questions"])], "is the --data file"),
    ("ask output exists", lambda w: ["ask", "--adapter", str(w["run"]), "--input", str(w["questions"]),
                                     "--output", str(w["existing"])], "already exists"),
    ("ask output unwritable", lambda w: ["ask", "--adapter", str(w["run"]), "--input", str(w["questions"]),
                                         "--output", "/proc/falcon-desktop/answers.jsonl"], "Cannot write"),
    ("ask truncated adapter", lambda w: ["ask", "--adapter", str(w["truncated"]), "--question", "Who?"],
     "damaged or truncated"),
    ("ask broken adapter config", lambda w: ["ask", "--adapter", str(w["broken_config"]), "--question", "Who?"],
     "adapter_config.json is unreadable"),
    ("ask adapter of another base", lambda w: ["ask", "--model", str(w["other_base"]), "--adapter", str(w["run"]),
                                               "--question", "Who?"], "does not fit this base model"),
    ("ask unknown adapter", lambda w: ["ask", "--adapter", "no-such-run", "--question", "Who?"], "no-such-run"),
    ("ask empty question", lambda w: ["ask", "--adapter", str(w["run"]), "--question", " "], "--question is empty"),
    ("eval unknown adapter", lambda w: ["eval", "--data", DEMO, "--adapter", "no-such-run"], "no-such-run"),
    ("eval missing data", lambda w: ["eval", "--data", str(w["root"] / "gone[1].json"), "--predictions", DEMO],
     "gone[1].json"),
    ("merge unknown adapter", lambda w: ["merge", "--adapter", "no-such-run", "--output", str(w["root"] / "m")],
     "no-such-run"),
    ("merge truncated adapter", lambda w: ["merge", "--adapter", str(w["truncated"]), "--output", str(w["root"] / "m2"),
                                           "--dtype", "float32"], "damaged or truncated"),
    ("data inspect missing file", lambda w: ["data", "inspect", str(w["root"] / "nope.jsonl")], "nope.jsonl"),
    ("data inspect without answer column", lambda w: ["data", "inspect", str(w["no_answers"])], "has no answer column"),
]


@pytest.mark.parametrize("name,argv,words", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_clear_error(world, name, argv, words, capsys, monkeypatch) -> None:
    # huggingface_hub read HF_HUB_OFFLINE when first imported, maybe before the test set it: no download, no backoff.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    code = main(argv(world))
    err = capsys.readouterr().err
    assert code == 1, (name, err[-1500:])
    assert "Error:" in err and "Hint:" in err, err[-1500:]
    assert "Traceback" not in err
    assert words in " ".join(err.split()), err[-1500:]


def test_train_does_not_offer_inference(world, capsys) -> None:
    # `plan` sizes inference; `train --help` does not list it, so asking for it is a usage error (exit 2), no traceback.
    with pytest.raises(SystemExit) as exit_info:
        main(_train(world, "--method", "inference"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "invalid choice: 'inference'" in err and "Traceback" not in err


def test_nothing_of_the_user_is_touched_by_a_refused_run(world) -> None:
    assert (world["user_folder"] / "checkpoints" / "mine.txt").read_text(encoding="utf-8") == "keep me"
    card = json.loads((world["run"] / "run.json").read_text(encoding="utf-8"))
    assert card["status"] == "finished" and card["steps"] == 2


def test_a_foreign_adapter_in_the_repl_keeps_the_session(world, capsys) -> None:
    from rich.console import Console

    from falcon_desktop.ask import AskOptions, load_answerer
    from falcon_desktop.repl import Repl

    answerer = load_answerer(AskOptions(model=str(world["other_base"]), device="cpu"))
    lines = [f"/adapter {world['run']}", f"/adapter {world['truncated']}", "/show"]

    def typed(prompt: str) -> str:
        if not lines:
            raise EOFError
        return lines.pop(0)

    assert Repl(answerer, Console(file=sys.stdout, width=200, color_system=None), typed).run() == 0
    screen = capsys.readouterr().out
    assert "does not fit this base model" in screen and "damaged or truncated" in screen
    assert "Adapter: none" in screen or "Adapter: base" in screen or "Adapter:" in screen
    assert "Traceback" not in screen
