"""`falcon-desktop data inspect`: what a data source holds, what would be repaired or dropped and why, and - with
a tokenizer - how long the examples are and how densely they would batch.

Reads SQuAD v1.1/v2.0 JSON, JSONL/Parquet/CSV with question/context/answers, chat text (### Human: / ### Assistant:),
prompt/response JSONL, a Hugging Face `datasets` name (NAME[:SPLIT]), or `demo` (the bundled set).
"""

from __future__ import annotations

import argparse
from typing import Any

EXAMPLES = """examples:
  falcon-desktop data inspect --data demo
  falcon-desktop data inspect --data train-v2.0.json --strict
  falcon-desktop data inspect --data dev-v2.0.json --model ./falcon-7b --seq-len 512 --json
  falcon-desktop data inspect --data rajpurkar/squad_v2:validation --model tiiuae/falcon-7b
"""
MIN_SEQ_LEN = 32


def register(subparsers: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    from falcon_desktop.train_config import BatchSettings as defaults  # the planner's sequence length and batch

    parser = subparsers.add_parser(
        "data", help="check training data and see how it would batch", description=__doc__,
        epilog=EXAMPLES, formatter_class=formatter,
    )
    actions = parser.add_subparsers(dest="data_action", metavar="ACTION")
    inspect = actions.add_parser(
        "inspect", help="summarize, validate and (with --model) measure a data source", description=__doc__,
        epilog=EXAMPLES, formatter_class=formatter,
    )
    from falcon_desktop.cli.flags import add_deprecated

    inspect.add_argument("--data", dest="source", metavar="FILE_OR_NAME", help="a data file, a `datasets` name, or `demo`")
    add_deprecated(inspect, "FILE_OR_NAME", "--data", "source")
    inspect.add_argument("--model", metavar="DIR_OR_ID", help="model directory or hub id whose tokenizer counts tokens")
    inspect.add_argument("--seq-len", type=int, metavar="N", default=defaults.max_seq_len,
                         help="maximum tokens per example (longer contexts are windowed)")
    inspect.add_argument("--batch-size", dest="effective_batch_size", type=int, metavar="N", default=defaults.effective_batch_size,
                         help="effective batch: examples per optimizer step")
    inspect.add_argument("--micro-batch", dest="micro_batch_size", type=int, metavar="N", default=defaults.micro_batch_size,
                         help="rows of --seq-len tokens per forward pass (sets the token budget)")
    add_deprecated(inspect, "--effective-batch-size", "--batch-size", "effective_batch_size", type=int)
    add_deprecated(inspect, "--micro-batch-size", "--micro-batch", "micro_batch_size", type=int)
    inspect.add_argument("--seed", type=int, metavar="N",
                         help="shuffling seed for the batches measured (default: train's)")
    inspect.add_argument("--strict", action="store_true", help="fail if any record would be dropped")
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    inspect.set_defaults(run=run)
    parser.set_defaults(run=lambda args: _print_usage(parser))


def _print_usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run(args: argparse.Namespace) -> int:
    from falcon_desktop.console import print_json
    from falcon_desktop.data import load_records
    from falcon_desktop.errors import UserError

    for flag, value, least in (
        ("--seq-len", args.seq_len, MIN_SEQ_LEN), ("--batch-size", args.effective_batch_size, 1),
        ("--micro-batch", args.micro_batch_size, 1),
    ):
        if value < least:
            raise UserError(f"{flag} must be at least {least}, not {value}.", f"Try the default: {flag} with no value given.")
    if not args.source:
        raise UserError("No data given.", "Pass --data FILE_OR_NAME (a data file, a `datasets` name, or demo).")
    report = load_records(args.source, strict=args.strict)
    result: dict[str, Any] = report.summary()
    result["problems"] = report.problems
    if args.model:
        result.update(_measure(report.records, args))
    if args.json:
        print_json(result)
    else:
        _print_tables(result, args)
    return 0


def _measure(records: list, args: argparse.Namespace) -> dict[str, Any]:
    from falcon_desktop.console import err
    from falcon_desktop.data.measure import measure_batches
    from falcon_desktop.errors import UserError
    from falcon_desktop.model import load_tokenizer
    from falcon_desktop.train_config import BatchSettings, TrainConfig

    seed = TrainConfig.seed if args.seed is None else args.seed  # the order a run with its default seed sees
    settings = BatchSettings(seed, args.seq_len, args.effective_batch_size, args.micro_batch_size)
    with err().status(f"Tokenizing {len(records):,} records with {args.model}..."):
        try:
            tokenizer = load_tokenizer(args.model)
        except (OSError, ValueError) as error:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(
                f"Could not load a tokenizer from {args.model!r} ({detail}).",
                "Pass a model directory holding the tokenizer files, or a hub id (online, or cached).",
            ) from None
        return {"model": args.model, **measure_batches(records, tokenizer, settings)}


def _print_tables(result: dict[str, Any], args: argparse.Namespace) -> None:
    from rich.table import Table

    from falcon_desktop.console import info, out

    console = out()
    console.print(f"[bold]{result['source']}[/bold] ({result['format']})", soft_wrap=True)
    table = Table(show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    for label, key in (("read", "read"), ("records kept", "records"), ("  answerable", "answerable"),
                       ("  unanswerable", "unanswerable"), ("repaired answer spans", "repaired"), ("dropped", "dropped")):
        table.add_row(label, f"{result[key]:,}")
    for reason, count in result["drop_reasons"].items():
        table.add_row(f"  {reason.replace('_', ' ')}", f"{count:,}")
    console.print(table)
    if result["problems"]:
        console.print("First problems:")
        for problem in result["problems"][:10]:
            console.print(f"  {problem}", markup=False, soft_wrap=True)
    if "tokens" not in result:
        info("Add --model DIR_OR_HUB_ID for token lengths and the padding efficiency of the batches.")
        return
    tokens = result["tokens"]
    console.print(f"Tokens per example with {result['model']}'s tokenizer, at most {result['max_seq_len']}:")
    lengths = Table()
    for column in ("examples", "mean", "median", "p90", "p99", "max"):
        lengths.add_column(column, justify="right")
    lengths.add_row(f"{result['examples']:,}", *(f"{tokens[k]:,}" for k in ("mean", "median", "p90", "p99", "max")))
    console.print(lengths)
    console.print(f"Windowed (context cut to fit): {result['windowed']:,}; dropped as too long: {result['dropped_too_long']:,}")
    console.print(
        f"Padding efficiency {result['padding_efficiency']:.1%}: {result['steps_per_epoch']:,} steps of "
        f"{args.effective_batch_size} examples, micro-batches of at most {result['token_budget']:,} tokens."
    )
    console.print(f"Fingerprint: {result['fingerprint']}")
