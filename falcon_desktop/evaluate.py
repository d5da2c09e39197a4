"""SQuAD v2 exact match and F1, computed the way the official `evaluate-v2.0.py` computes them.

The official script is the reference our numbers must agree with to the last printed digit, so this module mirrors
its behaviour, not only its formulas:

- answers are normalised by lower-casing, dropping ASCII punctuation, the articles a/an/the and extra whitespace;
- a gold answer that normalises to nothing is dropped; a question with no gold answer left has the single gold
  answer "" (so only an empty prediction is right);
- a question counts as HasAns when its raw `answers` list is non-empty;
- per question, exact and F1 are the maximum over its gold answers, with the script's F1 arithmetic;
- totals are `100.0 * sum(scores) / count`, summed in dataset order with the built-in `sum` (Python 3.12 made that
  a compensated sum, so the same interpreter gives the same last digit); HasAns_*/NoAns_* keys exist only when that
  split has questions; percentages are not rounded (the script prints `json.dumps` of the floats).

Two things differ on purpose: our model writes `prompts.ABSTAIN` for "no answer", which is mapped to "" before
scoring (a predictions file written by `ask --output` already holds ""), and a question missing from the predictions
is scored 0 and counted, with a warning. The official script leaves it out of `total` and then stops with a KeyError
in the HasAns/NoAns split, so it prints no result to agree with.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from falcon_desktop.console import warn
from falcon_desktop.data.questions import iter_squad_questions, read_squad
from falcon_desktop.data.readers import read_json, read_jsonl
from falcon_desktop.errors import UserError
from falcon_desktop.prompts import is_abstention

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the official order of steps)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_score(gold: str, prediction: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(prediction))


def f1_score(gold: str, prediction: str) -> float:
    gold_tokens, predicted_tokens = _tokens(gold), _tokens(prediction)
    if not gold_tokens or not predicted_tokens:
        # A no-answer on either side scores 1 only when both are empty.
        return int(gold_tokens == predicted_tokens)
    shared = sum((collections.Counter(gold_tokens) & collections.Counter(predicted_tokens)).values())
    if shared == 0:
        return 0
    precision = 1.0 * shared / len(predicted_tokens)
    recall = 1.0 * shared / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


# ------------------------------------------------------------------------------------------------------ reading
def _gold_by_id(dataset: Any) -> dict[str, tuple[str, ...]]:
    """question id -> raw gold answers, in dataset order (a repeated id keeps its first place and last answers)."""
    if isinstance(dataset, (str, Path)):
        dataset = read_squad(dataset)
    if isinstance(dataset, Mapping) or (isinstance(dataset, list) and dataset and isinstance(dataset[0], Mapping)):
        dataset = iter_squad_questions(dataset)
    return {record.id: () if record.is_impossible else tuple(record.answers) for record in dataset}


def load_predictions(path: str | Path) -> dict[str, str]:
    """Official `{question_id: answer}` JSON, or the JSONL that `ask --output x.jsonl` writes (id + answer per line)."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return _load_jsonl_predictions(path)
    predictions = read_json(path, "Predictions")
    if not isinstance(predictions, dict):
        raise UserError(
            f"{str(path)!r} holds a JSON {type(predictions).__name__}, not an object of question id -> answer.",
            'The official format is {"56ddde6b9a695914005b9628": "France", ...}.',
        )
    for question_id, answer in predictions.items():
        if not isinstance(answer, str):
            raise UserError(
                f"The prediction for {question_id!r} in {str(path)!r} is {answer!r}, not a string.",
                'Write "" for a question the model judges unanswerable.',
            )
    return predictions


def _load_jsonl_predictions(path: Path) -> dict[str, str]:
    predictions: dict[str, str] = {}
    for location, row in read_jsonl(path, "Predictions"):
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("answer"), str):
            raise UserError(
                f"{str(path)!r} {location} lacks a string 'id' and 'answer'.",
                'Each line looks like {"id": "q1", "answer": "France"}.',
            )
        predictions[row["id"]] = row["answer"]
    return predictions


# ------------------------------------------------------------------------------------------------------ scoring
def _mean_percent(scores: Iterable[float], count: int) -> float:
    return 100.0 * sum(scores) / count


def question_scores(dataset: Any, predictions: Mapping[str, str]) -> tuple[dict[str, float], dict[str, float]]:
    """({id: exact}, {id: F1}) of every question of `dataset`, in its order; a question without a prediction scores 0
    (with one warning)."""
    return _scores(_questions_to_score(dataset), predictions)


def _questions_to_score(dataset: Any) -> dict[str, tuple[str, ...]]:
    gold_by_id = _gold_by_id(dataset)
    if not gold_by_id:
        raise UserError("The data holds no questions to score.", "Check the --data file.")
    return gold_by_id


def _scores(gold_by_id: Mapping[str, tuple[str, ...]],
            predictions: Mapping[str, str]) -> tuple[dict[str, float], dict[str, float]]:
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    missing = []
    for question_id, raw_answers in gold_by_id.items():
        golds = [answer for answer in raw_answers if normalize_answer(answer)] or [""]
        if question_id not in predictions:
            missing.append(question_id)
            exact[question_id] = f1[question_id] = 0
            continue
        prediction = predictions[question_id]
        prediction = "" if is_abstention(prediction) else prediction
        exact[question_id] = max(exact_score(gold, prediction) for gold in golds)
        f1[question_id] = max(f1_score(gold, prediction) for gold in golds)
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        warn(f"{len(missing)} of {len(gold_by_id)} questions have no prediction ({shown}); they are scored as wrong.")
    return exact, f1


def score_predictions(dataset: Any, predictions: Mapping[str, str]) -> dict:
    """Official SQuAD v2 metrics for `predictions` ({id: answer}) against `dataset`.

    `dataset` is a SQuAD JSON document, its `data` list, a path to one, or `QARecord`s. Returns exact, f1, total and
    HasAns_*/NoAns_* (present when that split is non-empty), as the official script prints them.
    """
    gold_by_id = _questions_to_score(dataset)
    exact, f1 = _scores(gold_by_id, predictions)
    result: dict[str, float | int] = {
        "exact": _mean_percent(exact.values(), len(exact)),
        "f1": _mean_percent(f1.values(), len(f1)),
        "total": len(exact),
    }
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        ids = [question_id for question_id, answers in gold_by_id.items() if bool(answers) == wanted]
        if ids:
            result[f"{prefix}_exact"] = _mean_percent((exact[i] for i in ids), len(ids))
            result[f"{prefix}_f1"] = _mean_percent((f1[i] for i in ids), len(ids))
            result[f"{prefix}_total"] = len(ids)
    return result
