"""`falcon-desktop merge`: fuse a trained LoRA adapter into a 16-bit copy of its base model.

The result is a standard Hugging Face model directory (safetensors, tokenizer, README.md model card with the run's
data and metrics) that any server loads without peft, with no adapter overhead at inference. The base is loaded in
bf16, never 4-bit; merging runs on the CPU by default (it needs the 16-bit model in RAM: ~14 GB for a 7B model).
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  falcon-desktop merge --adapter my-run --output falcon-7b-squad
  falcon-desktop merge --adapter runs/my-run/adapter --model ./falcon-7b --output merged --dtype float16
  falcon-desktop merge --adapter demo --output demo-merged --overwrite
"""


def register(subparsers: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser(
        "merge", help="fuse a LoRA adapter into its base model for deployment", description=__doc__,
        epilog=EXAMPLES, formatter_class=formatter,
    )
    parser.add_argument("--adapter", required=True, metavar="RUN_OR_PATH", help="run name, run directory or adapter directory")
    parser.add_argument("--output", required=True, metavar="DIR", help="directory for the merged model")
    parser.add_argument("--model", metavar="BASE", help="base model directory or hub id; None: the base the adapter was trained on")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"), help="dtype of the saved weights")
    parser.add_argument("--device", default="cpu", help="where to merge: cpu, or cuda when the 16-bit model fits in VRAM")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --output")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own Python code")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from falcon_desktop.merge import MergeOptions, merge_adapter

    options = MergeOptions(args.adapter, Path(args.output), args.model, args.dtype, args.device, args.overwrite,
                           args.trust_remote_code)
    print(merge_adapter(options))
    return 0
