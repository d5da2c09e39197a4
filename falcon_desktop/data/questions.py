"""Questions to answer or score, read as the file has them: the one reader of `ask --data`, `eval` and the scorer.

Training data goes through `load_records`, which repairs answer spans and drops broken records. Questions to
answer or score must not change: the official SQuAD v2 script scores every question of the file with its gold
answers as written, so nothing here is repaired or dropped. Every question is a `QARecord`, the one type for a
question with its context, whatever reads it: training, evaluation, `ask` and `generate`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from falcon_desktop.data.readers import read_json, read_jsonl
from falcon_desktop.data.records import QARecord
from falcon_desktop.errors import UserError


def read_squad(path: str | Path) -> dict:
    """A SQuAD v1.1/v2.0 JSON file, checked for the `data` list the scorer walks."""
    squad = read_json(Path(path), "SQuAD")
    if not isinstance(squad, dict) or not isinstance(squad.get("data"), list):
        raise UserError(
            f"{str(path)!r} is not in SQuAD format (a JSON object with a 'data' list of articles).",
            "Pass the original SQuAD file, e.g. dev-v2.0.json.",
        )
    return squad


def _gold_texts(answers: Any) -> tuple[str, ...]:
    if isinstance(answers, Mapping):  # the `datasets` layout: {"text": [...], "answer_start": [...]}
        return tuple(answers.get("text") or ())
    return tuple(answer["text"] for answer in answers or ())


def iter_squad_questions(squad: Mapping | list) -> Iterator[QARecord]:
    """Every question of a SQuAD document (or its `data` list), in file order, its gold answers as written.

    A question is unanswerable when its `answers` list is empty, as the official script decides (it never reads
    `is_impossible`).
    """
    articles = squad["data"] if isinstance(squad, Mapping) else squad
    try:
        for article in articles:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    answers = _gold_texts(qa.get("answers"))
                    yield QARecord(id=str(qa["id"]), title=article.get("title", ""), context=paragraph["context"],
                                   question=qa["question"], answers=answers, answer_start=None,
                                   is_impossible=not answers)
    except (KeyError, TypeError) as error:
        raise UserError(
            f"The SQuAD data lacks an expected field ({error}).",
            "Each article needs 'paragraphs', each paragraph 'context' and 'qas', each qa 'id', 'question', 'answers'.",
        ) from None


def _jsonl_questions(path: Path) -> list[QARecord]:
    questions = []
    for location, row in read_jsonl(path, "Input"):
        if not isinstance(row, dict):
            raise UserError(f"{str(path)!r} {location} is not a JSON object.", "Each line must be one JSON object.")
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            raise UserError(
                f"{str(path)!r} {location} has no 'question' text.",
                'Each line looks like {"id": "q1", "question": "...", "context": "..."} (id and context optional).',
            )
        context = row.get("context")
        if context is not None and not isinstance(context, str):
            raise UserError(f"{str(path)!r} {location}: 'context' must be text.", "Give the passage as a string.")
        questions.append(QARecord(id=str(row.get("id", location.replace(" ", "-"))), title="", context=context or "",
                                  question=row["question"], answers=(), answer_start=None, is_impossible=False))
    return questions


def read_questions(path: str | Path) -> list[QARecord]:
    """Questions from a JSONL file (id, question, context per line; no context: closed-book) or a SQuAD JSON file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Input file {str(path)!r} does not exist.", "Check the path.")
    if path.suffix.lower() == ".json":
        return list(iter_squad_questions(read_squad(path)))
    if path.suffix.lower() == ".jsonl":
        return _jsonl_questions(path)
    raise UserError(
        f"Cannot read questions from {path.name!r}: expected .jsonl (one question per line) or a SQuAD .json file.",
        "Rename or convert the file.",
    )
