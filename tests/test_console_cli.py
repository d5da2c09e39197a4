"""What the user sees: every verb's help, one flag vocabulary (old spellings with a note), and a quiet console."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from falcon_desktop.cli import build_parser, main


def _parsers(parser: argparse.ArgumentParser, name: str = "falcon-desktop"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for verb, subparser in action.choices.items():
                yield from _parsers(subparser, f"{name} {verb}")


PARSERS = dict(_parsers(build_parser()))


def test_every_verb_is_covered() -> None:
    from falcon_desktop.cli import VERBS

    assert {name.split()[1] for name in PARSERS if " " in name} == set(VERBS)
    assert "falcon-desktop data inspect" in PARSERS


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_help_parses_and_states_each_default_once(name: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*name.split()[1:], "--help"])
    assert exit_info.value.code == 0
    assert "usage: " + name in capsys.readouterr().out

    parser = PARSERS[name]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help in (None, argparse.SUPPRESS):
            continue
        text = formatter._expand_help(action)
        assert text.lower().count("default") <= 1, (action.option_strings, text)
        assert "(default: None)" not in text and "(default: False)" not in text, (action.option_strings, text)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_no_parser_accepts_abbreviations(name: str) -> None:
    assert PARSERS[name].allow_abbrev is False


def test_an_abbreviated_flag_is_an_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--epoch", "1", "--dry-run"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --epoch" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--epochs", "--learning-rate", "--seed", "--lora-dropout"])
def test_training_flags_have_help(flag: str) -> None:
    action = next(a for a in PARSERS["falcon-desktop train"]._actions if flag in a.option_strings)
    assert action.help and action.help != argparse.SUPPRESS


def test_train_lists_only_what_training_uses(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for hidden in ("--inference-dtype", "--examples", "--tokens", "--mean-tokens", "--price-per-kwh", "inference"):
        assert hidden not in text, hidden
    for shown in ("--lora-r", "--batch-size", "--micro-batch", "--quantize, --no-quantize", "--verbose"):
        assert shown in text, shown
    with pytest.raises(SystemExit):
        main(["train", "--method", "inference", "--dry-run"])


def test_vocabulary_is_the_same_across_verbs() -> None:
    def options(name: str) -> dict[str, argparse.Action]:
        return {o: a for a in PARSERS[name]._actions if a.help != argparse.SUPPRESS for o in a.option_strings}

    plan, train, inspect = options("falcon-desktop plan"), options("falcon-desktop train"), options("falcon-desktop data inspect")
    ask, evaluate = options("falcon-desktop ask"), options("falcon-desktop eval")
    for flag in ("--batch-size", "--micro-batch", "--seq-len", "--model"):
        assert flag in plan and flag in train and flag in inspect, flag
    assert "--batch-size" not in ask and "--answer-batch" in ask and "--answer-batch" in evaluate
    for verb in (train, inspect, ask, evaluate):
        assert "--data" in verb
    for verb in (train, ask, evaluate):
        assert isinstance(verb["--quantize"], argparse.BooleanOptionalAction)


@pytest.mark.parametrize("argv, dest, value, note", [
    (["ask", "--batch-size", "4"], "answer_batch", 4, "--batch-size is deprecated; write --answer-batch"),
    (["eval", "--data", "d.json", "--batch-size", "4"], "answer_batch", 4, "write --answer-batch"),
    (["ask", "--input", "q.jsonl"], "data", "q.jsonl", "--input is deprecated; write --data"),
    (["data", "inspect", "demo"], "source", "demo", "FILE_OR_NAME without --data is deprecated"),
    (["data", "inspect", "--data", "demo", "--effective-batch-size", "8"], "effective_batch_size", 8,
     "write --batch-size"),
    (["data", "inspect", "--data", "demo", "--micro-batch-size", "2"], "micro_batch_size", 2, "write --micro-batch"),
])
def test_deprecated_spellings_still_work_with_a_note(argv, dest, value, note, capsys) -> None:
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    assert note in capsys.readouterr().err


def test_new_spellings_carry_no_note(capsys) -> None:
    args = build_parser().parse_args(["data", "inspect", "--data", "demo", "--batch-size", "8", "--micro-batch", "2"])
    assert (args.source, args.effective_batch_size, args.micro_batch_size) == ("demo", 8, 2)
    assert capsys.readouterr().err == ""


def test_verbose_is_accepted_before_and_after_the_verb() -> None:
    parser = build_parser()
    assert parser.parse_args(["--verbose", "runs"]).verbose is True
    assert parser.parse_args(["runs", "--verbose"]).verbose is True
    assert parser.parse_args(["runs"]).verbose is False


# ------------------------------------------------------------------------------------------------ quiet console
def test_quiet_libraries_hides_library_warnings_and_logs_but_not_ours(monkeypatch) -> None:
    import logging

    from falcon_desktop.console import quiet_libraries

    monkeypatch.delenv("FALCON_DESKTOP_DEBUG", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    library = {"__name__": "transformers.modeling_utils"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_libraries():
            assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
            assert not logging.getLogger("bitsandbytes.backends").isEnabledFor(logging.WARNING)
            exec("import warnings; warnings.warn('deprecated', FutureWarning)", library)
            warnings.warn("ours", UserWarning)
        exec("import warnings; warnings.warn('after', FutureWarning)", library)
    assert [str(w.message) for w in caught] == ["ours", "after"]
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    assert logging.getLogger("bitsandbytes.backends").isEnabledFor(logging.WARNING)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_libraries(verbose=True):
            exec("import warnings; warnings.warn('shown', FutureWarning)", library)
    assert [str(w.message) for w in caught] == ["shown"]


THIRD_PARTY_NOISE = re.compile(
    r"Warning\b|warnings\.warn|Loading weights|Writing model shards|it/s\]|\[transformers\]|pip install kernels"
    r"|model of type|Traceback"
)


def _demo(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1",
           "FALCON_DESKTOP_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    env.pop("FALCON_DESKTOP_DEBUG", None)
    command = [sys.executable, "-m", "falcon_desktop", *extra, "demo", "--steps", "4",
               "--output", str(tmp_path / "demo")]
    return subprocess.run(command, capture_output=True, text=True, encoding="utf-8", env=env, timeout=600)


def test_demo_stderr_holds_only_our_messages(tmp_path: Path) -> None:
    """The whole flow (model write, 4-bit load, train, eval, ask) with no library bar or warning on stderr."""
    result = _demo(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "3. Train" in result.stderr and "5. Ask" in result.stderr
    assert not THIRD_PARTY_NOISE.search(result.stderr), result.stderr
    # stderr is a pipe here: the training progress is plain lines, the last one at the final step
    assert re.search(r"^train 4/4  loss \d+\.\d{4}  lr .* tok/s  VRAM cpu  elapsed \d:\d\d:\d\d  ETA 0:00:00$",
                     result.stderr, re.MULTILINE), result.stderr


def test_verbose_shows_the_library_output_again(tmp_path: Path) -> None:
    result = _demo(tmp_path, "--verbose")
    assert result.returncode == 0, result.stderr
    assert THIRD_PARTY_NOISE.search(result.stderr), result.stderr
