"""`falcon-desktop ask`: ask a fine-tuned model questions about a passage, interactively or from files.

Loads the base model in 4-bit (as QLoRA trained it) with a trained adapter, then, by default, opens a prompt:
/context pastes a passage, anything else is a question, answers stream with time to first token and tokens/s.
/help lists the commands (/adapter switches adapters without reloading the base). With --question it prints one
answer and exits; with --data/--output it answers a whole file. A question without a passage is asked
closed-book.

With --question, stdout holds only the answer. When the model abstains (the passage does not answer the
question) stdout stays empty, stderr says so, and the exit code is 3; --json prints {"question", "answer",
"answerable", "stop_reason"} instead, with "answerable": false and "answer": "" for an abstention.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  falcon-desktop ask --adapter demo
  falcon-desktop ask --adapter demo --question "Where does the falcon not live?" --context-file passage.txt
  falcon-desktop ask --adapter demo --question "Who?" --context-file passage.txt --json
  falcon-desktop ask --adapter my-run --data dev-v2.0.json --output predictions.json
  falcon-desktop ask --adapter my-run --data questions.jsonl --output answers.jsonl --answer-batch 16
  falcon-desktop ask --model tiiuae/falcon-7b --no-quantize --sampling --temperature 0.8
"""


ABSTAINED_EXIT_CODE = 3


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `ask` and `eval --adapter`: which model, where, and how to generate."""
    from falcon_desktop.cli.flags import add_deprecated
    from falcon_desktop.decoding import GenerationSettings

    defaults = GenerationSettings()
    parser.add_argument("--adapter", metavar="RUN_OR_PATH", help="trained run name (see `falcon-desktop runs`), run directory or adapter directory")
    parser.add_argument("--model", metavar="BASE", help="base model directory or hub id (default: the base the adapter was trained on)")
    parser.add_argument("--device", default="auto", help="cuda, cuda:1, cpu, or auto (first GPU, else CPU)")
    parser.add_argument("--quantize", action=argparse.BooleanOptionalAction, default=None,
                        help="4-bit NF4 base; --no-quantize loads 16-bit (faster on a GPU with room for it); "
                             "default: as the adapter's run trained")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="longest answer in tokens")
    parser.add_argument("--sampling", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="with --sampling")
    parser.add_argument("--top-p", type=float, default=defaults.top_p, help="with --sampling")
    parser.add_argument("--top-k", type=int, default=defaults.top_k, help="with --sampling (0 = off)")
    parser.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty, help="1.0 = off")
    parser.add_argument("--seed", type=int, help="fixes sampling")
    parser.add_argument("--answer-batch", type=int, default=8, metavar="N",
                        help="questions generated together when answering a file")
    add_deprecated(parser, "--batch-size", "--answer-batch", "answer_batch", type=int)
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own Python code")


def ask_options(args: argparse.Namespace):
    """AskOptions from the shared flags."""
    from falcon_desktop.ask import AskOptions
    from falcon_desktop.errors import UserError
    from falcon_desktop.decoding import GenerationSettings

    if args.answer_batch < 1:
        raise UserError(f"--answer-batch must be at least 1, not {args.answer_batch}.", "Try --answer-batch 8.")
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, sampling=args.sampling, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed,
    )
    return AskOptions(args.adapter, args.model, args.device, args.quantize, args.trust_remote_code, settings)


def register(subparsers: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser(
        "ask", help="ask the fine-tuned model questions (interactive, one question, or a file)",
        description=__doc__, epilog=EXAMPLES, formatter_class=formatter,
    )
    from falcon_desktop.cli.flags import add_deprecated

    add_model_arguments(parser)
    parser.add_argument("--question", help="answer this one question, print only the answer (nothing and exit code "
                                           f"{ABSTAINED_EXIT_CODE} when the model abstains), and exit")
    parser.add_argument("--context-file", metavar="FILE", help="passage (UTF-8 text) for --question, or the REPL's first context")
    parser.add_argument("--json", action="store_true", help='with --question: print {"answer", "answerable", ...} as JSON')
    parser.add_argument("--data", metavar="FILE", help="questions.jsonl ({id, question, context} per line) or a SQuAD .json")
    add_deprecated(parser, "--input", "--data", "data")
    parser.add_argument("--output", metavar="FILE", help=".json: official SQuAD predictions {id: answer}; .jsonl: one answer per line")
    parser.add_argument("--overwrite", action="store_true", help="let --output replace an existing file")
    parser.set_defaults(run=run)


def _read_context(path: str | None) -> str | None:
    from pathlib import Path

    from falcon_desktop.errors import UserError

    if path is None:
        return None
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"Context file {path!r} does not exist.", "Give the path of a UTF-8 text file.")
    try:
        return file.read_text(encoding="utf-8").strip() or None
    except UnicodeDecodeError:
        raise UserError(f"Context file {path!r} is not UTF-8 text.", "Save it as UTF-8.") from None


def run(args: argparse.Namespace) -> int:
    from falcon_desktop.errors import UserError

    if args.question is not None and args.data:
        raise UserError("--question and --data are alternatives.", "Give one question, or a file of them.")
    if bool(args.data) != bool(args.output):
        raise UserError("--data and --output go together.", "e.g. --data dev-v2.0.json --output predictions.json")
    if args.json and args.question is None:
        raise UserError("--json goes with --question.", 'e.g. --question "Who?" --context-file passage.txt --json')
    if args.question is not None and not args.question.strip():
        raise UserError("--question is empty.", 'e.g. --question "Where does the falcon not live?"')
    context = _read_context(args.context_file)
    options = ask_options(args)
    if args.data:
        return _answer_file(options, args)

    from falcon_desktop.ask import load_answerer

    answerer = load_answerer(options)
    if args.question is not None:
        return _answer_one(answerer, args.question, context, args.json)
    from falcon_desktop.repl import Repl

    return Repl(answerer, context=context).run()


def _answer_one(answerer, question: str, context: str | None, as_json: bool) -> int:
    from falcon_desktop.ask import CLOSED_BOOK_NOTE
    from falcon_desktop.console import info

    if context is None:
        info(f"({CLOSED_BOOK_NOTE})")
    return report_answer(question, answerer.ask(question, context), as_json)


def report_answer(question: str, result, as_json: bool) -> int:
    """The answer alone on stdout; an abstention is no text and exit code 3, so a script can tell it apart."""
    import sys

    from falcon_desktop.ask import UNANSWERABLE_NOTE, prediction_text
    from falcon_desktop.console import info, print_json
    from falcon_desktop.prompts import is_abstention

    answerable = not is_abstention(result.text)
    if as_json:
        print_json({"question": question, "answer": prediction_text(result.text), "answerable": answerable,
                    "stop_reason": result.stop_reason})
    elif answerable:
        sys.stdout.write(result.text + "\n")
        sys.stdout.flush()
    else:
        info(UNANSWERABLE_NOTE)
    if result.stop_reason == "interrupted":
        return 130
    return 0 if answerable else ABSTAINED_EXIT_CODE


def _answer_file(options, args: argparse.Namespace) -> int:
    from falcon_desktop.ask import answer_file, check_answers_path, load_answerer, write_answers
    from falcon_desktop.console import info
    from falcon_desktop.data.questions import read_questions

    # Both files are checked before the model loads: a typo should fail in a second, not after a minute.
    check_answers_path(args.output, args.data, overwrite=args.overwrite)
    questions = read_questions(args.data)
    answerer = load_answerer(options)
    answers = answer_file(answerer, questions, args.answer_batch)
    write_answers(args.output, questions, answers)
    info(f"Wrote {len(answers):,} answers to {args.output}")
    return 0
