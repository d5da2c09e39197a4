"""SQuAD v2 scoring: the official evaluate-v2.0.py's numbers, to the last printed digit.

The expected values below were computed by hand (the fractions in the comments) and are what the official script
printed for the same data and predictions, with the abstention word written as "" as `ask --output` writes it (run
locally on a copy of the script; it is not part of this repository).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from falcon_desktop.cli import main
from falcon_desktop.errors import UserError
from falcon_desktop.evaluate import load_predictions, normalize_answer, read_squad, score_predictions


def _qa(qid: str, *answers: str) -> dict:
    return {"id": qid, "question": f"question {qid}?", "answers": [{"text": a, "answer_start": 0} for a in answers],
            "is_impossible": not answers}


# (question, gold answers, prediction, exact, f1) - one case per rule of the official script.
CASES = [
    ("q1", ("the Eiffel Tower", "Eiffel Tower in Paris"), "Eiffel tower!", 1, 1.0),      # case, punctuation, article
    ("q2", ("Denver Broncos",), "the Broncos", 0, 2 / 3),                                 # P=1 R=1/2
    ("q3", ("New York City", "York City"), "City of York", 0, 0.8),                      # max over golds: 2/3 vs 4/5
    ("q4", ("red car", "blue car"), "car", 0, 2 / 3),                                     # a tie between golds
    ("q5", ("Paris",), "", 0, 0.0),                                                       # empty answer, answerable
    ("q6", ("Eiffel Tower",), "Eiffel-Tower", 0, 0.0),                                    # "-" is deleted, not a space
    ("q7", ("go go go",), "go", 0, 0.5),                                                  # repeated tokens: P=1 R=1/3
    ("q8", (), "unanswerable", 1, 1.0),                                                   # our abstention -> ""
    ("q9", (), "Unanswerable.", 1, 1.0),
    ("q10", (), "Paris", 0, 0.0),                                                         # a span for no-answer
    ("q11", (), "", 1, 1.0),
    ("q12", ("The",), "", 1, 1.0),                                                        # gold normalises to "": HasAns, gold [""]
    ("q13", ("An apple",), "apple", 1, 1.0),
    ("q14", ("1,000 metres",), "1000 metres", 1, 1.0),
]


@pytest.fixture
def squad() -> dict:
    qas = [_qa(qid, *answers) for qid, answers, *_ in CASES]
    return {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "c", "qas": qas[:7]},
                                                                       {"context": "d", "qas": qas[7:]}]}]}


@pytest.fixture
def predictions() -> dict:
    return {qid: prediction for qid, _, prediction, *_ in CASES}


def test_normalize_answer_follows_the_official_steps():
    assert normalize_answer("  The  Eiffel-Tower, an icon!  ") == "eiffeltower icon"
    assert normalize_answer("A") == ""
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words


@pytest.mark.parametrize("qid, golds, prediction, exact, f1", CASES)
def test_each_rule_scores_like_the_official_script(qid, golds, prediction, exact, f1):
    data = [{"title": "T", "paragraphs": [{"context": "c", "qas": [_qa(qid, *golds)]}]}]
    scores = score_predictions(data, {qid: prediction})
    assert (scores["exact"], scores["f1"]) == (100.0 * exact, 100.0 * f1)
    assert scores["HasAns_total" if golds else "NoAns_total"] == 1


def test_totals_match_the_official_printout(squad, predictions):
    scores = score_predictions(squad, predictions)
    # HasAns (10): exact 4/10, F1 (1 + 2/3 + 4/5 + 2/3 + 0 + 0 + 1/2 + 1 + 1 + 1)/10 = 6.6333.../10
    # NoAns (4): exact = F1 = 3/4; all (14): exact 7/14, F1 9.6333.../14
    assert scores == {
        "exact": 50.0, "f1": 68.80952380952381, "total": 14,
        "HasAns_exact": 40.0, "HasAns_f1": 66.33333333333333, "HasAns_total": 10,
        "NoAns_exact": 75.0, "NoAns_f1": 75.0, "NoAns_total": 4,
    }
    assert list(scores) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
                            "NoAns_exact", "NoAns_f1", "NoAns_total"]


def test_a_split_without_questions_has_no_keys():
    data = [{"title": "T", "paragraphs": [{"context": "c", "qas": [_qa("a", "x"), _qa("b", "y z")]}]}]
    assert score_predictions(data, {"a": "x", "b": "y"}) == {
        "exact": 50.0, "f1": 83.33333333333333, "total": 2,
        "HasAns_exact": 50.0, "HasAns_f1": 83.33333333333333, "HasAns_total": 2,
    }


def test_missing_prediction_is_scored_wrong_and_counted(squad, predictions, capsys):
    # The official script leaves a missing id out of `total`, then stops with a KeyError in the HasAns split.
    del predictions["q1"]
    scores = score_predictions(squad, predictions)
    assert scores["total"] == 14 and scores["HasAns_total"] == 10
    assert scores["HasAns_exact"] == 30.0 and scores["exact"] == 6 / 14 * 100.0
    assert "1 of 14 questions have no prediction (q1)" in capsys.readouterr().err


def test_records_score_like_the_squad_file(squad, predictions):
    from falcon_desktop.evaluate import iter_squad_questions

    questions = list(iter_squad_questions(squad))
    assert [not q.is_impossible for q in questions][:8] == [True] * 7 + [False]
    assert score_predictions(questions, predictions) == score_predictions(squad, predictions)


def test_real_dev_half_agrees_with_official_script(shared_dir):
    squad = read_squad(shared_dir / "data" / "squad" / "dev-v2.0-half.json")
    predictions = {}
    for index, (qa, context) in enumerate(
        (qa, p["context"]) for article in squad["data"] for p in article["paragraphs"] for qa in p["qas"]
    ):
        golds = [a["text"] for a in qa["answers"]] or [""]
        words = golds[-1].split()
        choices = [golds[0], f"The {golds[0]}!", "", context.split()[0], " ".join(words[: len(words) // 2 + 1])]
        predictions[qa["id"]] = choices[index % 5]
    # Printed by the official evaluate-v2.0.py for the same file and predictions (Python 3.11).
    assert score_predictions(squad, predictions) == {
        "exact": 69.8749588680487, "f1": 72.76020608372106, "total": 6078,
        "HasAns_exact": 52.74914089347079, "HasAns_f1": 58.77544074806049, "HasAns_total": 2910,
        "NoAns_exact": 85.60606060606061, "NoAns_f1": 85.60606060606061, "NoAns_total": 3168,
    }


def test_cli_json_and_table(tmp_path: Path, squad, predictions, capsys):
    data, preds = tmp_path / "dev.json", tmp_path / "preds.json"
    data.write_text(json.dumps(squad), encoding="utf-8")
    preds.write_text(json.dumps(predictions), encoding="utf-8")
    assert main(["eval", "--data", str(data), "--predictions", str(preds), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["f1"] == 68.80952380952381 and printed["NoAns_total"] == 4
    assert main(["eval", "--data", str(data), "--predictions", str(preds)]) == 0
    table = capsys.readouterr().out
    assert "68.81" in table and "66.33" in table and "75.00" in table


def test_jsonl_answers_from_ask_are_read(tmp_path: Path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"id": "q1", "answer": "Paris"}\n\n{"id": "q2", "answer": ""}\n', encoding="utf-8")
    assert load_predictions(path) == {"q1": "Paris", "q2": ""}


@pytest.mark.parametrize("content, message", [
    ('{"q1": "a",\n "q2": }', r"invalid JSON at line 2, column 8: Expecting value"),
    ('["a"]', "holds a JSON list"),
    ('{"q1": null}', "prediction for 'q1'"),
])
def test_bad_predictions_file_is_a_user_error(tmp_path: Path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_predictions(path)


def test_bad_data_file_is_a_user_error(tmp_path: Path, capsys):
    path = tmp_path / "d.json"
    path.write_text('{"version": "v2.0"}', encoding="utf-8")
    preds = tmp_path / "p.json"
    preds.write_text("{}", encoding="utf-8")
    assert main(["eval", "--data", str(path), "--predictions", str(preds)]) == 1
    assert "not in SQuAD format" in capsys.readouterr().err


def test_every_reader_explains_a_file_that_is_not_utf8_alike(tmp_path: Path):
    """Training data, questions to answer, gold data and predictions go through one reader: one message."""
    from falcon_desktop.data import load_records, read_questions

    path = tmp_path / "dev.json"
    squad = {"version": "v2.0", "data": [{"title": "Café", "paragraphs": [
        {"context": "Un café à Paris.", "qas": [_qa("q1", "Paris")]}]}]}
    path.write_bytes(json.dumps(squad, ensure_ascii=False).encode("cp1252"))
    for read in (load_records, read_questions, read_squad, load_predictions):
        with pytest.raises(UserError, match=r"not UTF-8 \(byte 0xe9 at line 1, column \d+\); it looks like Windows-1252"):
            read(path)
