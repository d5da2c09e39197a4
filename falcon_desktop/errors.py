"""User-facing errors: one message naming the problem, one hint naming the fix.

Every failure a user can cause (bad file, bad flag, a model that does not fit) is raised as `UserError`; the CLI
prints it as "Error:" and "Hint:" lines on stderr and exits 1. Known exceptions from the libraries underneath are
translated by `explain`, by class name, so that this module never imports torch.
"""

from __future__ import annotations

import errno


class UserError(Exception):
    """A problem the user can fix; `hint` says how."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


# Class name -> (message, hint). Matched along the exception's MRO, so subclasses are covered.
_KNOWN: dict[str, tuple[str, str]] = {
    "OutOfMemoryError": (
        "CUDA ran out of memory.",
        "Run `falcon-desktop plan` for settings that fit, or pass a smaller --micro-batch / --seq-len.",
    ),
    "OfflineModeIsEnabled": (
        "Hugging Face offline mode is on (HF_HUB_OFFLINE=1) and the file is not in the local cache.",
        "Unset HF_HUB_OFFLINE to download it, or pass a local directory.",
    ),
    "GatedRepoError": (
        "This model is gated on the Hugging Face Hub.",
        "Accept its licence on the model page, then run `hf auth login`.",
    ),
    "RepositoryNotFoundError": (
        "No such repository on the Hugging Face Hub.",
        "Check the model id, or pass a local directory holding config.json.",
    ),
    "UnicodeEncodeError": (
        "The terminal cannot print some characters.",
        "Set PYTHONIOENCODING=utf-8 (on Windows also `chcp 65001`).",
    ),
}


# errno -> hint, for the file-system failures a user's machine produces (every write goes through atomic.py, so the
# previous version of the file is intact when one of these surfaces).
_DISK_ERRORS: dict[int, str] = {
    errno.ENOSPC: "Free disk space there (or write elsewhere), then run the command again.",
    errno.EDQUOT: "Free space within your disk quota, then run the command again.",
    errno.EROFS: "That file system is read-only: choose a writable folder.",
    errno.EACCES: "You lack permission there: choose a folder you own, or fix its permissions.",
    errno.EPERM: "You lack permission there: choose a folder you own, or fix its permissions.",
    errno.EIO: "The disk reported an I/O error: check it, then run the command again.",
}


def explain_disk_error(error: OSError, hint: str = "") -> UserError | None:
    """One line for a full, read-only or forbidden file system; None for other OSErrors."""
    if error.errno not in _DISK_ERRORS:
        return None
    where = f" {error.filename}" if error.filename else ""
    reason = error.strerror or errno.errorcode.get(error.errno, "disk error")
    return UserError(f"Could not write or read{where}: {reason}.", " ".join(filter(None, [_DISK_ERRORS[error.errno], hint])))


# (exception class name, words in its message) -> (message, hint): library errors recognisable only by their text.
_KNOWN_MESSAGES: tuple[tuple[str, str, str, str], ...] = (
    ("OSError", "couldn't find them in the cached files",
     "The model is not in the local Hugging Face cache and the Hub cannot be reached.",
     "Connect to the internet once to download it (or unset HF_HUB_OFFLINE), or pass --model DIR of a local copy."),
    ("OSError", "does not appear to have a file named",
     "The model folder lacks files a model needs (weights or config).",
     "Pass a folder holding config.json, the weights (*.safetensors) and the tokenizer files."),
    ("RuntimeError", "device type at start of device string",
     "Unknown device.", "Use --device auto, cpu, cuda or cuda:N."),
    ("SafetensorError", "",
     "A .safetensors file is damaged or truncated.",
     "Copy it again, or retrain; a run's checkpoints/ keeps the last two states."),
)


def _explain_by_message(error: BaseException) -> UserError | None:
    names = {cls.__name__ for cls in type(error).__mro__}
    text = str(error)
    for class_name, words, message, hint in _KNOWN_MESSAGES:
        if class_name in names and words in text:
            return UserError(f"{message} ({first_line(error)[:200]})", hint)
    return None


def explain(error: BaseException) -> UserError | None:
    """A `UserError` for a known library exception, or None for a bug that should surface as a traceback."""
    if isinstance(error, UserError):
        return error
    if isinstance(error, OSError) and (disk := explain_disk_error(error)) is not None:
        return disk
    if (known := _explain_by_message(error)) is not None:
        return known
    for cls in type(error).__mro__:
        if cls.__name__ in _KNOWN:
            message, hint = _KNOWN[cls.__name__]
            detail = first_line(error) if str(error).strip() else ""
            return UserError(f"{message} ({detail})" if detail else message, hint)
    return None


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (library errors often append pages of context)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
