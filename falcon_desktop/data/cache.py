"""On-disk cache of tokenized examples, and the fingerprint of processed data for the run card.

The key covers everything the examples depend on: the records' content (so the same file, or the same hub split,
hits the cache, and an edited one misses), the tokenizer's full definition, `max_seq_len`, the prompt template and
`FORMAT`. Entries live under `paths.cache_dir()/tokenized/` as `.npz`; a corrupt entry is rebuilt.
"""

from __future__ import annotations

import hashlib
import itertools
import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from falcon_desktop import paths
from falcon_desktop.atomic import write_bytes
from falcon_desktop.console import warn
from falcon_desktop.data.records import QARecord
from falcon_desktop.data.tokens import Example, TokenizeReport
from falcon_desktop.prompts import TEMPLATE_VERSION, QAPrompt, answer_text

# Bump when tokens.py changes what it produces for the same input.
FORMAT = 1
_SAME_CONTEXT = b"\xff"  # never occurs in UTF-8 text


def key(records: Sequence[QARecord], tokenizer: Any, max_seq_len: int) -> str | None:
    """Cache key, or None for a tokenizer without a serializable fast backend (not cached)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    digest = hashlib.sha256()
    template = [QAPrompt("q", "c").render(), QAPrompt("q").render(), answer_text(None)]
    settings = [FORMAT, TEMPLATE_VERSION, template, max_seq_len, type(tokenizer).__name__, tokenizer.eos_token]
    digest.update(json.dumps(settings).encode("utf-8"))
    digest.update(backend.to_str().encode("utf-8"))
    previous_context = None
    for record in records:
        fields = (record.id, record.question, record.target(), str(record.answer_start), str(record.is_impossible))
        digest.update("\x1f".join(fields).encode("utf-8", "surrogatepass") + b"\x1e")
        # Questions of one paragraph share its context: hash it once per run of equal contexts.
        same = record.context == previous_context
        digest.update(_SAME_CONTEXT if same else record.context.encode("utf-8", "surrogatepass") + b"\x1e")
        previous_context = record.context
    return digest.hexdigest()[:40]


def _path(cache_key: str) -> Path:
    return paths.cache_dir() / "tokenized" / f"{cache_key}.npz"


def write(cache_key: str, report: TokenizeReport) -> None:
    """Store the examples; a cache that cannot be written (full disk, read-only home) is skipped with a warning."""
    import numpy as np

    path = _path(cache_key)
    lengths = report.lengths
    ids = np.fromiter(itertools.chain.from_iterable(e.input_ids for e in report.examples), np.uint32, sum(lengths))
    buffer = io.BytesIO()
    np.savez(
        buffer,
        ids=ids,
        lengths=np.asarray(lengths, dtype=np.int32),
        prompt_lens=np.asarray([e.prompt_len for e in report.examples], dtype=np.int32),
        record_ids=np.frombuffer(json.dumps([e.record_id for e in report.examples]).encode("utf-8"), np.uint8),
        counts=np.asarray([report.dropped_too_long, report.windowed], dtype=np.int64),
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, buffer.getvalue())
    except OSError as error:
        warn(f"Could not cache the tokenized data in {path.parent} ({error.strerror}); continuing without.")


def read(cache_key: str) -> TokenizeReport | None:
    import numpy as np

    path = _path(cache_key)
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            ids, lengths, prompt_lens = stored["ids"], stored["lengths"].tolist(), stored["prompt_lens"].tolist()
            record_ids = json.loads(stored["record_ids"].tobytes().decode("utf-8"))
            dropped_too_long, windowed = stored["counts"].tolist()
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):  # torn by a crash or a copy: rebuilt
        return None
    # One int object per token id, shared by every example: tuples of them cost ~8 bytes a token.
    interned = list(range(int(ids.max()) + 1 if len(ids) else 0))
    examples = []
    offset = 0
    for length, prompt_len, record_id in zip(lengths, prompt_lens, record_ids):
        examples.append(Example(tuple(map(interned.__getitem__, ids[offset : offset + length].tolist())), prompt_len, record_id))
        offset += length
    return TokenizeReport(examples, dropped_too_long=dropped_too_long, windowed=windowed, from_cache=True)


def fingerprint(examples: Sequence[Example]) -> str:
    """sha256 of the processed data (ids, prompt lengths, record ids, in order), for the run card."""
    import numpy as np

    digest = hashlib.sha256()
    for example in examples:
        header = f"{example.record_id}\x00{example.prompt_len}\x00{len(example.input_ids)}\x00"
        digest.update(header.encode("utf-8", "surrogatepass"))
        digest.update(np.asarray(example.input_ids, dtype="<u4").tobytes())
    return digest.hexdigest()
