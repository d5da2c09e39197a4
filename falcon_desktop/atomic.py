"""Writing files so that a crash, a full disk or a power cut between any two writes leaves the old or the new file,
never a half-written one.

Every file the tool writes goes through here: a file is written under a temporary name in the same folder, flushed,
fsynced, and renamed over the target (a rename within one folder is atomic on POSIX and on NTFS); the folder is
fsynced too, so the rename itself survives a power cut. A directory (a checkpoint, an adapter) is written the same
way as a whole. An append-only log is appended a line at a time, each fsynced or all at once when its owner says
(metrics.jsonl: with each checkpoint), and read back tolerating a torn last line.
A failed write removes its temporary and raises; `errors.explain` turns the OSError into one "Error:" line.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def _temporary_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def fsync_directory(directory: Path) -> None:
    """Make a rename inside `directory` durable (POSIX; Windows has no directory handles to sync)."""
    if os.name != "posix":
        return
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def sync_file(path: Path) -> None:
    """Make what was written to `path` durable."""
    # Opened for writing: Windows' fsync (FlushFileBuffers) fails with EBADF on a read-only handle.
    with open(path, "r+b") as handle:
        os.fsync(handle.fileno())


def write_file(path: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` to write the file under a temporary name, fsync it, then rename it over `path`; on failure
    remove the temporary. For writers that need a path of their own (a GGUF writer); `write_bytes` otherwise."""
    path = Path(path)
    tmp = _temporary_name(path)
    try:
        write(tmp)
        sync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` by `data` atomically and durably."""
    write_file(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def _fsync_tree(directory: Path) -> None:
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        sync_file(file)
    fsync_directory(directory)


def write_directory(target: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp_dir)`, fsync what it wrote, then swap tmp_dir in for `target`; on failure remove tmp_dir.

    The previous `target` is moved aside before the swap and removed only after it, so at every moment one complete
    version exists under `target` or `.target.old`.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    old = target.with_name(f".{target.name}.old")
    _restore_moved_aside(target, old)  # a crash between the two renames of an earlier write
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        _fsync_tree(tmp)
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_directory(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _restore_moved_aside(target, old)
        shutil.rmtree(old, ignore_errors=True)


def publish_directory(target: Path, write: Callable[[Path], None]) -> None:
    """Write a directory that never changes once there (a cache entry), safe against other processes doing the same.

    Each writer stages its own copy (`write(staging)`, named by its process id) and renames it into place; the first
    rename wins and a later one finds `target` present and keeps it. `write_directory`'s single staging name would
    let two processes (e.g. two trainings started at once on one GGUF file) delete each other's half-written copy.
    """
    target = Path(target)
    staging = _temporary_name(target)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write(staging)
        _fsync_tree(staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():  # not another writer's copy: a real failure
                raise
        fsync_directory(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _restore_moved_aside(target: Path, old: Path) -> None:
    if old.exists() and not target.exists():
        os.replace(old, target)


def append_line(path: Path, line: str, sync: bool = True) -> None:
    """Append one line, durably unless `sync` is False (then it survives the process, not a power cut, until
    `sync_file`). A torn last line (a crash mid-append) is cut off first, so it cannot glue onto this one;
    `read_json_lines` skips it in the meantime."""
    path = Path(path)
    with open(path, "a+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                handle.truncate(_last_newline_end(handle, size))
                handle.seek(0, os.SEEK_END)
        handle.write(line.rstrip("\n").encode("utf-8") + b"\n")
        handle.flush()
        if sync:
            os.fsync(handle.fileno())


def _last_newline_end(handle, size: int) -> int:
    handle.seek(0)
    data = handle.read(size)
    return data.rfind(b"\n") + 1


def read_json_lines(path: Path) -> list[dict]:
    """The complete JSON objects of a JSON-lines file; a torn or garbled line (a crash mid-write) is skipped."""
    path = Path(path)
    return parse_json_lines(path.read_bytes()) if path.exists() else []


def parse_json_lines(data: bytes) -> list[dict]:
    """The JSON objects among the lines of `data`; a torn or garbled line is skipped."""
    records = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def refuse_existing(path: Path, overwrite: bool) -> None:
    """No command replaces an --output it did not create unless told to; an empty folder counts as free."""
    from falcon_desktop.errors import UserError

    taken = path.exists() and (not path.is_dir() or any(path.iterdir()))
    if taken and not overwrite:
        what = "already exists and is not empty" if path.is_dir() else "already exists"
        raise UserError(f"--output {path} {what}.", "Choose another --output, or pass --overwrite to replace it.")
