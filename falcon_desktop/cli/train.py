"""`falcon-desktop train`: QLoRA fine-tune on SQuAD-format data, driven by the memory plan."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  falcon-desktop train --model tiiuae/falcon-7b --data train-v2.0.json
  falcon-desktop train --model ./my-model --data squad.json --max-steps 200 --dry-run
  falcon-desktop train --resume ~/.local/share/falcon-desktop/runs/falcon-7b-20261123-101500
"""


def register(subparsers: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    from pathlib import Path

    from falcon_desktop.cli.plan import add_plan_arguments
    from falcon_desktop.train_config import TrainConfig

    parser = subparsers.add_parser(
        "train", help="fine-tune a model with QLoRA on SQuAD-format data", description=__doc__,
        epilog=EXAMPLES, formatter_class=formatter,
    )
    add_plan_arguments(parser, training=True)
    defaults = TrainConfig(model="", data="", output=Path())  # the one place train's defaults live
    run = parser.add_argument_group("run")
    run.add_argument("--data", help="SQuAD JSON, JSONL/Parquet/CSV, or a `datasets` name (e.g. rajpurkar/squad_v2)")
    run.add_argument("--output", help="run directory (default: a new one under the runs folder)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    run.add_argument("--overwrite", action="store_true",
                     help="let --output replace the run (checkpoints, adapter, metrics) already in that folder")
    run.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (instead of --epochs)")
    run.add_argument("--learning-rate", type=float,
                     help="peak AdamW learning rate, after warmup (cosine decay to 0 follows); default: the plan's, "
                          "1e-3 for a base under 1B parameters, 2e-4 above")
    run.add_argument("--seed", type=int, default=defaults.seed,
                     help="fixes the data split, shuffling and adapter initialisation")
    run.add_argument("--save-every", type=int, default=defaults.save_every, help="optimizer steps between checkpoints")
    run.add_argument("--eval-fraction", type=float, default=defaults.eval_fraction,
                     help="share of articles held out for evaluation")
    run.add_argument("--eval-examples", type=int, default=defaults.eval_examples,
                     help="held-out questions scored before/after (0: skip)")
    run.add_argument("--device", default=defaults.device, help="auto, cuda:N or cpu")
    run.add_argument("--gpus", default="1", metavar="N|all",
                     help="train on N GPUs of this machine (or all), one process each through accelerate: "
                          "data parallel, or FSDP when the plan says the model needs sharding (docs/multi-gpu.md)")
    run.add_argument("--quantize", action=argparse.BooleanOptionalAction, default=defaults.quantize,
                     help="4-bit NF4 base (QLoRA); --no-quantize trains on a 16-bit base (LoRA)")
    run.add_argument("--compile", action=argparse.BooleanOptionalAction, default=defaults.compile,
                     help="compile each decoder layer with torch.compile: fused kernels, replayed as CUDA graphs "
                          "when no layer is checkpointed (2.7-4.1x the steady tokens/s of eager steps on 135M-1B "
                          "models without checkpointed layers, on an H200; 1.07x on Llama-3-8B's checkpointed plan, no faster "
                          "on Falcon-7B's: docs/benchmarks.md) after 1-3 minutes of compiling, so for long "
                          "runs; needs Triton on a GPU (Windows: the triton-windows package) and a C++ compiler on the "
                          "CPU; a resumed run compiles only if given it again")
    run.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=defaults.cuda_graphs,
                     help="record each training step's forward and backward as CUDA graphs, one per batch shape, and "
                          "replay them (on a CUDA GPU, without --compile, where the plan expects a gain: its "
                          "records_steps; no compiler needed): the same training with far fewer kernel launches, "
                          "which small models wait on; --no-cuda-graphs runs every step eagerly")
    run.add_argument("--strict", action="store_true", help="fail on any dropped data record")
    run.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own Python code")
    run.add_argument("--force", action="store_true", help="train even when the plan says it does not fit")
    run.add_argument("--dry-run", action="store_true", help="show the plan and exit")
    parser.set_defaults(run=run_command)


# Flags that may differ on --resume: they steer this invocation, not what the run learns.
_FREE_ON_RESUME = {"resume", "max_steps", "device", "force", "dry_run", "overwrite", "run", "verb", "gpus", "argv",
                   "sharding", "compile", "cuda_graphs"}


def _refuse_changed_settings(args: argparse.Namespace) -> None:
    """A resumed run keeps the settings it started with; a flag that would change them is an error, not ignored."""
    from pathlib import Path

    from falcon_desktop.cli import build_parser
    from falcon_desktop.errors import UserError
    from falcon_desktop.runs import RunCard
    from falcon_desktop.shapes import model_reference

    defaults = vars(build_parser().parse_args(["train", "--resume", args.resume]))
    given = {k: v for k, v in vars(args).items() if k not in _FREE_ON_RESUME and defaults.get(k) != v}
    if "model" in given:
        given["model"] = model_reference(given["model"])
    if isinstance(given.get("lora_targets"), str):
        given["lora_targets"] = [name.strip() for name in given["lora_targets"].split(",") if name.strip()]
    conflicts = RunCard.read(Path(args.resume).expanduser()).resume_conflicts(given)
    if conflicts:
        raise UserError(f"--resume continues a run with the settings it started with; these differ: {'; '.join(conflicts)}.",
                        "Drop them to resume, or start a new run with --output (--overwrite replaces this one).")


def _processes_for(args: argparse.Namespace) -> int:
    """How many processes --gpus starts (1: this one trains); checked before any model loads."""
    import os

    from falcon_desktop.launch import parse_gpus, process_count

    gpus = parse_gpus(args.gpus)
    if gpus == 1:
        return 1
    import torch

    return process_count(gpus, args.device, torch.cuda.device_count(), os.environ)


def run_command(args: argparse.Namespace) -> int:
    import os

    from falcon_desktop.cli.train_setup import (
        plan_for_training,
        resume_settings,
        train_config_from_args,
    )

    processes = _processes_for(args)
    # The plan sizes every GPU of the run: the launcher's process count, or in a rank the ranks it belongs to.
    args.gpus = processes if processes > 1 else int(os.environ.get("WORLD_SIZE", "1"))
    if args.resume:
        _refuse_changed_settings(args)
        config, plan = resume_settings(args)
    else:
        config = train_config_from_args(args)
        plan = plan_for_training(args, config)
    if args.dry_run:
        return 0
    if processes > 1:
        from falcon_desktop.launch import launch

        return launch(args.argv, processes)
    from rich.markup import escape

    from falcon_desktop.console import info
    from falcon_desktop.train import run_training

    card = run_training(config, plan, resume=bool(args.resume), overwrite=args.overwrite)
    if card.status != "finished":
        info(f"Stopped at step {card.last_checkpoint_step} of {card.total_steps}; the checkpoint is saved. "
             f"Continue with: falcon-desktop train --resume {escape(str(config.output))}")
        return 130
    info(f"[bold green]Done[/bold green]: {card.steps} steps, {card.measured.get('tokens_per_second', 0):,.0f} "
         f"tokens/s. Adapter: {escape(str(config.output / 'adapter'))}")
    info(f"Next: falcon-desktop ask --adapter {escape(str(config.output))}")
    return 0
