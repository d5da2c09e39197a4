"""Reading and validating data: SQuAD JSON, flat files, chat, every bad-file message, and the held-out split."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from falcon_desktop.data import DEMO_DATA, QARecord, load_records, split_by_article
from falcon_desktop.errors import UserError

FALCON_TEXT = "The peregrine falcon dives at over 300 kilometres per hour. It nests on cliffs and tall buildings."


def qa(qid: str, question: str, answers: list[tuple[str, int]] | None = None, **extra) -> dict:
    item = {"id": qid, "question": question, "answers": [{"text": t, "answer_start": s} for t, s in answers or []]}
    item.update(extra)
    return item


def squad_file(tmp_path: Path, articles: list[tuple[str, list[tuple[str, list[dict]]]]], version: str = "v2.0") -> Path:
    data = [
        {"title": title, "paragraphs": [{"context": context, "qas": qas} for context, qas in paragraphs]}
        for title, paragraphs in articles
    ]
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": version, "data": data}, ensure_ascii=False), encoding="utf-8")
    return path


def test_squad_v2_answerable_and_unanswerable_records(tmp_path: Path) -> None:
    start = FALCON_TEXT.index("cliffs")
    path = squad_file(tmp_path, [("Falcon", [(FALCON_TEXT, [
        qa("q1", "Where does it nest?", [("cliffs", start)], is_impossible=False),
        qa("q2", "What colour are its eggs?", [], is_impossible=True, plausible_answers=[{"text": "cliffs", "answer_start": start}]),
    ])])])
    report = load_records(path)
    assert report.records == [
        QARecord("q1", "Falcon", FALCON_TEXT, "Where does it nest?", ("cliffs",), start, False),
        QARecord("q2", "Falcon", FALCON_TEXT, "What colour are its eggs?", (), None, True),
    ]
    assert report.summary() == {
        "source": str(path), "format": "squad-json v2.0", "read": 2, "records": 2, "answerable": 1,
        "unanswerable": 1, "repaired": 0, "dropped": 0, "drop_reasons": {},
    }
    assert report.records[1].target() == "unanswerable"


def test_squad_v1_questions_without_is_impossible_are_answerable(tmp_path: Path) -> None:
    path = squad_file(tmp_path, [("Falcon", [(FALCON_TEXT, [qa("q1", "How fast?", [("300", FALCON_TEXT.index("300"))])])])], "1.1")
    report = load_records(path)
    assert report.format == "squad-json 1.1"
    assert (report.answerable, report.unanswerable) == (1, 0)


def test_misaligned_spans_are_repaired_nearby_then_anywhere(tmp_path: Path) -> None:
    context = "A cat sat here. Much later in the text, well past twenty characters, another cat appeared."
    second = context.rindex("cat")
    path = squad_file(tmp_path, [("Cats", [(context, [
        qa("near", "Which animal?", [("sat", context.index("sat") + 3)]),    # off by 3: moved back
        qa("far", "Which animal later?", [("appeared", 0)]),               # 80 chars off: found elsewhere
        qa("nearest", "Which one?", [("cat", second - 2)]),                 # two occurrences: the nearer wins
        qa("exact", "Exact?", [("cat", 2)]),
    ])])])
    report = load_records(path)
    starts = {record.id: record.answer_start for record in report.records}
    assert starts == {"near": context.index("sat"), "far": context.index("appeared"), "nearest": second, "exact": 2}
    assert (report.repaired, report.dropped) == (3, 0)
    for record in report.records:
        assert context[record.answer_start :].startswith(record.answers[0])


def test_unfindable_answers_are_dropped_and_other_answers_kept(tmp_path: Path) -> None:
    path = squad_file(tmp_path, [("Falcon", [(FALCON_TEXT, [
        qa("gone", "What is missing?", [("a penguin", 4)]),
        qa("multi", "How fast?", [("a penguin", 0), ("300 kilometres", FALCON_TEXT.index("300")), ("300", 10)]),
    ])])])
    report = load_records(path)
    assert [record.id for record in report.records] == ["multi"]
    assert report.records[0].answers == ("300 kilometres", "300")
    assert report.records[0].answer_start == FALCON_TEXT.index("300")
    assert report.drop_reasons == {"answer_not_in_context": 1}
    assert report.problems == ["data[0].paragraphs[0].qas[0]: answer 'a penguin' does not occur in the context"]
    assert report.repaired == 1  # "300" at 10 was moved


def test_bad_records_are_counted_by_reason(tmp_path: Path) -> None:
    answer = [("cliffs", FALCON_TEXT.index("cliffs"))]
    path = squad_file(tmp_path, [
        ("Falcon", [(FALCON_TEXT, [
            qa("ok", "Where?", answer),
            qa("ok", "Where again?", answer),
            qa("blank", "   ", answer),
            qa("number", 42, answer),
            qa("none", "Answerable with no answer?", [], is_impossible=False),
            "not an object",
        ])]),
        ("Broken", [("", [qa("empty-context", "Where?", answer)])]),
    ])
    report = load_records(path)
    assert [record.id for record in report.records] == ["ok"]
    assert report.drop_reasons == {
        "duplicate_id": 1, "empty_question": 1, "wrong_type": 2, "answerable_without_answer": 1, "empty_context": 1,
    }
    assert (report.read, report.dropped) == (7, 6)
    assert "data[0].paragraphs[0].qas[1]: id 'ok' was already used by an earlier question" in report.problems


def test_strict_turns_any_drop_into_an_error(tmp_path: Path) -> None:
    path = squad_file(tmp_path, [("Falcon", [(FALCON_TEXT, [
        qa("ok", "Where?", [("cliffs", FALCON_TEXT.index("cliffs"))]), qa("bad", "", [("cliffs", 0)]),
    ])])])
    assert len(load_records(path).records) == 1
    with pytest.raises(UserError, match=r"1 of 2 records would be dropped \(1 empty_question\)") as raised:
        load_records(path, strict=True)
    assert "--strict" in raised.value.hint


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"version": "v2.0",\n "data": [\n  {"title": "A" "paragraphs": []}\n ]\n}\n', encoding="utf-8")
    with pytest.raises(UserError, match="invalid JSON at line 3, column 17: Expecting ','") as raised:
        load_records(path)
    assert '{"title": "A" "paragraphs": []}' in raised.value.message


def test_malformed_jsonl_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "Q", "context": "C C", "answers": ["C"]}\n\n{"question": "Q2", "context": }\n', encoding="utf-8")
    with pytest.raises(UserError, match="line 3, column 31"):
        load_records(path)


@pytest.mark.parametrize("content", [b"", b"  \n\n "])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match="is empty"):
        load_records(path)


def test_utf16_file_says_to_convert_from_utf16(tmp_path: Path) -> None:
    path = tmp_path / "utf16.json"
    path.write_text(json.dumps({"version": "v2.0", "data": []}), encoding="utf-16")
    with pytest.raises(UserError, match="is not UTF-8; it looks like UTF-16") as raised:
        load_records(path)
    assert "encoding='utf-16'" in raised.value.hint


@pytest.mark.parametrize(("raw", "named", "codec"), [
    ("café".encode("cp1252"), "Windows-1252", "cp1252"),
    (b"caf\x81", "Latin-1", "latin-1"),  # 0x81 is undefined in cp1252
])
def test_legacy_8bit_file_names_encoding_and_position(tmp_path: Path, raw: bytes, named: str, codec: str) -> None:
    path = tmp_path / "legacy.jsonl"
    path.write_bytes(b'{"question": "Q", "context": "x"}\n{"question": "' + raw + b'"}\n')
    with pytest.raises(UserError, match=rf"line 2, column 18\); it looks like {named}") as raised:
        load_records(path)
    assert f"encoding='{codec}'" in raised.value.hint


def test_utf8_bom_and_unicode_offsets(tmp_path: Path) -> None:
    context = "Café 🦅 au Japon: la ville de 東京 est grande."
    start = context.index("東京")
    path = squad_file(tmp_path, [("Ünïcode", [(context, [qa("u1", "Quelle ville ?", [("東京", start)])])])])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    record = load_records(path).records[0]
    assert (record.answer_start, record.title, record.answers) == (start, "Ünïcode", ("東京",))


def test_not_squad_json(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"name": "x", "rows": 3}', encoding="utf-8")
    with pytest.raises(UserError, match="is not a SQuAD file.*this has name, rows"):
        load_records(path)


def test_rows_with_unknown_fields(tmp_path: Path) -> None:
    path = tmp_path / "other.jsonl"
    path.write_text('{"a": 1, "b": 2}\n', encoding="utf-8")
    with pytest.raises(UserError, match="not SQuAD data: its records have the fields a, b"):
        load_records(path)


def test_zero_records_and_all_dropped(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="holds no usable question-answer records"):
        load_records(squad_file(tmp_path, []))
    path = squad_file(tmp_path, [("A", [(FALCON_TEXT, [qa("x", "", [("cliffs", 0)])])])])
    with pytest.raises(UserError, match=r"All 1 were dropped \(1 empty_question\)"):
        load_records(path)


def test_missing_file_directory_and_offline_hub_name(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="No such file"):
        load_records(tmp_path / "nope.json")
    with pytest.raises(UserError, match="is a directory"):
        load_records(tmp_path)
    # conftest sets HF_HUB_OFFLINE=1 and nothing is cached: one clear error, not a traceback or a retry loop.
    with pytest.raises(UserError, match="'squad_v2' is not a file here, and the Hugging Face Hub could not") as raised:
        load_records("squad_v2")
    assert "HF_HUB_OFFLINE" in raised.value.hint


def test_jsonl_with_datasets_style_and_list_answers(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "title": "F", "context": FALCON_TEXT, "question": "How fast?",
         "answers": {"text": ["300 kilometres"], "answer_start": [FALCON_TEXT.index("300")]}},
        {"id": "b", "title": "F", "context": FALCON_TEXT, "question": "Colour?", "answers": {"text": [], "answer_start": []}},
        {"context": FALCON_TEXT, "question": "Where?", "answers": ["tall buildings"]},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    report = load_records(path)
    assert report.format == "squad-rows"
    assert [(r.id, r.answers, r.answer_start, r.is_impossible) for r in report.records] == [
        ("a", ("300 kilometres",), FALCON_TEXT.index("300"), False),
        ("b", (), None, True),
        ("line-3", ("tall buildings",), FALCON_TEXT.index("tall buildings"), False),
    ]
    assert report.repaired == 0  # a list answer without a start is located, not repaired
    (tmp_path / "rows.json").write_text(path.read_text(encoding="utf-8"), encoding="utf-8")  # JSON Lines named .json
    assert len(load_records(tmp_path / "rows.json").records) == 3


def test_csv_with_json_and_python_literal_answers(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "context", "question", "answers", "is_impossible"])
        writer.writerow(["c1", FALCON_TEXT, "Where?", json.dumps([{"text": "cliffs", "answer_start": 1}]), "False"])
        writer.writerow(["c2", FALCON_TEXT, "Speed?", repr({"text": ["300"], "answer_start": [FALCON_TEXT.index("300")]}), ""])
        writer.writerow(["c3", FALCON_TEXT, "Colour?", "", "True"])
    report = load_records(path)
    assert [(r.id, r.answer_start, r.is_impossible) for r in report.records] == [
        ("c1", FALCON_TEXT.index("cliffs"), False), ("c2", FALCON_TEXT.index("300"), False), ("c3", None, True),
    ]
    assert report.repaired == 1


def test_parquet_rows(tmp_path: Path) -> None:
    import pyarrow
    import pyarrow.parquet

    table = pyarrow.Table.from_pylist([
        {"id": "p1", "context": FALCON_TEXT, "question": "Where?",
         "answers": {"text": ["cliffs"], "answer_start": [FALCON_TEXT.index("cliffs")]}},
    ])
    pyarrow.parquet.write_table(table, tmp_path / "rows.parquet")
    assert load_records(tmp_path / "rows.parquet").records[0].answers == ("cliffs",)
    (tmp_path / "bad.parquet").write_text("not parquet", encoding="utf-8")
    with pytest.raises(UserError, match="not a readable Parquet file"):
        load_records(tmp_path / "bad.parquet")


def test_guanaco_chat_gives_one_record_per_assistant_turn(tmp_path: Path) -> None:
    text = (
        "### Human: Hi there ### Assistant: Hello! How can I help? "
        "### Human: Name a fast bird. ### Assistant: The peregrine falcon."
    )
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"text": text}) + "\n" + json.dumps({"text": "### Human: only a question"}) + "\n", encoding="utf-8")
    report = load_records(path)
    assert report.format == "chat"
    first, second = report.records
    assert (first.context, first.question, first.answers) == ("", "Hi there", ("Hello! How can I help?",))
    assert second.context == "Human: Hi there\nAssistant: Hello! How can I help?"
    assert (second.question, second.target(), second.title) == ("Name a fast bird.", "The peregrine falcon.", "line-1")
    assert second.prompt().startswith("### Context:\nHuman: Hi there\nAssistant: Hello! How can I help?\n\n### Question:\n")
    assert report.drop_reasons == {"no_chat_turns": 1}


def test_prompt_response_rows(tmp_path: Path) -> None:
    path = tmp_path / "pr.jsonl"
    rows = [{"prompt": "Say hi", "response": "Hi!"}, {"prompt": "Empty", "response": ""}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    report = load_records(path)
    assert report.format == "prompt-response"
    record = report.records[0]
    assert (record.prompt(), record.target()) == ("### Question:\nSay hi\n\n### Answer:\n", "Hi!")
    assert report.drop_reasons == {"empty_answer": 1}


def test_bundled_demo_set_is_clean() -> None:
    report = load_records("demo")
    assert report.source == str(DEMO_DATA)
    assert (len(report.records), report.unanswerable, report.repaired, report.dropped) == (60, 12, 0, 0)
    assert len({record.title for record in report.records}) == 6
    raw = json.loads(DEMO_DATA.read_text(encoding="utf-8"))
    for article in raw["data"]:
        for paragraph in article["paragraphs"]:
            for question in paragraph["qas"]:
                for answer in question["answers"] + question.get("plausible_answers", []):
                    assert paragraph["context"][answer["answer_start"] :].startswith(answer["text"])


def _records(articles: int, paragraphs: int, questions: int, titled: bool = True) -> list[QARecord]:
    return [
        QARecord(f"{a}-{p}-{q}", f"article {a}" if titled else "", f"context {a}-{p}", f"q{q}", ("x",), 0, False)
        for a in range(articles) for p in range(paragraphs) for q in range(questions)
    ]


def test_split_by_article_keeps_articles_whole_and_is_seeded() -> None:
    records = _records(articles=20, paragraphs=3, questions=4)
    train, held_out = split_by_article(records, eval_fraction=0.1, seed=7)
    assert len(held_out) == 24 and len(train) == 216  # 2 of 20 articles of 12 questions
    assert not {r.title for r in train} & {r.title for r in held_out}
    assert not {r.context for r in train} & {r.context for r in held_out}
    assert split_by_article(records, 0.1, seed=7) == (train, held_out)
    assert {r.title for r in split_by_article(records, 0.1, seed=8)[1]} != {r.title for r in held_out}
    assert split_by_article(records, 0.0, seed=7) == (records, [])


def test_split_without_titles_uses_paragraphs() -> None:
    records = _records(articles=1, paragraphs=10, questions=2, titled=False)
    train, held_out = split_by_article(records, eval_fraction=0.2, seed=0)
    assert len(held_out) == 4
    assert not {r.context for r in train} & {r.context for r in held_out}
    with pytest.raises(UserError, match="at least 0 and below 1"):
        split_by_article(records, 1.0, seed=0)
