"""From what a source holds to `QARecord`s: nested SQuAD, flat question/context/answers rows, chat text, and
prompt/response pairs, all through the same `RecordBuilder` checks.

Chat conversations in the OpenAssistant-Guanaco style (`### Human: ... ### Assistant: ...`) become one record per
assistant turn: the reply is the answer, the human turn before it the question, and the earlier turns the context,
written by `chat_history`. So chat data trains the same template that `ask` uses.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from falcon_desktop.data.readers import RawData, read_source
from falcon_desktop.data.records import MISSING_FIELD, NOT_CHAT_TEXT, WRONG_TYPE, LoadReport, RecordBuilder
from falcon_desktop.errors import UserError

CHAT_TURN = re.compile(r"###\s*(Human|Assistant)\s*:", re.IGNORECASE)
CHAT_ROLES = {"human": "Human", "assistant": "Assistant"}
SQUAD_ROWS, CHAT, PROMPT_RESPONSE = "squad-rows", "chat", "prompt-response"


def load_records(source: str | Path, strict: bool = False) -> LoadReport:
    """Read and validate every record of a SQuAD file, flat file, chat file or `datasets` name.

    Broken records are repaired or dropped and counted; `strict` turns any drop into a `UserError`, and so does a
    source with no usable record at all.
    """
    raw = read_source(source)
    if raw.document is not None:
        version = raw.document.get("version")
        builder = RecordBuilder(raw.label, f"squad-json {version}" if isinstance(version, str) else "squad-json")
        _add_squad_document(raw.document, builder)
    else:
        row_format = _detect_row_format(raw)
        builder = RecordBuilder(raw.label, row_format)
        add_row = {SQUAD_ROWS: _add_squad_row, CHAT: _add_chat_row, PROMPT_RESPONSE: _add_prompt_response_row}[row_format]
        for location, row in raw.rows:
            if isinstance(row, dict):
                add_row(builder, location, row)
            else:
                builder.reject(WRONG_TYPE, location, f"expected an object with named fields, not {type(row).__name__}")
    return builder.finish(strict)


def chat_history(turns: Sequence[tuple[str, str]]) -> str:
    """Earlier (role, text) turns of a conversation as the context block of the prompt."""
    return "\n".join(f"{role}: {text.strip()}" for role, text in turns)


# The answer column of a flat table: SQuAD's `answers`, and the two names tables often use for one answer text.
ANSWER_COLUMNS = ("answers", "answer", "answer_text")


def _detect_row_format(raw: RawData) -> str:
    first = next((row for _, row in raw.rows if isinstance(row, dict)), None)
    if first is None:
        return SQUAD_ROWS  # nothing usable: the builder reports 0 records with the reasons
    keys = set(first)
    if {"question", "context"} <= keys:
        if not keys & {*ANSWER_COLUMNS, "is_impossible"}:
            raise UserError(
                f"{raw.label} has no answer column: its fields are {', '.join(sorted(map(str, keys)))}. Every "
                "question would be read as unanswerable and the model taught to always abstain.",
                f"Name the answer column {' or '.join(ANSWER_COLUMNS)} (an empty cell marks an unanswerable question).",
            )
        return SQUAD_ROWS
    if {"prompt", "response"} <= keys:
        return PROMPT_RESPONSE
    if isinstance(first.get("text"), str) and CHAT_TURN.search(first["text"]):
        return CHAT
    raise UserError(
        f"{raw.label} is not SQuAD data: its records have the fields {', '.join(sorted(map(str, keys))) or '(none)'}.",
        "Expected question/context/answers (SQuAD), prompt/response, or chat `text` with ### Human: / ### Assistant:.",
    )


def _add_squad_document(document: dict[str, Any], builder: RecordBuilder) -> None:
    for a, article in enumerate(document["data"]):
        where = f"data[{a}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            builder.reject(MISSING_FIELD, where, "an article needs a 'paragraphs' list")
            continue
        for p, paragraph in enumerate(article["paragraphs"]):
            where_paragraph = f"{where}.paragraphs[{p}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                builder.reject(MISSING_FIELD, where_paragraph, "a paragraph needs 'context' and a 'qas' list")
                continue
            for q, qa in enumerate(paragraph["qas"]):
                location = f"{where_paragraph}.qas[{q}]"
                if not isinstance(qa, dict):
                    builder.reject(WRONG_TYPE, location, f"a question should be an object, not {type(qa).__name__}")
                    continue
                _add_question(builder, location, qa, title=article.get("title"), context=paragraph.get("context"))


def _add_squad_row(builder: RecordBuilder, location: str, row: dict[str, Any]) -> None:
    answers = row.get(next((name for name in ANSWER_COLUMNS if name in row), "answers"))
    if isinstance(answers, str) and answers.strip()[:1] in ("[", "{"):  # CSV cells hold the answers as text
        answers = _parse_literal(answers)
    if isinstance(answers, str) and row.get("answer_start") not in (None, ""):
        answers = {"text": answers, "answer_start": _as_int(row["answer_start"])}
    _add_question(builder, location, {**row, "answers": answers}, title=row.get("title"), context=row.get("context"))


def _add_question(builder: RecordBuilder, location: str, qa: dict[str, Any], title: Any, context: Any) -> None:
    pairs = answer_pairs(qa.get("answers"))
    if pairs is None:
        builder.reject(WRONG_TYPE, location, f"'answers' has an unknown shape: {str(qa.get('answers'))[:80]}")
        return
    builder.add(
        location,
        record_id=qa.get("id", location.replace(" ", "-")),
        title=title,
        context=context,
        question=qa.get("question"),
        answers=pairs,
        is_impossible=_as_bool(qa.get("is_impossible"), default=not pairs),
    )


def answer_pairs(value: Any) -> list[tuple[Any, Any]] | None:
    """(text, answer_start) pairs from any of the usual shapes; None when the shape is not one of them.

    Shapes: SQuAD's list of {text, answer_start}; `datasets`' dict of lists {text: [...], answer_start: [...]}; one
    such dict of scalars; a list of strings; a single string. A missing start is None (the text is then searched).
    """
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [(value, None)]
    if isinstance(value, dict) and "text" in value:
        texts, starts = value["text"], value.get("answer_start")
        if isinstance(texts, (list, tuple)):
            starts = list(starts) if isinstance(starts, (list, tuple)) else [None] * len(texts)
            return list(zip(texts, starts + [None] * (len(texts) - len(starts))))
        return [(texts, starts)]
    if isinstance(value, (list, tuple)):
        pairs = []
        for item in value:
            if isinstance(item, dict):
                pairs.append((item.get("text"), item.get("answer_start")))
            elif isinstance(item, str):
                pairs.append((item, None))
            else:
                return None
        return pairs
    return None


def _parse_literal(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            return ast.literal_eval(text)  # pandas writes Python reprs into CSV cells
        except (ValueError, SyntaxError):
            return text


def _as_int(value: Any) -> Any:
    return int(value) if isinstance(value, str) and value.strip().lstrip("-").isdigit() else value


def _as_bool(value: Any, default: bool) -> Any:
    if value is None or value == "":
        return default
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    return value


def _add_chat_row(builder: RecordBuilder, location: str, row: dict[str, Any]) -> None:
    text = row.get("text")
    base_id = str(row.get("id", location.replace(" ", "-")))
    if not isinstance(text, str):
        builder.reject(WRONG_TYPE, location, "'text' should be the conversation as text")
        return
    pieces = CHAT_TURN.split(text)
    turns = [(CHAT_ROLES[role.lower()], said.strip()) for role, said in zip(pieces[1::2], pieces[2::2])]
    if not any(role == "Assistant" for role, _ in turns):
        builder.reject(NOT_CHAT_TEXT, location, "no '### Assistant:' turn in the text")
        return
    for index, (role, said) in enumerate(turns):
        if role != "Assistant" or index == 0 or turns[index - 1][0] != "Human":
            continue
        builder.add(
            f"{location} turn {index + 1}",
            record_id=f"{base_id}-{index + 1}",
            title=base_id,
            context=chat_history(turns[: index - 1]),
            question=turns[index - 1][1],
            answers=[(said, None)],
            is_impossible=False,
            context_required=False,
            locate_answers=False,
        )


def _add_prompt_response_row(builder: RecordBuilder, location: str, row: dict[str, Any]) -> None:
    response = row.get("response")
    builder.add(
        location,
        record_id=row.get("id", location.replace(" ", "-")),
        title=row.get("title"),
        context="",
        question=row.get("prompt"),
        answers=[(response, None)],
        is_impossible=False,
        context_required=False,
        locate_answers=False,
    )
