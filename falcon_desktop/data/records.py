"""Question-answer records, the checks every record passes, and the held-out split.

`RecordBuilder` is the one place a record is validated, whatever file format it came from: types, empty
questions, duplicate ids, and answer spans. SQuAD's `answer_start` is sometimes off by a few characters; a span is
repaired when its text is found nearby (or, failing that, anywhere in the context) and dropped when it is not found
at all. Every drop is counted by reason, and the first few problems keep their location for the message.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from falcon_desktop.errors import UserError
from falcon_desktop.prompts import QAPrompt, answer_text

# Drop reasons, as counted in `LoadReport.drop_reasons` and shown by `data inspect`.
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EMPTY_QUESTION = "empty_question"
EMPTY_CONTEXT = "empty_context"
EMPTY_ANSWER = "empty_answer"
NO_ANSWER = "answerable_without_answer"
ANSWER_NOT_IN_CONTEXT = "answer_not_in_context"
DUPLICATE_ID = "duplicate_id"
NOT_CHAT_TEXT = "no_chat_turns"

# How far (in characters) a misplaced answer_start may be from the text's real position to count as "nearby".
REPAIR_WINDOW = 20
# Problems remembered with their location, for messages; the counts cover all of them.
PROBLEMS_KEPT = 20


@dataclass(frozen=True)
class QARecord:
    """One training question. Chat turns are records too: the earlier turns are the context, the turn the question."""

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]
    answer_start: int | None  # of answers[0] in context; None when unanswerable or not a span of the context
    is_impossible: bool

    def prompt(self) -> str:
        return QAPrompt(question=self.question, context=self.context).render()

    def target(self) -> str:
        """What the model is trained to write after the prompt (before EOS)."""
        return answer_text(None if self.is_impossible or not self.answers else self.answers[0])


@dataclass
class LoadReport:
    records: list[QARecord]
    read: int
    repaired: int
    dropped: int
    drop_reasons: dict[str, int]
    source: str
    format: str = ""
    problems: list[str] = field(default_factory=list)  # the first PROBLEMS_KEPT, each with its location

    @property
    def unanswerable(self) -> int:
        return sum(record.is_impossible for record in self.records)

    @property
    def answerable(self) -> int:
        return len(self.records) - self.unanswerable

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "format": self.format,
            "read": self.read,
            "records": len(self.records),
            "answerable": self.answerable,
            "unanswerable": self.unanswerable,
            "repaired": self.repaired,
            "dropped": self.dropped,
            "drop_reasons": dict(sorted(self.drop_reasons.items())),
        }


def locate_answer(context: str, text: str, start: int | None) -> tuple[int | None, bool]:
    """(position of `text` in `context`, whether `start` had to be corrected); position None when absent.

    A start that is off by a few characters is moved to the nearest occurrence within REPAIR_WINDOW; otherwise to
    the occurrence nearest to it in the whole context (the first, when no start was given at all).
    """
    if start is not None and 0 <= start and context.startswith(text, start):
        return start, False
    if start is not None:
        low = max(0, start - REPAIR_WINDOW)
        nearby = list(_occurrences(context, text, low, start + REPAIR_WINDOW + len(text)))
        if nearby:
            return min(nearby, key=lambda p: abs(p - start)), True
    everywhere = list(_occurrences(context, text, 0, len(context)))
    if not everywhere:
        return None, False
    if start is None:
        return everywhere[0], False
    return min(everywhere, key=lambda p: abs(p - start)), True


def _occurrences(context: str, text: str, low: int, high: int):
    position = context.find(text, low, high)
    while position != -1:
        yield position
        position = context.find(text, position + 1, high)


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class RecordBuilder:
    """Validates raw fields into `QARecord`s and keeps the counts for the `LoadReport`."""

    def __init__(self, source: str, format_name: str) -> None:
        self.source = source
        self.format = format_name
        self.records: list[QARecord] = []
        self.read = 0
        self.repaired = 0
        self.drop_reasons: Counter[str] = Counter()
        self.problems: list[str] = []
        self._seen_ids: set[str] = set()

    def reject(self, reason: str, location: str, detail: str) -> None:
        """Count one record read and dropped for `reason`."""
        self.read += 1
        self.drop_reasons[reason] += 1
        if len(self.problems) < PROBLEMS_KEPT:
            self.problems.append(f"{location}: {detail}")

    def add(
        self,
        location: str,
        *,
        record_id: Any,
        title: Any,
        context: Any,
        question: Any,
        answers: list[tuple[Any, Any]],
        is_impossible: Any,
        context_required: bool = True,
        locate_answers: bool = True,
    ) -> None:
        """Check one record and keep it, or count why it was dropped.

        `answers` are (text, answer_start) pairs, start None where the source gives none. With `locate_answers`
        False (chat), an answer is the reply text and need not appear in the context.
        """
        try:
            record_id, title = _checked_fields(record_id, title, context, question, is_impossible, context_required)
            if record_id in self._seen_ids:
                raise _Rejected(DUPLICATE_ID, f"id {record_id!r} was already used by an earlier question")
            texts, first_start, repaired = (), None, False
            if not is_impossible:
                texts, first_start, repaired = _checked_answers(record_id, context, answers, locate_answers)
        except _Rejected as rejected:
            return self.reject(rejected.reason, location, rejected.detail)
        self._seen_ids.add(record_id)
        self.read += 1
        self.repaired += repaired
        self.records.append(QARecord(record_id, title, context, question, texts, first_start, is_impossible))

    def finish(self, strict: bool) -> LoadReport:
        report = LoadReport(
            records=self.records,
            read=self.read,
            repaired=self.repaired,
            dropped=sum(self.drop_reasons.values()),
            drop_reasons=dict(self.drop_reasons),
            source=self.source,
            format=self.format,
            problems=self.problems,
        )
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.drop_reasons.items()))
        examples = "\n  ".join(self.problems[:5])
        if strict and report.dropped:
            raise UserError(
                f"{self.source}: {report.dropped} of {report.read} records would be dropped ({reasons}):\n  {examples}",
                "Fix those records, or leave out --strict to train on the rest.",
            )
        if not report.records:
            detail = f" All {report.read} were dropped ({reasons}):\n  {examples}" if report.read else ""
            raise UserError(
                f"{self.source} holds no usable question-answer records.{detail}",
                "Check that this is the file you meant; `falcon-desktop data inspect FILE` shows what it holds.",
            )
        return report


def _checked_fields(
    record_id: Any, title: Any, context: Any, question: Any, is_impossible: Any, context_required: bool
) -> tuple[str, str]:
    """(id, title) as text, or `_Rejected` naming the first field that is missing, mistyped or empty."""
    for name, value in (("id", record_id), ("question", question), ("context", context)):
        if value is None:
            raise _Rejected(MISSING_FIELD, f"'{name}' is missing")
    if isinstance(record_id, int) and not isinstance(record_id, bool):
        record_id = str(record_id)
    title = "" if title is None else title
    for name, value in (("id", record_id), ("question", question), ("context", context), ("title", title)):
        if not isinstance(value, str):
            raise _Rejected(WRONG_TYPE, f"'{name}' should be text, not {type(value).__name__}")
    if not isinstance(is_impossible, bool):
        raise _Rejected(WRONG_TYPE, f"'is_impossible' should be true or false, not {is_impossible!r}")
    if not question.strip():
        raise _Rejected(EMPTY_QUESTION, f"question {record_id!r} is empty")
    if context_required and not context.strip():
        raise _Rejected(EMPTY_CONTEXT, f"question {record_id!r} has an empty context")
    return record_id, title


def _checked_answers(
    record_id: str, context: str, answers: list[tuple[Any, Any]], locate: bool
) -> tuple[tuple[str, ...], int | None, bool]:
    """(answer texts kept, start of the first, whether any start was repaired) for an answerable question."""
    texts: list[str] = []
    first_start: int | None = None
    repaired = False
    for text, start in answers:
        if text is None:
            continue
        if not isinstance(text, str) or not (start is None or type(start) is int):
            raise _Rejected(WRONG_TYPE, f"answer {text!r} at {start!r} is not text + integer")
        if not text.strip():
            continue
        position, moved = locate_answer(context, text, start) if locate else (None, False)
        if locate and position is None:
            continue
        repaired |= moved
        if not texts:
            first_start = position
        texts.append(text)
    if texts:
        return tuple(texts), first_start, repaired
    unfound = [text for text, _ in answers if isinstance(text, str) and text.strip()]
    if unfound:
        raise _Rejected(ANSWER_NOT_IN_CONTEXT, f"answer {unfound[0]!r} does not occur in the context")
    raise _Rejected(NO_ANSWER if locate else EMPTY_ANSWER, f"question {record_id!r} is answerable but has no answer text")


def _group_key(record: QARecord, by_title: bool) -> str:
    return record.title if by_title else record.context


def split_by_article(records: list[QARecord], eval_fraction: float, seed: int) -> tuple[list[QARecord], list[QARecord]]:
    """(train, eval): whole articles go to one side, so no paragraph is seen in both.

    Articles are shuffled with `seed` and each is put on the eval side when that brings the eval count closer to
    `eval_fraction` of the records. With fewer than two titled articles, paragraphs (contexts) are the unit.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise UserError(f"The eval fraction must be at least 0 and below 1, not {eval_fraction}.", "Try 0.05.")
    titles = {record.title for record in records if record.title}
    by_title = len(titles) >= 2
    groups: dict[str, int] = Counter(_group_key(record, by_title) for record in records)
    order = list(groups)
    random.Random(seed).shuffle(order)
    target = eval_fraction * len(records)
    eval_keys: set[str] = set()
    eval_count = 0
    for key in order:
        size = groups[key]
        if abs(eval_count + size - target) < abs(eval_count - target) and len(eval_keys) < len(order) - 1:
            eval_keys.add(key)
            eval_count += size
    train = [record for record in records if _group_key(record, by_title) not in eval_keys]
    evaluation = [record for record in records if _group_key(record, by_title) in eval_keys]
    return train, evaluation
