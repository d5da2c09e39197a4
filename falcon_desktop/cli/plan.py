"""`falcon-desktop plan`: what fits on your GPU, the training settings that use it best, and what it will cost.

Reads the model's config.json only (a preset, a local directory or a Hugging Face id), prices every component of
memory for the method you ask for, and chooses micro-batch, gradient accumulation, checkpointing, optimizer,
precision and sequence length. Exits 1 when nothing fits, after listing the nearest settings that do.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from falcon_desktop.hardware import GIB

EXAMPLES = """examples:
  falcon-desktop plan                                    # Falcon-7B QLoRA on the GPU this machine has
  falcon-desktop plan --gpu "RTX 4090" --examples 130319 --epochs 2
  falcon-desktop plan --vram 12 --model mistral-7b --lora-targets q_proj,v_proj
  falcon-desktop plan --model tiiuae/falcon-40b --gpu "A100 80GB" --json
  falcon-desktop plan --method inference --inference-dtype bf16 --vram 16
  falcon-desktop plan --method lora --seq-len 1024 --micro-batch 4 --no-checkpointing --gpu L4
"""

BAR_WIDTH = 28


def add_plan_arguments(parser: argparse.ArgumentParser, training: bool = False) -> None:
    """The planning flags, shared by `plan` and `train` (their defaults are PlanRequest's).

    `train` (training=True) leaves out what means nothing to a run that trains on known data: --method inference,
    --inference-dtype, the dataset size (--examples/--tokens/--mean-tokens) and --price-per-kwh.
    """
    from falcon_desktop.plan import PlanRequest
    from falcon_desktop.plan_memory import INFERENCE_DTYPES, METHODS
    from falcon_desktop.plan_parallel import SHARDINGS
    from falcon_desktop.shapes import PRESETS

    default = PlanRequest()
    model = parser.add_argument_group("model and method")
    model.add_argument("--model", default="falcon-7b",
                       help=f"preset ({', '.join(PRESETS)}), a directory holding config.json, or a Hugging Face id")
    model.add_argument("--method", choices=[m for m in METHODS if not (training and m == "inference")],
                       default=default.method,
                       help="qlora: 4-bit base + adapters; lora: 16-bit base + adapters; full: every weight")
    if training:
        parser.set_defaults(inference_dtype=default.inference_dtype, examples=None, tokens=None,
                            mean_tokens=default.mean_tokens_per_example, price_per_kwh=default.price_per_kwh)
    else:
        model.add_argument("--inference-dtype", choices=INFERENCE_DTYPES, default=default.inference_dtype,
                           help="weight format for --method inference")
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--lora-r", type=int, default=default.lora_r, help="adapter rank: higher learns more")
    lora.add_argument("--lora-alpha", type=int, default=default.lora_alpha, help="adapter scale (alpha / r)")
    lora.add_argument("--lora-dropout", type=float, default=default.lora_dropout,
                      help="dropout on the adapters' input while training")
    lora.add_argument("--lora-targets", metavar="A,B,C",
                      help="linear layers to adapt, comma-separated, or all-linear (default: every linear kind)")
    data = parser.add_argument_group("data")
    data.add_argument("--seq-len", type=int, default=default.max_seq_len,
                      help="longest row in tokens (SQuAD prompts: mean 214, p99 624)")
    data.add_argument("--batch-size", type=int, default=default.effective_batch_size,
                      help="effective batch: examples per optimizer step")
    if not training:
        size = data.add_mutually_exclusive_group()
        size.add_argument("--examples", type=int, help="dataset size in examples (SQuAD v2 train: 130,319)")
        size.add_argument("--tokens", type=int, help="dataset size in tokens")
        data.add_argument("--mean-tokens", type=int, default=default.mean_tokens_per_example,
                          help="mean tokens per example, to turn --examples into tokens")
    data.add_argument("--epochs", type=float, default=default.epochs, help="passes over the data (fractions allowed)")
    gpu = parser.add_argument_group("GPU (default: the one NVML reports)")
    gpu.add_argument("--vram", type=float, metavar="GB",
                     help="memory budget in GiB (the size printed on the card: 24 for an RTX 4090); with a GPU "
                          "present, its speed with this much memory (--gpu NAME for another card)")
    gpu.add_argument("--gpu", metavar="NAME", help='a card from the table, e.g. "RTX 4090", A10G, "A100 80GB"')
    if not training:  # train's --gpus (N or all) starts the processes too; its plan gets their number
        gpu.add_argument("--gpus", type=int, default=default.gpus,
                         help="GPUs of one run: memory per GPU, global batch and speed-up (docs/multi-gpu.md)")
    gpu.add_argument("--sharding", choices=SHARDINGS, default=default.sharding,
                     help="with several GPUs: ddp (the model whole on each), fsdp (sharded), or auto: ddp when it "
                          "fits one GPU")
    gpu.add_argument("--micro-batch", type=int, help="force the micro-batch instead of choosing it")
    gpu.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None,
                     help="force gradient checkpointing on every layer / off (default: only as many as needed)")
    if not training:
        gpu.add_argument("--price-per-kwh", type=float, default=default.price_per_kwh,
                         help="electricity price, for the cost estimate")


def register(subparsers: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser("plan", help="what fits on your GPU, the settings to use, and the cost",
                                   description=__doc__, epilog=EXAMPLES, formatter_class=formatter)
    add_plan_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.set_defaults(run=run)


def request_from_args(args: argparse.Namespace):
    """The PlanRequest the flags describe."""
    from falcon_desktop.plan import PlanRequest

    targets = None
    if args.lora_targets is not None:
        targets = tuple(name.strip() for name in args.lora_targets.split(",") if name.strip())
    return PlanRequest(
        method=args.method, inference_dtype=args.inference_dtype, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, lora_targets=targets, max_seq_len=args.seq_len,
        effective_batch_size=args.batch_size, examples=args.examples, tokens=args.tokens,
        mean_tokens_per_example=args.mean_tokens, epochs=args.epochs, micro_batch_size=args.micro_batch,
        gradient_checkpointing=args.checkpointing, price_per_kwh=args.price_per_kwh,
        gpus=args.gpus if isinstance(args.gpus, int) else 1, sharding=args.sharding,
        # `train` flags; `plan` prices train's default. --compile replaces recorded steps with its own.
        cuda_graphs=getattr(args, "cuda_graphs", True) and not getattr(args, "compile", False),
    )


def gpu_from_args(args: argparse.Namespace):
    """--gpu (the table; --vram overrides its memory), else the first GPU NVML reports (--vram overrides its memory,
    and its speed stays known: `train --vram 24` caps this card), else --vram alone."""
    from falcon_desktop.errors import UserError
    from falcon_desktop.hardware import gpu_model
    from falcon_desktop.plan import GpuSpec, detected_gpu

    if args.vram is not None and not 0 < args.vram < 1e6:  # also NaN and inf
        raise UserError(f"--vram must be a positive number of GiB (got {args.vram:g}).", "For example --vram 24.")
    vram = None if args.vram is None else int(args.vram * GIB)
    if args.gpu:
        return GpuSpec.from_table(gpu_model(args.gpu), "--gpu", vram)
    detected = detected_gpu()
    if vram is None:
        return detected
    if detected is not None:
        return dataclasses.replace(detected, vram_bytes=vram, source="--vram")
    return GpuSpec(f"{args.vram:g} GiB GPU", vram, None, None, None, "--vram")


def run(args: argparse.Namespace) -> int:
    from falcon_desktop.console import out, print_json, warn
    from falcon_desktop.plan import cost_estimates, make_plan, rules_of_thumb
    from falcon_desktop.shapes import load_shape

    shape = load_shape(args.model)
    request = request_from_args(args)
    gpu = gpu_from_args(args)
    plan = make_plan(shape, gpu, request)
    costs = cost_estimates(shape, request, plan)
    if args.json:
        print_json({**plan.to_json(), "shape": dataclasses.asdict(shape), "params": plan.parameter_counts,
                    "rules_of_thumb": rules_of_thumb(plan.total_params), "costs": costs})
    else:
        render_plan(plan, out(), costs)
    if gpu is None:
        warn("no GPU detected: pass --vram or --gpu")
        return 0
    return 0 if plan.fits else 1


def _gib(value: float) -> str:
    return f"{value / GIB:,.1f} GiB"


def render_plan(plan, console, costs: dict[str, Any] | None = None) -> None:
    """The plan as rich tables: parameters, memory by component, methods compared, the choice, time and cost."""
    gpu = plan.gpu
    card = (f"{gpu.name} ({gpu.source}), budget {_gib(gpu.vram_bytes)}" if gpu else
            "no GPU detected: pass --vram or --gpu")
    gpus = f"{plan.gpus} x " if plan.gpus > 1 else ""
    console.print(f"[bold]{plan.model}[/bold] ({plan.model_type}) {plan.method} on {gpus}{card}")
    console.print(_parameters_table(plan))
    console.print(_memory_table(plan))
    console.print(_methods_table(plan))
    console.print(_choice_table(plan))
    _render_time_and_cost(plan, console, costs)
    if plan.alternatives:
        console.print("[bold]Nearest settings that fit:[/bold]")
        for alternative in plan.alternatives:
            console.print(f"  {alternative.summary}: [bold]{alternative.flags}[/bold] "
                          f"({_gib(alternative.peak_vram_bytes)})", highlight=False)


def _table(title: str, *columns: str, right: tuple[str, ...] = ()):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left")
    return table


def _parameters_table(plan):
    table = _table("Parameters", "kind", "parameters", "share", right=("parameters", "share"))
    for kind, count in plan.parameter_counts.items():
        table.add_row(kind, f"{count:,}", f"{count / plan.total_params:.1%}")
    table.add_row("[bold]total[/bold]", f"[bold]{plan.total_params:,}[/bold]", "100%")
    if plan.trainable_params:
        what = (f"LoRA r={plan.lora_r} on {', '.join(plan.lora_targets)}" if plan.lora_targets else "all")
        table.add_row(f"trainable ({what})", f"{plan.trainable_params:,}",
                      f"{plan.trainable_params / plan.total_params:.2%}")
    return table


def _memory_table(plan):
    from falcon_desktop.console import symbol

    block, empty = symbol("█", "#"), symbol("░", ".")
    scale = max(plan.vram_budget_bytes, plan.peak_vram_bytes, 1)
    table = _table("Memory at the peak", "component", "size",
                   f"share of {'the budget' if plan.vram_budget_bytes else 'the peak'}", right=("size",))
    for component, size in plan.breakdown.items():
        filled = round(BAR_WIDTH * size / scale)
        table.add_row(component, _gib(size), block * filled + empty * (BAR_WIDTH - filled))
    verdict = "[green]fits[/green]" if plan.fits else "[red]does not fit[/red]"
    table.add_row("[bold]predicted peak[/bold]", f"[bold]{_gib(plan.peak_vram_bytes)}[/bold]", verdict)
    if plan.vram_budget_bytes:
        table.add_row("budget", _gib(plan.vram_budget_bytes), plan.reasons.get("fits", ""))
    return table


def _methods_table(plan):
    from falcon_desktop.plan import RULES_OF_THUMB
    from falcon_desktop.plan_memory import COEFFICIENTS

    table = _table("Methods compared (same sequence, micro-batch and checkpointing)",
                   "method", "predicted peak", "rule of thumb", "")
    usable = plan.vram_budget_bytes * (1 - COEFFICIENTS.safety_margin_fraction)
    for key, size in plan.methods.items():
        per_param, text = RULES_OF_THUMB[key]
        fits = "" if not usable else "fits" if size <= usable else "too big"
        table.add_row(key, _gib(size), f"{_gib(per_param * plan.total_params)}  ({text})", fits)
    return table


def _choice_table(plan):
    table = _table("The choice", "setting", "value", "why")
    for column in table.columns:
        column.overflow = "fold"
    rows = [("compute_dtype", plan.compute_dtype), ("max_seq_len", plan.max_seq_len),
            ("micro_batch_size", plan.micro_batch_size)]
    if plan.gpus > 1:
        rows[:0] = [("sharding", plan.sharding), ("gpus", plan.gpus)]
    if plan.method != "inference":
        rows += [("gradient_accumulation_steps", plan.gradient_accumulation_steps),
                 ("checkpoint_layers", plan.checkpoint_layers), ("optimizer", plan.optimizer),
                 ("records_steps", "yes (CUDA graphs)" if plan.records_steps else "no (eager)")]
    if plan.learning_rate is not None:
        rows.append(("learning_rate", f"{plan.learning_rate:g}"))
    for name, value in rows:
        table.add_row(name, str(value), plan.reasons.get(name, ""))
    return table


def _render_time_and_cost(plan, console, costs: dict[str, Any] | None) -> None:
    if plan.estimated_tokens_per_second is None:
        console.print(f"Time: {plan.reasons.get('estimated_tokens_per_second', 'no estimate')}.")
        return
    hours = ("pass --examples or --tokens for hours" if plan.estimated_hours is None else
             f"{plan.estimated_hours:,.1f} h for the dataset")
    console.print(f"Time: ~{plan.estimated_tokens_per_second:,.0f} tokens/s, {hours} "
                  f"({plan.reasons['estimated_tokens_per_second']}).")
    if not costs:
        return
    if costs.get("electricity"):
        power = costs["electricity"]
        console.print(f"Electricity: {power['kwh']:,.1f} kWh at {power['watts']:g} W = "
                      f"{power['cost']:,.2f} at {power['price_per_kwh']:g} per kWh (the GPU alone).")
    console.print(_cloud_table(costs))


def _cloud_table(costs: dict[str, Any]):
    table = _table(f"Cloud equivalents (on-demand list prices of {costs['cloud_prices_date']}; prices change)",
                   "instance", "GPUs", "$/h", "tokens/s", "hours", "cost",
                   right=("GPUs", "$/h", "tokens/s", "hours", "cost"))
    for row in costs["cloud"]:
        instance = (f"{row['provider']} {row['instance']}", f"{row['gpu_count']}x {row['gpu']}",
                    f"{row['usd_per_hour']:.2f}")
        if not row["fits"]:
            table.add_row(*instance, "does not fit", "", "")
            continue
        table.add_row(*instance, f"{row['tokens_per_second']:,.0f}",
                      "" if row["hours"] is None else f"{row['hours']:,.1f}",
                      "" if row["usd"] is None else f"${row['usd']:,.2f}")
    return table
