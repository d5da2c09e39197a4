"""`falcon-desktop plan`: what fits on your GPU, the training settings that use it best, and what it will cost.

Reads the model's config.json only (a preset, a local directory or a Hugging Face id), prices every component of
memory for the method you ask for, and chooses micro-batch, gradient accumulation, checkpointing, optimizer,
precision and sequence length. Exits 1 when nothing fits, after listing the nearest settings that do.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

EXAMPLES = """examples:
  falcon-desktop plan                                    # Falcon-7B QLoRA on the GPU this machine has
  falcon-desktop plan --gpu "RTX 4090" --examples 130319 --epochs 2
  falcon-desktop plan --vram 12 --model mistral-7b --lora-targets q_proj,v_proj
  falcon-desktop plan --model tiiuae/falcon-40b --gpu "A100 80GB" --json
  falcon-desktop plan --method inference --inference-dtype bf16 --vram 16
  falcon-desktop plan --method lora --seq-len 1024 --micro-batch 4 --no-checkpointing --gpu L4
"""

GIB = 1024**3
BAR_WIDTH = 28


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """The planning flags, shared by `plan` and `train` (their defaults are PlanRequest's)."""
    from falcon_desktop.plan import PlanRequest
    from falcon_desktop.plan_memory import INFERENCE_DTYPES, METHODS
    from falcon_desktop.shapes import PRESETS

    default = PlanRequest()
    model = parser.add_argument_group("model and method")
    model.add_argument("--model", default="falcon-7b",
                       help=f"preset ({', '.join(PRESETS)}), a directory holding config.json, or a Hugging Face id")
    model.add_argument("--method", choices=METHODS, default=default.method,
                       help="qlora: 4-bit base + adapters; lora: 16-bit base + adapters; full: every weight")
    model.add_argument("--inference-dtype", choices=INFERENCE_DTYPES, default=default.inference_dtype,
                       help="weight format for --method inference")
    lora = model.add_argument_group("LoRA")
    lora.add_argument("--lora-r", type=int, default=default.lora_r, help="adapter rank: higher learns more")
    lora.add_argument("--lora-alpha", type=int, default=default.lora_alpha, help="adapter scale (alpha / r)")
    lora.add_argument("--lora-dropout", type=float, default=default.lora_dropout)
    lora.add_argument("--lora-targets", metavar="A,B,C",
                      help="linear layers to adapt, comma-separated, or all-linear (default: every linear kind)")
    data = parser.add_argument_group("data")
    data.add_argument("--seq-len", type=int, default=default.max_seq_len,
                      help="longest row in tokens (SQuAD prompts: mean 214, p99 624)")
    data.add_argument("--batch-size", type=int, default=default.effective_batch_size,
                      help="effective batch: examples per optimizer step")
    size = data.add_mutually_exclusive_group()
    size.add_argument("--examples", type=int, help="dataset size in examples (SQuAD v2 train: 130,319)")
    size.add_argument("--tokens", type=int, help="dataset size in tokens")
    data.add_argument("--mean-tokens", type=int, default=default.mean_tokens_per_example,
                      help="mean tokens per example, to turn --examples into tokens")
    data.add_argument("--epochs", type=float, default=default.epochs)
    gpu = parser.add_argument_group("GPU (default: the one NVML reports)")
    gpu.add_argument("--vram", type=float, metavar="GB",
                     help="memory budget in GiB (the size printed on the card: 24 for an RTX 4090)")
    gpu.add_argument("--gpu", metavar="NAME", help='a card from the table, e.g. "RTX 4090", A10G, "A100 80GB"')
    gpu.add_argument("--micro-batch", type=int, help="force the micro-batch instead of choosing it")
    gpu.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None,
                     help="force gradient checkpointing on every layer / off (default: only as many as needed)")
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
    )


def gpu_from_args(args: argparse.Namespace):
    """--gpu (the table; --vram overrides its memory), else --vram alone, else the first GPU NVML reports."""
    from falcon_desktop.errors import UserError
    from falcon_desktop.hardware import gpu_model
    from falcon_desktop.plan import GpuSpec

    if args.vram is not None and not 0 < args.vram < 1e6:  # also NaN and inf
        raise UserError(f"--vram must be a positive number of GiB (got {args.vram:g}).", "For example --vram 24.")
    vram = None if args.vram is None else int(args.vram * GIB)
    if args.gpu:
        return GpuSpec.from_table(gpu_model(args.gpu), "--gpu", vram)
    if vram is not None:
        return GpuSpec(f"{args.vram:g} GiB GPU", vram, None, None, None, "--vram")
    return detected_gpu()


