"""`falcon-desktop data inspect`, through the CLI's own entry point and error handling."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from falcon_desktop import cli
from falcon_desktop.data.measure import token_statistics

CONTEXT = "Greyrock Lighthouse stands on a granite reef. Its light was first lit in 1851."


@pytest.fixture(autouse=True)
def only_the_data_verb(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the parser with this verb alone, so these tests do not depend on the other verbs' state."""
    monkeypatch.setattr(cli, "VERBS", ("data",))


def inspect(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["data", "inspect", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def messy_squad(tmp_path: Path) -> Path:
    qas = [
        {"id": "ok", "question": "What stands on the reef?", "answers": [{"text": "Greyrock Lighthouse", "answer_start": 0}]},
        {"id": "off", "question": "When was it lit?", "answers": [{"text": "1851", "answer_start": CONTEXT.index("1851") - 4}]},
        {"id": "gone", "question": "Who built it?", "answers": [{"text": "Robert Stevenson", "answer_start": 3}]},
        {"id": "no", "question": "What colour is it?", "answers": [], "is_impossible": True},
    ]
    path = tmp_path / "messy.json"
    data = {"version": "v2.0", "data": [{"title": "Greyrock", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_json_summary_of_the_demo_set(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = inspect(capsys, "demo", "--json")
    assert code == 0
    result = json.loads(out)
    assert {k: result[k] for k in ("records", "answerable", "unanswerable", "repaired", "dropped", "drop_reasons")} == {
        "records": 60, "answerable": 48, "unanswerable": 12, "repaired": 0, "dropped": 0, "drop_reasons": {},
    }


def test_table_shows_repairs_drops_and_where(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = inspect(capsys, str(messy_squad(tmp_path)))
    assert code == 0
    assert re.search(r"repaired answer spans\s+│\s+1 │", out) and re.search(r"dropped\s+│\s+1 │", out)
    assert "answer not in context" in out
    assert "data[0].paragraphs[0].qas[2]: answer 'Robert Stevenson' does not occur in the context" in out
    assert "--model" in err  # the hint for token statistics goes to stderr, never into the results


def test_json_counts_for_a_messy_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _, out, _ = inspect(capsys, str(messy_squad(tmp_path)), "--json")
    result = json.loads(out)
    assert (result["records"], result["repaired"], result["dropped"], result["unanswerable"]) == (3, 1, 1, 1)
    assert result["drop_reasons"] == {"answer_not_in_context": 1}


def test_strict_and_malformed_files_exit_1_with_a_message(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = inspect(capsys, str(messy_squad(tmp_path)), "--strict")
    assert (code, out) == (1, "")
    assert "Error:" in err and "1 of 4 records would be dropped" in err and "Hint:" in err
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": "v2.0", "data": [}', encoding="utf-8")
    code, _, err = inspect(capsys, str(broken))
    assert code == 1 and "line 1, column 30" in err
    code, _, err = inspect(capsys, "demo", "--seq-len", "8")
    assert code == 1 and "--seq-len must be at least 32" in err


def test_token_lengths_and_padding_efficiency_with_a_model(capsys: pytest.CaptureFixture[str], tiny_model_dir: Path) -> None:
    code, out, _ = inspect(capsys, "demo", "--model", str(tiny_model_dir), "--seq-len", "128", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["examples"] + result["dropped_too_long"] == 60
    assert result["examples"] > 0 and result["tokens"]["max"] <= 128
    assert set(result["tokens"]) >= {"mean", "median", "p90", "p99", "max"}
    assert 0.5 < result["padding_efficiency"] <= 1.0
    assert len(result["fingerprint"]) == 64
    code, out, _ = inspect(capsys, "demo", "--model", str(tiny_model_dir), "--seq-len", "128")
    assert code == 0 and "Padding efficiency" in out and "p99" in out


def test_unknown_model_is_a_message(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = inspect(capsys, "demo", "--model", str(tmp_path / "no-such-model"))
    assert code == 1 and "Error:" in err


def test_data_without_an_action_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["data"]) == 2
    assert "inspect" in capsys.readouterr().out


def test_token_statistics_nearest_rank() -> None:
    assert token_statistics(list(range(1, 101))) == {"mean": 50.5, "median": 50, "p90": 90, "p99": 99, "max": 100, "total": 5050}
    assert token_statistics([])["max"] == 0


def test_importing_the_data_modules_loads_neither_torch_nor_transformers() -> None:
    code = "import sys, falcon_desktop.cli.data, falcon_desktop.data; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_inspect_defaults_are_the_planners() -> None:
    from falcon_desktop.cli import build_parser
    from falcon_desktop.plan import PlanRequest

    args = build_parser().parse_args(["data", "inspect", "demo"])
    assert (args.seq_len, args.effective_batch_size) == (PlanRequest().max_seq_len, PlanRequest().effective_batch_size)
