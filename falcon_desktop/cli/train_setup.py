"""`train`'s glue: from command-line flags to the (TrainConfig, Plan) pair the trainer consumes."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from falcon_desktop import paths
from falcon_desktop.cli.plan import gpu_from_args, render_plan, request_from_args
from falcon_desktop.console import info, out
from falcon_desktop.errors import UserError
from falcon_desktop.hardware import GIB
from falcon_desktop.plan import Plan, make_plan
from falcon_desktop.runs import RunCard
from falcon_desktop.shapes import load_shape, model_reference
from falcon_desktop.train_config import TrainConfig

# TrainConfig fields that `train` flags of the same name set. A flag left at None takes TrainConfig's default, so
# the defaults live in one place (the dataclass) and `train --help` need not import torch to show them.
TRAIN_FLAGS = ("epochs", "max_steps", "learning_rate", "seed", "save_every", "eval_fraction", "eval_examples", "device")


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    if not args.data:
        raise UserError("No training data given.", "Pass --data FILE (SQuAD JSON) or a `datasets` name.")
    given = {name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name, None) is not None}
    return TrainConfig(
        model=model_reference(args.model),  # a preset name such as falcon-7b becomes its Hub id
        data=args.data,
        output=Path(args.output).expanduser() if args.output else paths.new_run_dir(args.model),
        quantize=args.quantize,
        strict_data=args.strict,
        trust_remote_code=args.trust_remote_code,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        **given,
    )


def _gpu_present(device: str) -> bool:
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def plan_for_training(args: argparse.Namespace, config: TrainConfig) -> Plan:
    """The planner's choice for this model and GPU, shown to the user; refuses a plan that does not fit."""
    request = request_from_args(args)
    if not config.quantize and request.method == "qlora":
        request = replace(request, method="lora")
    gpu = gpu_from_args(args)
    plan = make_plan(load_shape(args.model), gpu, request)
    render_plan(plan, out())
    on_gpu = _gpu_present(config.device)
    if on_gpu and not plan.fits and not args.force:
        raise UserError(
            f"The plan says {args.model} does not fit: it needs {plan.peak_vram_bytes / GIB:.1f} GiB "
            f"of {plan.vram_budget_bytes / GIB:.1f} GiB.",
            "Follow the suggestions above, or pass --force to try anyway (the trainer lowers the micro-batch on OOM).",
        )
    if not on_gpu:
        info("No CUDA GPU in use: training on the CPU (fine for the tiny demo model, far too slow for 7B).")
    return plan


def resume_settings(args: argparse.Namespace) -> tuple[TrainConfig, Plan]:
    run_dir = Path(args.resume).expanduser()
    card = RunCard.read(run_dir)
    if not card.train or not card.plan:
        raise UserError(f"The run card of {run_dir} lacks its training settings ('train', 'plan').",
                        "Restore run.json from a backup, or start a new run with --output.")
    card.refuse_finished(args.max_steps)
    config = TrainConfig.from_json({**card.train, "output": str(run_dir)})
    if args.max_steps:
        config = replace(config, max_steps=args.max_steps)
    # Speed, not maths: a resumed run compiles and records CUDA graphs (or not) as this command says.
    return replace(config, compile=args.compile, cuda_graphs=args.cuda_graphs), Plan.from_json(card.plan)
