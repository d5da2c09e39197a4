"""`falcon-desktop ask` on the tiny random Falcon: mechanics only (its answers are noise, never checked for quality).

The REPL is driven twice: as a real terminal program under a pseudo-terminal (typed input, Ctrl-C as the byte
\\x03 so the kernel delivers SIGINT, the screen read back), and in-process with scripted input for an exact
transcript that also runs on Windows.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
from fake_runs import copy_runs, make_adapter_run
from rich.console import Console

from falcon_desktop.ask import UNANSWERABLE_NOTE, AskOptions, load_answerer
from falcon_desktop.cli import main
from falcon_desktop.decoding import GenerationSettings
from falcon_desktop.fast_decode import StreamingDecoder
from falcon_desktop.generate import GenerationResult, encode_prompt, generate_batch, stream_answer
from falcon_desktop.repl import Repl, _AnswerPrinter

PASSAGE = "The peregrine falcon is a bird of prey."
QUESTION = "What is the falcon?"


@pytest.fixture(scope="session")
def adapter_runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("run-a", 1), ("run-b", 2)):
        make_adapter_run(root / name, tiny_model_dir, seed)
    return root


@pytest.fixture
def runs(adapter_runs: Path, isolated_home: Path) -> Path:
    return copy_runs(adapter_runs, isolated_home / "runs")


@pytest.fixture(scope="module")
def answerer(adapter_runs: Path):
    return load_answerer(AskOptions(adapter=str(adapter_runs / "run-a"), device="cpu",
                                    settings=GenerationSettings(max_new_tokens=12)))


# ------------------------------------------------------------------------------------------ generation mechanics
def test_left_padded_batch_equals_one_by_one(answerer):
    prompts = [encode_prompt(answerer.tokenizer, q, c) for q, c in
               [(QUESTION, PASSAGE), ("Where?", None), ("How fast does it dive, and why?", PASSAGE + " It dives fast.")]]
    assert len({len(p) for p in prompts}) == 3  # really padded
    settings = GenerationSettings(max_new_tokens=8)
    batched = generate_batch(answerer.model, answerer.tokenizer, prompts, settings)
    singles = [generate_batch(answerer.model, answerer.tokenizer, [p], settings)[0] for p in prompts]
    assert batched == singles
    assert any(batched)


def test_streamed_pieces_add_up_to_the_answer_and_are_timed(answerer):
    pieces: list[str] = []
    prompt = encode_prompt(answerer.tokenizer, QUESTION, PASSAGE)
    decoder = StreamingDecoder(answerer.model)
    result = stream_answer(decoder, answerer.tokenizer, prompt, GenerationSettings(max_new_tokens=12), pieces.append)
    assert "".join(pieces) == result.text
    assert 1 <= result.new_tokens <= 12
    assert 0 < result.first_token_seconds <= result.total_seconds
    assert result.stop_reason in ("eos", "stop_string", "max_new_tokens")


def test_adapter_switch_keeps_the_base_and_changes_answers(answerer, adapter_runs):
    base_model = answerer.model.get_base_model()
    first = answerer.ask(QUESTION, PASSAGE).text
    answerer.use_adapter(adapter_runs / "run-b")
    second = answerer.ask(QUESTION, PASSAGE).text
    answerer.use_base()
    plain = answerer.ask(QUESTION, PASSAGE).text
    answerer.use_adapter(adapter_runs / "run-a")
    again = answerer.ask(QUESTION, PASSAGE).text
    assert answerer.model.get_base_model() is base_model
    assert sorted(answerer.adapters) == ["run_a", "run_b"]
    assert first == again
    assert len({first, second, plain}) == 3, (first, second, plain)


def test_prompt_longer_than_the_model_is_cut_from_the_context_end(answerer):
    long_context = " ".join(["The falcon dives."] * 400)
    ids = encode_prompt(answerer.tokenizer, QUESTION, long_context, max_prompt_tokens=100)
    assert len(ids) <= 100
    assert answerer.tokenizer.decode(ids).endswith(f"### Question:\n{QUESTION}\n\n### Answer:\n")


def test_passage_too_long_for_the_model_is_cut_with_a_warning(answerer, capsys):
    passage = " ".join(["The falcon dives."] * 800)  # ~3,200 tokens; the tiny model reads 2,048 positions
    result = answerer.ask(QUESTION, passage)
    assert "only the beginning of the passage is used" in capsys.readouterr().err
    assert result.new_tokens >= 1


def test_abstention_is_shown_as_a_note_not_a_span():
    written: list[str] = []
    printer = _AnswerPrinter(written.append)
    for piece in ("un", "answer", "able"):
        printer(piece)
    assert written == []  # held back while it may still be the abstention marker
    printer.finish(GenerationResult("unanswerable", 4, 0.1, 0.2, "eos"))
    assert "".join(written) == UNANSWERABLE_NOTE + "\n"
    written.clear()
    printer = _AnswerPrinter(written.append)
    printer("un")
    printer("der the sea")
    printer.finish(GenerationResult("under the sea", 4, 0.1, 0.2, "eos"))
    assert "".join(written) == "under the sea\n"


# ------------------------------------------------------------------------------------------- REPL, in-process
class _Script:
    """Typed lines for `input()`: echoes them like a terminal; KeyboardInterrupt entries raise; the end is Ctrl-D."""

    def __init__(self, lines: list) -> None:
        self.lines = list(lines)

    def __call__(self, prompt: str) -> str:
        if not self.lines:
            raise EOFError
        line = self.lines.pop(0)
        if line is KeyboardInterrupt:
            raise KeyboardInterrupt
        sys.stdout.write(prompt + line + "\n")
        return line


def test_repl_transcript(answerer, adapter_runs, runs, tmp_path, capsys):
    passage_file = tmp_path / "passage.md"
    passage_file.write_text("The falcon hunts birds.\n", encoding="utf-8")
    answerer.use_adapter(adapter_runs / "run-a")
    answerer.settings = GenerationSettings(max_new_tokens=6)
    script = _Script([
        "/context", "The peregrine falcon", "is a bird of prey.", "",
        QUESTION,
        "/settings temperature=hot", "/settings sampling=on seed=3 top_k=5",
        f"/context {tmp_path / 'missing.txt'}", f"/context {passage_file}",
        "/adapter nope", "/foo", KeyboardInterrupt, "/clear", "Who?", "/help",
    ])
    repl = Repl(answerer, Console(file=sys.stdout, width=200, color_system=None, highlight=False), script)
    assert repl.run() == 0
    screen = capsys.readouterr().out
    lines = screen.splitlines()
    assert lines[1] == "adapter: run-a · context: none (closed-book) · /help for commands"
    assert "> /context\nPaste the passage, then an empty line:\n... The peregrine falcon\n... is a bird of prey.\n... \n" in screen
    assert "Context set: 39 characters, " in screen
    stats = [line for line in lines if "first token" in line]
    assert len(stats) == 2 and all(line.endswith("adapter run-a") for line in stats)
    assert "Error: Bad value for temperature: 'hot'." in screen
    assert "Settings: max_new_tokens=6, sampling=True, temperature=0.7, top_p=0.9, top_k=5, " in screen
    assert f"Error: No file '{tmp_path / 'missing.txt'}'." in screen
    assert "Context set: 23 characters" in screen
    assert "Error: No run or adapter directory named 'nope'.\nHint: Runs with an adapter under" in screen
    assert "Unknown command '/foo'; /help lists the commands." in screen
    assert "(Ctrl-D, /exit or /quit to leave)" in screen
    assert "> Who?\n(no context set: the question is asked closed-book; /context sets a passage)\n" in screen
    assert "/adapter NAME" in screen and "Ctrl-C stops an answer in progress" in screen
    assert answerer.settings.sampling and answerer.settings.top_k == 5


# --------------------------------------------------------------------------------- REPL, in a real terminal
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Za-z0-9]|\r")


class Terminal:
    """A child process on a pseudo-terminal: what a person sees and types, Ctrl-C included."""

    def __init__(self, argv: list[str], env: dict, cwd: Path) -> None:
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its controlling terminal, so \x03 becomes SIGINT
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        self.raw = b""
        self.cursor = 0

    @property
    def screen(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", "replace"))

    def _read(self, timeout: float) -> bool:
        import select

        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        self.raw += chunk
        return bool(chunk)

    def expect(self, pattern: str, timeout: float = 30) -> re.Match:
        """Wait for `pattern` after the previous match; the screen read so far is searched too."""
        deadline = time.monotonic() + timeout
        while not (match := re.compile(pattern).search(self.screen, self.cursor)):
            if time.monotonic() > deadline or not self._read(min(0.2, max(0.0, deadline - time.monotonic()))):
                raise AssertionError(f"{pattern!r} did not appear; the screen ends with:\n{self.screen[-2500:]}")
        self.cursor = match.end()
        return match

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode("utf-8"))

    def wait_exit(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            self._read(0.2)
        os.kill(self.pid, 9)
        raise AssertionError(f"the REPL did not exit; the screen ends with:\n{self.screen[-2500:]}")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX; the in-process transcript covers Windows")
def test_repl_in_a_pseudo_terminal(runs, tmp_path):
    env = dict(os.environ, TERM="xterm", PYTHONWARNINGS="ignore")
    term = Terminal([sys.executable, "-m", "falcon_desktop", "ask", "--adapter", "run-a", "--max-new-tokens", "8"],
                    env, tmp_path)
    term.expect(r"adapter: run-a . context: none \(closed-book\) . /help for commands", timeout=180)

    term.type("/context\n")
    term.expect("an empty line")
    term.type(PASSAGE + "\n\n")
    term.expect(rf"Context set: {len(PASSAGE)} characters, \d+ tokens\.")

    term.type(QUESTION + "\n")
    term.expect(r"\d+ tokens . first token \d+ ms.* . adapter run-a\n")

    term.type("/adapter run-b\n")
    term.expect(r"Adapter: run-b\n")
    term.type("/adapters\n")
    term.expect(r"\* run-b ")

    # The base model alone, greedy with a repetition penalty, writes on without EOS for a long time on this tiny
    # model: time enough to interrupt it once its first words are on screen.
    term.type("/adapter none\n")
    term.expect(r"Adapter: none \(base model\)")
    term.type("/settings max_new_tokens=1900 repetition_penalty=1.5\n")
    term.expect(r"Settings: .*repetition_penalty=1\.5")
    term.type("Tell me about the falcon.\n")
    term.expect(r"> Tell me about the falcon\.\n\S{3}", timeout=60)
    term.type("\x03")
    term.expect(r"stopped \(Ctrl-C\) . \d+ tokens .* adapter none \(base model\)")

    term.type("/clear\n")
    term.expect("Context cleared")
    term.type("/settings max_new_tokens=3\n")
    term.expect(r"Settings: max_new_tokens=3")
    term.type("Who?\n")
    term.expect(r"no context set.*\n(.*\n)?.*first token.*\n> ")
    # CPython's readline notices a SIGINT that lands just before it waits for a key only at the next key: give
    # the prompt a moment to settle, as a person would.
    time.sleep(0.5)
    term.type("\x03")
    term.expect(r"Ctrl-D, /exit or /quit to leave")
    term.type("/exit\n")
    assert term.wait_exit() == 0


# ----------------------------------------------------------------------------------------- one question, files
def test_question_prints_only_the_answer(runs, tmp_path, capsys):
    context = tmp_path / "passage.txt"
    context.write_text(PASSAGE, encoding="utf-8")
    code = main(["ask", "--adapter", "run-a", "--question", QUESTION, "--context-file", str(context),
                 "--max-new-tokens", "6", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.count("\n") == 1 and captured.out.strip()
    assert "no context set" not in captured.err

    assert main(["ask", "--adapter", "run-a", "--question", "Who?", "--max-new-tokens", "3"]) == 0
    assert "no context set" in capsys.readouterr().err

    assert main(["ask", "--adapter", "run-a", "--question", QUESTION, "--context-file", str(context),
                 "--max-new-tokens", "6", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["answerable"] is True and payload["answer"] == captured.out.strip()


def _squad_file(path: Path) -> Path:
    qas = [
        {"id": "q1", "question": QUESTION, "answers": [{"text": "a bird of prey", "answer_start": 24}]},
        {"id": "q2", "question": "Where is it from?", "answers": []},
        {"id": "q3", "question": "Is it fast?", "answers": [{"text": "fast", "answer_start": 0}]},
    ]
    squad = {"version": "v2.0", "data": [{"title": "Falcon", "paragraphs": [{"context": PASSAGE, "qas": qas}]}]}
    path.write_text(json.dumps(squad), encoding="utf-8")
    return path


def test_batch_squad_round_trip_into_eval(runs, tmp_path, capsys):
    squad = _squad_file(tmp_path / "dev.json")
    predictions = tmp_path / "out" / "preds.json"
    assert main(["ask", "--adapter", "run-a", "--data", str(squad), "--output", str(predictions),
                 "--max-new-tokens", "5", "--answer-batch", "2"]) == 0
    written = json.loads(predictions.read_text(encoding="utf-8"))
    assert sorted(written) == ["q1", "q2", "q3"] and all(isinstance(v, str) for v in written.values())
    capsys.readouterr()
    assert main(["eval", "--data", str(squad), "--predictions", str(predictions), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
                           "NoAns_exact", "NoAns_f1", "NoAns_total"}
    assert (scores["total"], scores["HasAns_total"], scores["NoAns_total"]) == (3, 2, 1)


def test_batch_jsonl_and_eval_with_adapter(runs, tmp_path, capsys):
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"id": "a", "question": QUESTION, "context": PASSAGE}) + "\n\n"
                         + json.dumps({"question": "Who?"}) + "\n", encoding="utf-8")
    answers = tmp_path / "answers.jsonl"
    assert main(["ask", "--adapter", "run-b", "--data", str(questions), "--output", str(answers),
                 "--max-new-tokens", "4"]) == 0
    rows = [json.loads(line) for line in answers.read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["context_set"]) for r in rows] == [("a", True), ("line-3", False)]
    assert all(set(r) == {"id", "question", "answer", "unanswerable", "context_set"} for r in rows)

    squad = _squad_file(tmp_path / "dev.json")
    saved = tmp_path / "saved.json"
    capsys.readouterr()
    assert main(["eval", "--adapter", "run-b", "--data", str(squad), "--limit", "2", "--max-new-tokens", "4",
                 "--save-predictions", str(saved), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["total"] == 2 and sorted(json.loads(saved.read_text(encoding="utf-8"))) == ["q1", "q2"]


@pytest.mark.parametrize("argv, message", [
    (["--question", "x", "--data", "q.jsonl", "--output", "a.jsonl"], "--question and --data are alternatives"),
    (["--data", "q.jsonl"], "--data and --output go together"),
    (["--data", "missing.jsonl", "--output", "a.jsonl"], "Input file 'missing.jsonl' does not exist"),
    (["--data", "q.jsonl", "--output", "a.csv"], "Cannot write answers to 'a.csv'"),
    (["--question", "x", "--temperature", "0", "--sampling"], "temperature must be above 0"),
    (["--adapter", "nope", "--question", "x"], "No run or adapter directory named 'nope'"),
    (["--question", "x"], "No base model to load"),
])
def test_bad_arguments_are_user_errors(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "q.jsonl").write_text('{"question": "x"}\n', encoding="utf-8")
    assert main(["ask", *argv]) == 1
    assert message in capsys.readouterr().err


def test_bad_question_line_names_its_line(tmp_path):
    from falcon_desktop.data.questions import read_questions
    from falcon_desktop.errors import UserError

    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "fine"}\n{"id": 3}\n', encoding="utf-8")
    with pytest.raises(UserError, match="line 2 has no 'question' text"):
        read_questions(path)
    assert [q.id for q in read_questions(_squad_file(tmp_path / "dev.json"))] == ["q1", "q2", "q3"]


@pytest.mark.parametrize("text, as_json, code, out, err", [
    ("a bird of prey", False, 0, "a bird of prey\n", ""),
    ("unanswerable", False, 3, "", UNANSWERABLE_NOTE),
    ("unanswerable", True, 3, '"answerable": false', ""),
    ("a bird of prey", True, 0, '"answer": "a bird of prey"', ""),
])
def test_one_answer_tells_an_abstention_apart(text, as_json, code, out, err, capsys):
    from falcon_desktop.cli.ask import report_answer

    assert report_answer(QUESTION, GenerationResult(text, 4, 0.1, 0.2, "eos"), as_json) == code
    captured = capsys.readouterr()
    assert out in captured.out and err in captured.err
    if as_json:
        payload = json.loads(captured.out)
        assert payload["answerable"] == (code == 0) and payload["answer"] == ("" if code else text)
    elif code:
        assert captured.out == ""
