"""The interactive loop of `falcon-desktop ask`: a passage, questions, streamed answers, adapters, settings.

Line editing and history come from `readline` where Python has it (Linux, macOS); the Windows console gives
`input()` the same (arrow keys, F7 for history) by itself, so no extra package is needed there. Ctrl-C while an
answer streams stops that answer; at the prompt it only prints a reminder; Ctrl-D (Ctrl-Z Enter on Windows),
/exit or /quit leave.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from falcon_desktop.ask import CLOSED_BOOK_NOTE, UNANSWERABLE_NOTE, Answerer
from falcon_desktop.console import symbol
from falcon_desktop.decoding import GenerationSettings, update_settings
from falcon_desktop.errors import UserError, explain
from falcon_desktop.generate import GenerationResult
from falcon_desktop.paths import home
from falcon_desktop.prompts import ABSTAIN, is_abstention
from falcon_desktop.runs import list_runs, runs_table

PROMPT = "> "
PASTE_PROMPT = "... "
HISTORY_FILE = "ask_history.txt"

COMMANDS = (
    ("/context", "paste a passage; an empty line ends it"),
    ("/context FILE", "use a text file (.txt, .md) as the passage"),
    ("/clear", "forget the passage; questions are then asked closed-book"),
    ("/show", "show the passage, the model, the adapter and the settings"),
    ("/adapter NAME", "switch to a trained adapter (run name or path) without reloading the base; "
                      "`/adapter none` uses the base alone"),
    ("/adapters", "list the trained runs"),
    ("/settings [key=value ...]", "show or change generation settings: "
                                  + ", ".join(GenerationSettings.names())),
    ("/help", "this list"),
    ("/exit, /quit, Ctrl-D", "leave"),
)
KEYS_HELP = (
    "Anything else is a question about the passage. Ctrl-C stops an answer in progress. "
    "Arrow keys edit the line and walk the history (readline on Linux and macOS; the Windows console does it itself)."
)


class _AnswerPrinter:
    """Streams answer text, holding it back while it may still be the abstention marker."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self.held = ""
        self.streaming = False

    def __call__(self, piece: str) -> None:
        if not self.streaming:
            self.held += piece
            if (ABSTAIN + ".").startswith(self.held.strip().lower()):
                return
            piece, self.held, self.streaming = self.held, "", True
        self.write(piece)

    def finish(self, result: GenerationResult) -> None:
        if not self.streaming:
            if is_abstention(result.text):
                self.write(UNANSWERABLE_NOTE)
            else:
                self.write(self.held or "(empty answer)")
        self.write("\n")


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _enable_history() -> Callable[[], None]:
    """Line editing and a persistent history through readline where available; returns the saver."""
    try:
        import readline
    except ImportError:  # Windows: the console's own line editing and history serve input()
        return lambda: None
    path = home() / HISTORY_FILE
    try:
        readline.read_history_file(str(path))
    except (OSError, ValueError):
        pass
    readline.set_history_length(1000)

    def save() -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(str(path))
        except OSError:
            pass

    return save


