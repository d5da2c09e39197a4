"""`falcon-desktop eval`: SQuAD v2 exact match and F1, as the official evaluate-v2.0.py computes them.

Scores a predictions file in the official {question_id: answer} format (--predictions), or first answers the
questions with a model and adapter (--adapter, --limit for a quick look) and scores those. "" means "unanswerable";
our model's abstention word is read as "" too. The table shows two decimals; --json prints the official script's
keys and full precision (exact, f1, total, HasAns_exact, HasAns_f1, HasAns_total, NoAns_exact, NoAns_f1,
NoAns_total; a split's keys are absent when the data has no question of that kind).
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  falcon-desktop eval --data dev-v2.0.json --predictions predictions.json
  falcon-desktop eval --data dev-v2.0.json --predictions predictions.json --json
  falcon-desktop eval --adapter my-run --data dev-v2.0.json --limit 200
  falcon-desktop eval --adapter demo --data dev-v2.0.json --limit 50 --save-predictions preds.json
"""


def register(subparsers: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    from falcon_desktop.cli.ask import add_model_arguments
    from falcon_desktop.decoding import EXTRACTIVE, EXTRACTIVE_BATCH_SIZE

    parser = subparsers.add_parser(
        "eval", help="score SQuAD v2 predictions (or a model's answers): exact match and F1",
        description=__doc__, epilog=EXAMPLES, formatter_class=formatter,
    )
    parser.add_argument("--data", required=True, metavar="SQUAD.json", help="SQuAD v1.1/v2.0 JSON with the gold answers")
    parser.add_argument("--predictions", metavar="PRED.json", help="official {id: answer} JSON (or answers.jsonl from `ask`)")
    parser.add_argument("--limit", type=int, help="with --adapter: answer only the first N questions and score those")
    parser.add_argument("--save-predictions", metavar="FILE", help="with --adapter: also write the predictions (.json or .jsonl)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (the official keys) instead of a table")
    add_model_arguments(parser.add_argument_group("answering with a model (instead of --predictions)"))
    # Extractive answers are short: fewer new tokens and bigger batches than `ask` (issue #15: eval speed).
    parser.set_defaults(answer_batch=EXTRACTIVE_BATCH_SIZE, max_new_tokens=EXTRACTIVE.max_new_tokens)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from falcon_desktop.console import print_json
    from falcon_desktop.errors import UserError
    from falcon_desktop.evaluate import iter_squad_questions, load_predictions, read_squad, score_predictions

    if bool(args.predictions) == bool(args.adapter or args.model):
        raise UserError(
            "Give either --predictions (a file to score) or --adapter/--model (answer with a model, then score).",
            "e.g. `falcon-desktop eval --data dev-v2.0.json --predictions predictions.json`",
        )
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, not {args.limit}.", "Leave it out to use every question.")
    squad = read_squad(args.data)
    if args.predictions:
        scores = score_predictions(squad, load_predictions(args.predictions))
    else:
        questions = list(iter_squad_questions(squad))[: args.limit]
        scores = score_predictions(questions, _answer(questions, args))
    if args.json:
        print_json(scores)
    else:
        _print_table(scores)
    return 0


def _answer(questions: list, args: argparse.Namespace) -> dict[str, str]:
    import dataclasses
    import time

    from falcon_desktop.ask import answer_file, check_answers_path, load_answerer, write_answers
    from falcon_desktop.cli.ask import ask_options
    from falcon_desktop.console import info
    from falcon_desktop.decoding import EXTRACTIVE

    if args.save_predictions:
        check_answers_path(args.save_predictions)
    options = ask_options(args)
    # A span is one line: stop each answer at its first line end (a base model otherwise talks to the token limit).
    options = dataclasses.replace(options, settings=dataclasses.replace(options.settings,
                                                                        single_line=EXTRACTIVE.single_line))
    answerer = load_answerer(options)
    started = time.perf_counter()
    answers = answer_file(answerer, questions, args.answer_batch)
    seconds = time.perf_counter() - started
    info(f"Answered {len(questions):,} questions in {seconds:.1f} s ({len(questions) / seconds:.1f} questions/s, "
         f"batch {args.answer_batch}, at most {args.max_new_tokens} new tokens)")
    if args.save_predictions:
        write_answers(args.save_predictions, questions, answers)
    return answers


def _print_table(scores: dict) -> None:
    from rich.table import Table

    from falcon_desktop.console import out

    table = Table("questions", "count", "exact match %", "F1 %", title="SQuAD v2 (official metrics)")
    for label, prefix in (("all", ""), ("with an answer (HasAns)", "HasAns_"), ("unanswerable (NoAns)", "NoAns_")):
        if f"{prefix}total" in scores:
            table.add_row(label, f"{scores[f'{prefix}total']:,}", f"{scores[f'{prefix}exact']:.2f}", f"{scores[f'{prefix}f1']:.2f}")
    out().print(table)