def detected_gpu():
    """The first GPU NVML reports, with its FREE memory as the budget; None without one (or without a probe)."""
    from falcon_desktop.hardware import GpuModel, match_gpu
    from falcon_desktop.plan import GpuSpec

    try:
        from falcon_desktop.probe import detect_gpus

        gpus = detect_gpus()
    except Exception:  # noqa: BLE001 - no probe, no driver, a wedged NVML: all mean "plan without a GPU"
        return None
    if not gpus:
        return None
    info = gpus[0]
    known = match_gpu(info.name, info.total_bytes)
    known = known if isinstance(known, GpuModel) else None
    return GpuSpec(
        name=info.name, vram_bytes=info.free_bytes,
        compute_capability=info.compute_capability or (known.compute_capability if known else None),
        bf16_tflops=known.bf16_tflops if known else None,
        watts=info.power_limit_watts or (known.watts if known else None), source="nvml",
    )


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
    from rich.table import Table

    from falcon_desktop.console import symbol
    from falcon_desktop.plan import RULES_OF_THUMB
    from falcon_desktop.plan_memory import COEFFICIENTS

    gpu = plan.gpu
    card = (f"{gpu.name} ({gpu.source}), budget {_gib(gpu.vram_bytes)}" if gpu else
            "no GPU detected: pass --vram or --gpu")
    console.print(f"[bold]{plan.model}[/bold] ({plan.model_type}) {plan.method} on {card}")

    params = Table(title="Parameters", title_justify="left")
    for column in ("kind", "parameters", "share"):
        params.add_column(column, justify="left" if column == "kind" else "right")
    for kind, count in plan.parameter_counts.items():
        params.add_row(kind, f"{count:,}", f"{count / plan.total_params:.1%}")
    params.add_row("[bold]total[/bold]", f"[bold]{plan.total_params:,}[/bold]", "100%")
    if plan.trainable_params:
        what = (f"LoRA r={plan.lora_r} on {', '.join(plan.lora_targets)}" if plan.lora_targets else "all")
        params.add_row(f"trainable ({what})", f"{plan.trainable_params:,}",
                       f"{plan.trainable_params / plan.total_params:.2%}")
    console.print(params)

    block, empty = symbol("█", "#"), symbol("░", ".")
    scale = max(plan.vram_budget_bytes, plan.peak_vram_bytes, 1)
    memory = Table(title="Memory at the peak", title_justify="left")
    memory.add_column("component")
    memory.add_column("size", justify="right")
    memory.add_column(f"share of {'the budget' if plan.vram_budget_bytes else 'the peak'}")
    for component, size in plan.breakdown.items():
        filled = round(BAR_WIDTH * size / scale)
        memory.add_row(component, _gib(size), block * filled + empty * (BAR_WIDTH - filled))
    verdict = "[green]fits[/green]" if plan.fits else "[red]does not fit[/red]"
    memory.add_row("[bold]predicted peak[/bold]", f"[bold]{_gib(plan.peak_vram_bytes)}[/bold]", verdict)
    if plan.vram_budget_bytes:
        memory.add_row("budget", _gib(plan.vram_budget_bytes), plan.reasons.get("fits", ""))
    console.print(memory)

    methods = Table(title="Methods compared (same sequence, micro-batch and checkpointing)", title_justify="left")
    for column in ("method", "predicted peak", "rule of thumb", ""):
        methods.add_column(column)
    usable = plan.vram_budget_bytes * (1 - COEFFICIENTS.safety_margin_fraction)
    for key, size in plan.methods.items():
        per_param, text = RULES_OF_THUMB[key]
        fits = "" if not usable else "fits" if size <= usable else "too big"
        methods.add_row(key, _gib(size), f"{_gib(per_param * plan.total_params)}  ({text})", fits)
    console.print(methods)

    choice = Table(title="The choice", title_justify="left")
    for column in ("setting", "value", "why"):
        choice.add_column(column, overflow="fold")
    rows = [("compute_dtype", plan.compute_dtype), ("max_seq_len", plan.max_seq_len)]
    if plan.method != "inference":
        rows += [("micro_batch_size", plan.micro_batch_size),
                 ("gradient_accumulation_steps", plan.gradient_accumulation_steps),
                 ("checkpoint_layers", plan.checkpoint_layers), ("optimizer", plan.optimizer)]
    else:
        rows.append(("micro_batch_size", plan.micro_batch_size))
    for name, value in rows:
        choice.add_row(name, str(value), plan.reasons.get(name, ""))
    console.print(choice)

    _render_time_and_cost(plan, console, costs)
    if plan.alternatives:
        console.print("[bold]Nearest settings that fit:[/bold]")
        for alternative in plan.alternatives:
            console.print(f"  {alternative.summary}: [bold]{alternative.flags}[/bold] "
                          f"({_gib(alternative.peak_vram_bytes)})", highlight=False)


def _render_time_and_cost(plan, console, costs: dict[str, Any] | None) -> None:
    from rich.table import Table

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
    cloud = Table(title=f"Cloud equivalents (on-demand list prices of {costs['cloud_prices_date']}; prices change)",
                  title_justify="left")
    for column in ("instance", "GPUs", "$/h", "tokens/s", "hours", "cost"):
        cloud.add_column(column, justify="left" if column == "instance" else "right")
    for row in costs["cloud"]:
        if not row["fits"]:
            cloud.add_row(f"{row['provider']} {row['instance']}", f"{row['gpu_count']}x {row['gpu']}",
                          f"{row['usd_per_hour']:.2f}", "does not fit", "", "")
            continue
        cloud.add_row(f"{row['provider']} {row['instance']}", f"{row['gpu_count']}x {row['gpu']}",
                      f"{row['usd_per_hour']:.2f}", f"{row['tokens_per_second']:,.0f}",
                      "" if row["hours"] is None else f"{row['hours']:,.1f}",
                      "" if row["usd"] is None else f"${row['usd']:,.2f}")
    console.print(cloud)
