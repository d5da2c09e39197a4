"""Reading a data source into Python objects, with one clear error for each way a file can be unreadable.

A source is a file (`.json` SQuAD document or list, `.jsonl`, `.csv`, `.parquet`), the bundled `demo` set, or a
Hugging Face `datasets` name such as `rajpurkar/squad_v2` (optionally `:split`, default `train`). What comes back
is either one nested SQuAD document or a list of flat rows, each with the location used in messages.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falcon_desktop import paths
from falcon_desktop.errors import UserError

DEMO_DATA = Path(__file__).resolve().parent.parent / "assets" / "demo-squad.json"
BUILTIN_SOURCES = {"demo": DEMO_DATA}
FILE_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".parquet")
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")
HUB_ALIASES = {"squad": "rajpurkar/squad", "squad_v2": "rajpurkar/squad_v2"}


@dataclass
class RawData:
    label: str  # how messages name the source
    document: dict[str, Any] | None = None  # a nested SQuAD document (version/data/paragraphs/qas)
    rows: list[tuple[str, Any]] = field(default_factory=list)  # (location, row) for the flat formats


def read_source(source: str | Path) -> RawData:
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        return read_file(path)
    if text in BUILTIN_SOURCES:
        return read_file(BUILTIN_SOURCES[text])
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a data file.", f"Pass one of its {'/'.join(FILE_SUFFIXES)} files.")
    if path.suffix.lower() in FILE_SUFFIXES or "\\" in text or not HUB_NAME.match(text):
        raise UserError(
            f"No such file: {path}",
            "Check the path, or name a Hugging Face dataset such as rajpurkar/squad_v2, or `demo` for the bundled set.",
        )
    return read_hub(text)


def read_file(path: Path) -> RawData:
    suffix = path.suffix.lower()
    label = str(path)
    if suffix == ".parquet":
        return RawData(label, rows=_read_parquet(path))
    text = decode(path.read_bytes(), label)
    if suffix == ".csv":
        return RawData(label, rows=_read_csv(text))
    if suffix in (".jsonl", ".ndjson"):
        return RawData(label, rows=_read_jsonl(text, label))
    if suffix == ".json" or text.lstrip().startswith(("{", "[")):
        return _read_json(text, label)
    raise UserError(
        f"{label}: unsupported file type '{suffix or '(none)'}'.",
        f"Use SQuAD JSON or one of {', '.join(FILE_SUFFIXES[1:])} with question/context/answers columns.",
    )


def read_json(path: Path, what: str) -> Any:
    """The value in a JSON file (`what` names it in messages: "SQuAD", "Predictions"), or one clear UserError."""
    label = _existing(path, what)
    try:
        return json.loads(decode(path.read_bytes(), label))
    except json.JSONDecodeError as error:
        raise _json_error(error, label) from None


def read_jsonl(path: Path, what: str) -> list[tuple[str, Any]]:
    """(location, value) for each non-blank line of a JSON Lines file, or one clear UserError naming the bad line."""
    label = _existing(path, what)
    return _read_jsonl(decode(path.read_bytes(), label), label)


def _existing(path: Path, what: str) -> str:
    if not Path(path).is_file():
        raise UserError(f"{what} file {str(path)!r} does not exist.", "Check the path.")
    return str(path)


def decode(raw: bytes, label: str) -> str:
    """UTF-8 text (a BOM is allowed); a UTF-16 or legacy 8-bit file says which encoding to convert from."""
    if not raw.strip():
        raise UserError(f"{label} is empty.", "Check that the download or export finished.")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or raw[:200].count(b"\x00") > len(raw[:200]) // 4:
        raise _wrong_encoding(label, "UTF-16", "utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        try:
            raw.decode("cp1252")
            name, codec = "Windows-1252 (cp1252)", "cp1252"
        except UnicodeDecodeError:
            name, codec = "Latin-1 (ISO-8859-1)", "latin-1"
        raise _wrong_encoding(label, name, codec, f" (byte 0x{raw[error.start]:02x} at line {line}, column {column})") from None


def _wrong_encoding(label: str, name: str, codec: str, where: str = "") -> UserError:
    return UserError(
        f"{label} is not UTF-8{where}; it looks like {name} text.",
        "Convert it to UTF-8, e.g. python -c \"import pathlib; p = pathlib.Path(r'FILE'); "
        f"p.write_text(p.read_text(encoding='{codec}'), encoding='utf-8')\"".replace("FILE", label),
    )


def _json_error(error: json.JSONDecodeError, label: str, line_offset: int = 0) -> UserError:
    line = error.lineno + line_offset
    source_line = error.doc.splitlines()[error.lineno - 1] if error.doc.strip() else ""
    start = max(0, error.colno - 40)
    excerpt = source_line[start : error.colno + 40]
    pointer = " " * (error.colno - 1 - start) + "^"
    return UserError(
        f"{label}: invalid JSON at line {line}, column {error.colno}: {error.msg}.\n    {excerpt}\n    {pointer}",
        "Fix the file there (a missing comma or quote is the usual cause); an editor's JSON check shows it too.",
    )


def _read_json(text: str, label: str) -> RawData:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        # A .json file that is really JSON Lines fails with "Extra data" at the start of its second object.
        if error.msg == "Extra data" and text.lstrip().startswith("{"):
            return RawData(label, rows=_read_jsonl(text, label))
        raise _json_error(error, label) from None
    if isinstance(document, list):
        return RawData(label, rows=[(f"item {index}", row) for index, row in enumerate(document)])
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        return RawData(label, document=document)
    keys = ", ".join(sorted(document)[:10]) if isinstance(document, dict) else type(document).__name__
    raise UserError(
        f"{label} is not a SQuAD file: a SQuAD file is an object with 'version' and a 'data' list, this has {keys}.",
        "Pass a SQuAD v1.1/v2.0 JSON file, or JSON Lines with question/context/answers (or prompt/response) fields.",
    )


def _read_jsonl(text: str, label: str) -> list[tuple[str, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as error:
            raise _json_error(error, label, line_offset=number - 1) from None
    return rows


def _read_csv(text: str) -> list[tuple[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    return [(f"line {reader.line_num}", row) for row in reader]


def _read_parquet(path: Path) -> list[tuple[str, Any]]:
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except (pyarrow.ArrowInvalid, OSError) as error:
        raise UserError(f"{path} is not a readable Parquet file ({error}).", "Re-export it, or use JSON Lines.") from None
    return [(f"row {index}", row) for index, row in enumerate(table.to_pylist())]


def read_hub(name: str) -> RawData:
    """Rows of a Hugging Face dataset, `owner/name[:split]`; the `datasets` library loads only here."""
    dataset_name, _, split = name.partition(":")
    dataset_name = HUB_ALIASES.get(dataset_name, dataset_name)
    split = split or "train"
    label = f"{dataset_name}:{split}"
    import datasets

    from falcon_desktop.console import info

    info(f"Loading {label} from the Hugging Face Hub (or its local cache)...")
    try:
        dataset = datasets.load_dataset(dataset_name, split=split)
    except (ConnectionError, OSError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if paths.hf_offline():
            hint = "HF_HUB_OFFLINE is set and the dataset is not cached: unset it once to download, or pass a local file."
        else:
            hint = "Check the name and your network connection, or download the data and pass the local file."
        raise UserError(
            f"'{name}' is not a file here, and the Hugging Face Hub could not load it as a dataset ({detail}).", hint
        ) from None
    except ValueError as error:  # datasets' message for an unknown split lists the valid ones
        raise UserError(f"Could not load '{label}': {error}", "Name a split the dataset has, e.g. NAME:validation.") from None
    return RawData(label, rows=[(f"row {index}", row) for index, row in enumerate(dataset.to_list())])
