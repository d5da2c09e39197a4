"""`falcon-desktop export`: write a fine-tuned model as one GGUF file for llama.cpp, Ollama and LM Studio.

Give a trained run (--adapter: merged into its base first, in a temporary directory) or a model directory that
`falcon-desktop merge` wrote (--merged). The file holds the weights (f16, or q8_0: half the size, near-identical
answers), the tokenizer and our Q&A prompt as its chat template (system message = passage, user message = question).
An Ollama Modelfile with the same template is written beside it (docs/gguf.md shows all three tools).
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  falcon-desktop export --adapter my-run --output my-run-q8_0.gguf
  falcon-desktop export --merged falcon-7b-squad --output falcon-7b-squad-f16.gguf --outtype f16
  ollama create my-run -f my-run-q8_0.Modelfile
"""


def register(subparsers: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser(
        "export", help="write the fine-tuned model as a GGUF file (llama.cpp, Ollama, LM Studio)",
        description=__doc__, epilog=EXAMPLES, formatter_class=formatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", metavar="RUN_OR_PATH", help="trained run (name, run directory or adapter directory)")
    source.add_argument("--merged", metavar="DIR", help="a merged model directory (`falcon-desktop merge --output DIR`)")
    parser.add_argument("--output", required=True, metavar="FILE.gguf", help="the GGUF file to write")
    parser.add_argument("--outtype", default="q8_0", choices=("f16", "q8_0"), help="weight format in the file")
    parser.add_argument("--model", metavar="BASE", help="with --adapter: base model (default: the one it was trained on)")
    parser.add_argument("--no-modelfile", action="store_true", help="do not write an Ollama Modelfile beside the file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from falcon_desktop.console import info
    from falcon_desktop.errors import UserError

    output = Path(args.output).expanduser()
    if output.suffix.lower() != ".gguf":
        raise UserError(f"--output {args.output!r} does not end in .gguf.", f"e.g. --output {output.stem}.gguf")
    if output.exists() and not args.overwrite:
        raise UserError(f"{str(output)!r} already exists.", "Pick another --output, or pass --overwrite.")
    output.parent.mkdir(parents=True, exist_ok=True)
    if args.merged:
        report = _export(Path(args.merged).expanduser(), output, args)
    else:
        from falcon_desktop.merge import MergeOptions, merge_adapter

        with tempfile.TemporaryDirectory(prefix=".merge-", dir=output.parent) as scratch:
            merged = merge_adapter(MergeOptions(args.adapter, Path(scratch) / "merged", args.model, "bfloat16"))
            report = _export(merged, output, args)
    info(f"Wrote {report.path} ({report.bytes / 2**20:,.1f} MiB, {report.architecture}, {report.outtype}, "
         f"pre-tokenizer {report.tokenizer_pre!r})")
    return 0


def _export(directory, output, args: argparse.Namespace):
    from transformers import AutoTokenizer

    from falcon_desktop.atomic import write_text
    from falcon_desktop.console import info
    from falcon_desktop.export_gguf import export_gguf, modelfile

    report = export_gguf(directory, output, args.outtype, name=output.stem)
    if not args.no_modelfile:
        eos = AutoTokenizer.from_pretrained(str(directory)).eos_token
        path = output.with_suffix(".Modelfile")
        write_text(path, modelfile(output, [eos] if eos else []))
        info(f"Ollama: `ollama create {output.stem} -f {path}` (Modelfile written beside the file)")
    return report