class Repl:
    def __init__(self, answerer: Answerer, console: Console | None = None,
                 read_line: Callable[[str], str] = input, context: str | None = None) -> None:
        self.answerer = answerer
        self.console = console or Console(highlight=False, soft_wrap=True)  # the terminal wraps long lines itself
        self.read_line = read_line
        self.context = context
        self.dot = symbol(" · ", " - ")

    # ---------------------------------------------------------------------------------------------------- loop
    def run(self) -> int:
        save_history = _enable_history()
        self.console.print(f"[bold]falcon-desktop ask[/bold]{self.dot}{escape(self.answerer.description)}", markup=True)
        context = f"{len(self.context):,} characters" if self.context else "none (closed-book)"
        self.console.print(f"adapter: {self.answerer.active_label}{self.dot}context: {context}{self.dot}/help for commands")
        try:
            while True:
                try:
                    line = self.read_line(PROMPT)
                except KeyboardInterrupt:
                    self.console.print("\n(Ctrl-D, /exit or /quit to leave)")
                    continue
                except EOFError:
                    self.console.print()
                    return 0
                try:
                    if not self.handle(line.strip()):
                        return 0
                except KeyboardInterrupt:  # outside the generation loop (e.g. while a passage loads)
                    self.console.print("\n(stopped)")
        finally:
            save_history()

    def handle(self, line: str) -> bool:
        """Run one input line; False when the user leaves."""
        if not line:
            return True
        command, _, argument = line.partition(" ") if line.startswith("/") else ("", "", "")
        if command in ("/exit", "/quit"):
            return False
        handler = self._commands().get(command) if command else self._question
        if handler is None:
            self.console.print(f"Unknown command {command!r}; /help lists the commands.", markup=False)
            return True
        try:
            handler(argument.strip() if command else line)
        except Exception as error:  # noqa: BLE001 - a bad command must not end the session
            self._report(error)
        return True

    def _report(self, error: Exception) -> None:
        user_error = explain(error)
        if user_error is None or os.environ.get("FALCON_DESKTOP_DEBUG") == "1":
            raise error
        self.console.print(f"[bold red]Error:[/bold red] {escape(user_error.message)}", markup=True)
        if user_error.hint:
            self.console.print(f"[bold]Hint:[/bold] {escape(user_error.hint)}", markup=True)

    def _commands(self) -> dict[str, Callable[[str], None]]:
        return {
            "/context": self._set_context, "/clear": self._clear, "/show": self._show, "/adapter": self._adapter,
            "/adapters": self._adapters, "/settings": self._settings, "/help": self._help,
        }

    # ------------------------------------------------------------------------------------------------ commands
    def _question(self, question: str) -> None:
        if self.context is None:
            self.console.print(f"[dim]({CLOSED_BOOK_NOTE}; /context sets a passage)[/dim]", markup=True)
        printer = _AnswerPrinter(_write_stdout)
        result = self.answerer.ask(question, self.context, printer)
        printer.finish(result)
        self.console.print(f"[dim]{self._stats(result)}[/dim]", markup=True, highlight=False)

    def _stats(self, result: GenerationResult) -> str:
        parts = [f"{result.new_tokens} tokens", f"first token {result.first_token_seconds * 1000:.0f} ms"]
        if result.tokens_per_second is not None:
            parts.append(f"{result.tokens_per_second:.1f} tokens/s")
        parts.append(f"adapter {self.answerer.active_label}")
        prefix = {"interrupted": "stopped (Ctrl-C)", "max_new_tokens": "cut at max_new_tokens"}.get(result.stop_reason)
        return self.dot.join(([prefix] if prefix else []) + parts)

    def _set_context(self, argument: str) -> None:
        text = self._read_context_file(Path(argument).expanduser()) if argument else self._paste()
        if text is None:
            return
        if not text.strip():
            self.console.print("The passage is empty; the context is unchanged.")
            return
        self.context = text.strip()
        tokens = self.answerer.count_tokens(self.context)
        self.console.print(f"Context set: {len(self.context):,} characters, {tokens:,} tokens.")

    def _read_context_file(self, path: Path) -> str:
        if not path.is_file():
            raise UserError(f"No file {str(path)!r}.", "Give a text file's path, or type /context alone to paste.")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{str(path)!r} is not UTF-8 text.", "Save it as UTF-8 text (.txt or .md).") from None

    def _paste(self) -> str | None:
        self.console.print("Paste the passage, then an empty line:")
        lines: list[str] = []
        while True:
            try:
                line = self.read_line(PASTE_PROMPT)
            except KeyboardInterrupt:
                self.console.print("\nCancelled; the context is unchanged.")
                return None
            except EOFError:
                break
            if not line.strip():
                break
            lines.append(line)
        return "\n".join(lines)

    def _clear(self, _: str) -> None:
        self.context = None
        self.console.print("Context cleared; questions are asked closed-book.")

    def _show(self, _: str) -> None:
        if self.context is None:
            self.console.print("Context: none (closed-book).")
        else:
            self.console.print(f"Context ({len(self.context):,} characters):")
            self.console.print(self.context, markup=False)
        self.console.print(f"Model: {self.answerer.description}", markup=False)
        self.console.print(f"Adapter: {self.answerer.active_label}", markup=False)
        self._settings("")

    def _adapter(self, argument: str) -> None:
        if not argument:
            self.console.print(f"Adapter: {self.answerer.active_label}", markup=False)
            return
        if argument.lower() in ("none", "base", "off"):
            self.answerer.use_base()
        else:
            self.answerer.use_adapter(argument)
        self.console.print(f"Adapter: {self.answerer.active_label}", markup=False)

    def _adapters(self, _: str) -> None:
        runs = list_runs()
        if not runs:
            self.console.print("No trained runs yet; `/adapter PATH` takes an adapter directory too.")
            return
        in_use = self.answerer.adapters.get(self.answerer.active) if self.answerer.active else None
        self.console.print(runs_table(runs, adapter_in_use=in_use))

    def _settings(self, argument: str) -> None:
        if argument:
            self.answerer.settings = update_settings(self.answerer.settings, argument.split())
        settings = self.answerer.settings
        shown = ", ".join(f"{name}={getattr(settings, name)}" for name in GenerationSettings.names())
        self.console.print(f"Settings: {shown}", markup=False)

    def _help(self, _: str) -> None:
        table = Table(show_header=False, box=None, padding=(0, 2))
        for usage, description in COMMANDS:
            table.add_row(usage, description)
        self.console.print(table)
        self.console.print(KEYS_HELP)
