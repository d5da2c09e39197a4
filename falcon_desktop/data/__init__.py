"""Question-answering data: read and validate, tokenize under the shared template, and batch without waste.

    load_records(source)            -> LoadReport (records + counts of what was read, repaired, dropped and why)
    read_questions(path)            -> QARecords to answer or score, exactly as the file has them
    split_by_article(records, ...)  -> (train, eval) with no paragraph on both sides
    tokenize_records(records, tok)  -> TokenizeReport (examples: ids + prompt length; windowed / dropped counts)
    schedule_steps / split_micro_batches / collate / step_micro_batches / padding_efficiency  -> the trainer's batches
    fingerprint(examples)           -> sha256 of the processed data, for the run card

Importing this package loads neither torch nor transformers; they load where they are used.
"""

from __future__ import annotations

from falcon_desktop.data.batching import (
    IGNORE_INDEX,
    collate,
    padding_efficiency,
    schedule_steps,
    split_micro_batches,
    step_micro_batches,
)
from falcon_desktop.data.cache import fingerprint
from falcon_desktop.data.formats import chat_history, load_records
from falcon_desktop.data.questions import iter_squad_questions, read_questions, read_squad
from falcon_desktop.data.readers import BUILTIN_SOURCES, DEMO_DATA
from falcon_desktop.data.records import LoadReport, QARecord, split_by_article
from falcon_desktop.data.tokens import (
    Example,
    TokenizeReport,
    configure_tokenizer,
    encode_prompts,
    tokenize_records,
)

__all__ = [
    "BUILTIN_SOURCES",
    "DEMO_DATA",
    "IGNORE_INDEX",
    "Example",
    "LoadReport",
    "QARecord",
    "TokenizeReport",
    "chat_history",
    "collate",
    "configure_tokenizer",
    "encode_prompts",
    "fingerprint",
    "iter_squad_questions",
    "load_records",
    "padding_efficiency",
    "read_questions",
    "read_squad",
    "schedule_steps",
    "split_by_article",
    "split_micro_batches",
    "step_micro_batches",
    "tokenize_records",
]
