"""The planner's estimates vs our trainer's measurements, at every size: models x LoRA targets x VRAM caps.

    python benchmarks/planner_matrix.py run --tokenizer DIR --data SQUAD.json --result FILE   (GPU machine)
    python benchmarks/planner_matrix.py table [--result FILE]                                  (anywhere, no torch)

`run`, for each model of `--models` (gpu_bench.SHAPES: random weights of the real shape) in its own process, and
for each LoRA target set (`all`: every linear kind; `attention`: the attention block's) and each cap of `--caps`
(GiB): asks the planner for its plan as `falcon-desktop plan --gpu H200 --vram CAP --examples N` makes it (QLoRA,
`train`'s defaults: effective batch 16, sequences of 512, rank 16 on the targets), with its tokens/s, hours per
epoch and peak memory; then runs our trainer's own `train_step` on that plan over real SQuAD rows (`--data`,
tokenized by the model's tokenizer as `train` does) for `--warmup-steps` + `--steps` optimizer steps of the epoch's
schedule (warm-up: its longest, then its median; timed: steps at evenly spaced quantiles of length), and measures the
real (non-padding) tokens/s of the timed steps and `torch.cuda.max_memory_reserved`. N, the epoch, is `--data`'s
examples as the trainer tokenizes them at the plan's sequence length (long contexts windowed); the measured hours
are their real tokens at the measured speed. It writes `--result` after every row (a cut-off run keeps its rows) and prints the table at the end.

How each model is measured, for speed on a lent GPU:
- Random bf16 weights are made on the GPU (`gpu_bench.py make-model`) and saved to `--models-dir` (a temporary
  folder by default, deleted after the model's rows; a folder already there is used as it is), then loaded by
  `model.load_base_model`, the trainer's loader, which quantizes them to NF4. The model loads once per process;
  each row wraps it in fresh LoRA adapters, a fresh optimizer and scheduler, and unwraps it (`unload`) after.
- The cap emulates a card of CAP GiB: PyTorch's allocator may reserve CAP GiB less what CUDA holds outside it in
  this process (context, cuBLAS workspace: measured per row as total - free - reserved), through
  `torch.cuda.set_per_process_memory_fraction`. The planner's predicted peak includes that outside part as its
  `cuda_context` term; the memory columns compare the allocator's share of the prediction (peak - cuda_context,
  as benchmarks/planner_accuracy.py does) with the measured `max_memory_reserved`.
- Peak memory per row in a process that ran other rows (and made and quantized the model) before: each row starts
  with `gc.collect()`, `torch.cuda.empty_cache()` and `torch.cuda.reset_peak_memory_stats()`, after the previous
  row's adapters and optimizer are gone, so its `max_memory_reserved` is the base model plus this row alone.
  Paged 8-bit AdamW's states live in CUDA managed memory, outside the allocator, and are not in it (a few MB of
  adapter states here).
- An out-of-memory error ends the row and is recorded (the trainer would halve its micro-batch and go on).
- `--recorded` plans as `train` does, recorded steps where the plan records them (plan_time.choose_recording), and
  gives the trainer's step its CUDA graphs as `train` would (`train_session.make_step_graphs`). The timed steps run
  once more in the warm-up, so their shapes are recorded before they are timed: the timed steps are the steady state
  (the speed model carries the recordings of new shapes in its per-step constant). Such rows say `recorded`, and
  `table` plans them again the same way; without it the plan is `--no-cuda-graphs` and the steps eager.

`table` compares the committed measurements with the planner as it is now: each row is planned again from the
model's config.json stored in the result, so a recalibration shows at once; a row whose plan has changed since it
was measured is marked and left out of the check. Exits 1 when a row's tokens/s or hours are off by more than 25%,
or its predicted memory is under the measured peak or more than 10% over it, or a row ran out of memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falcon_desktop.atomic import write_json
from falcon_desktop.hardware import GIB, gpu_model
from falcon_desktop.plan import GpuSpec, Plan, PlanRequest, make_plan
from falcon_desktop.plan_memory import COEFFICIENTS
from falcon_desktop.shapes import LORA_TARGETS, ModelShape, shape_from_config

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "planner-matrix.json"
RECORDED_RESULT = HERE / "results" / "planner-matrix-recorded.json"   # `run --recorded`
# Cheapest first (a broken setup shows in seconds), then the sizes the speed model has seen least.
MODELS = ("smollm2-135m", "llama-3-8b", "llama-1b", "falcon-7b")
TARGET_SETS = ("all", "attention")
CAPS_GIB = (8.0, 24.0, 12.0)   # the extremes first
SPEED_TOLERANCE = 0.25
MEMORY_OVER = (0.0, 0.10)      # predicted allocator peak / measured - 1 must lie in this range
# Rows the calibrated speed model misses by more than SPEED_TOLERANCE (docs/planner.md, "Estimate vs measured across
# sizes and caps"), left out of benchmarks/fit_speed.py's fit. None since session 12's matrix.
KNOWN_MISSES: set[tuple[str, str, float]] = set()
WARMUP_STEPS = 3
TIMED_STEPS = 5


@dataclass(frozen=True)
class MatrixSettings:
    """What every row of one run shares."""

    data: str
    tokenizer: str | None           # for making models; a model folder that exists brings its own
    gpu: str = "H200"               # the planner's table entry for the card (its bf16 peak)
    target_sets: tuple[str, ...] = TARGET_SETS
    caps_gib: tuple[float, ...] = CAPS_GIB
    effective_batch: int = PlanRequest.effective_batch_size
    warmup_steps: int = WARMUP_STEPS
    steps: int = TIMED_STEPS
    deadline: float = float("inf")  # time.time() after which no new row starts
    recorded: bool = False          # plan as `train` does and record the steps where the plan records them


def lora_targets(shape: ModelShape, target_set: str) -> tuple[str, ...]:
    """`all`: every linear kind of a decoder layer; `attention`: those of its attention block."""
    kinds = LORA_TARGETS[shape.model_type]
    return tuple(name for name, block in kinds.items() if target_set == "all" or block == target_set)


def plan_for(shape: ModelShape, target_set: str, cap_gib: float, gpu: str, effective_batch: int,
             examples: int, recorded: bool = False) -> Plan:
    """The plan `falcon-desktop plan --gpu GPU --vram CAP --examples N --lora-targets ...` prints; without
    `recorded`, with `--no-cuda-graphs` (the rows measured before `--recorded` timed eager steps)."""
    card = GpuSpec.from_table(gpu_model(gpu), "--gpu", int(cap_gib * GIB))
    request = PlanRequest(method="qlora", lora_targets=lora_targets(shape, target_set),
                          effective_batch_size=effective_batch, examples=examples, cuda_graphs=recorded)
    return make_plan(shape, card, request)


def plan_summary(plan: Plan) -> dict[str, Any]:
    return {"fits": plan.fits, "micro_batch_size": plan.micro_batch_size, "max_seq_len": plan.max_seq_len,
            "checkpoint_layers": plan.checkpoint_layers, "optimizer": plan.optimizer}


def predictions(plan: Plan) -> dict[str, Any]:
    return {"tokens_per_second": plan.estimated_tokens_per_second, "hours_per_epoch": plan.estimated_hours,
            "peak_bytes": plan.peak_vram_bytes,
            "allocator_peak_bytes": plan.peak_vram_bytes - COEFFICIENTS.cuda_context_bytes,
            "bound": plan.reasons["estimated_tokens_per_second"].split("-")[0], "records_steps": plan.records_steps}


# ------------------------------------------------------------------------------------------- measuring (torch)
def _sibling(name: str):
    """A module of benchmarks/ (not a package) by file name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ensure_model(name: str, models_dir: Path, tokenizer: str | None) -> Path:
    """`models_dir/name`: used as it is when it holds a config.json, else made from gpu_bench.SHAPES."""
    folder = models_dir / name
    if (folder / "config.json").is_file():
        return folder
    bench = _sibling("gpu_bench")
    if name not in bench.SHAPES or tokenizer is None:
        raise SystemExit(f"{folder} holds no model, and {name!r} cannot be made: it needs a gpu_bench.SHAPES name "
                         f"({', '.join(sorted(bench.SHAPES))}) and --tokenizer")
    bench.make_model(argparse.Namespace(shape=name, tokenizer=tokenizer, out=str(folder), vocab_size=None))
    return folder


class Examples:
    """The data file's examples at each sequence length a plan asks for, tokenized once each."""

    def __init__(self, data: str, tokenizer) -> None:
        from falcon_desktop.data import load_records

        self.records = load_records(data).records
        self.tokenizer = tokenizer
        self.by_length: dict[int, list] = {}

    def at(self, max_seq_len: int) -> list:
        from falcon_desktop.data import tokenize_records

        if max_seq_len not in self.by_length:
            self.by_length[max_seq_len] = tokenize_records(self.records, self.tokenizer, max_seq_len).examples
        return self.by_length[max_seq_len]


def choose_steps(lengths: list[int], effective_batch: int, seed: int, warmup: int, timed: int) -> list[list[int]]:
    """The row's optimizer steps, from the trainer's schedule of the first epoch (`schedule_steps`).

    Warm-up: the epoch's longest step, so the row's peak memory includes its worst, then the median one (cheaper
    than more long ones: an 8B model at 8 GiB runs ~2,000 tokens/s). Timed: the steps at evenly spaced quantiles of
    their token count, so a few steps have the epoch's mix of lengths (a small model's step costs about the same
    whatever its tokens: a random few would swing its tokens/s).
    """
    from falcon_desktop.data import schedule_steps

    steps = schedule_steps(lengths, effective_batch, seed, 0)
    steps = [step for step in steps if len(step) == effective_batch] or steps  # not the short last step
    by_tokens = sorted(steps, key=lambda step: sum(lengths[i] for i in step))
    warm = by_tokens[-1:] + [by_tokens[len(by_tokens) // 2]] * (warmup - 1)
    return warm[:warmup] + [by_tokens[min(len(by_tokens) - 1, int((k + 0.5) * len(by_tokens) / timed))]
                            for k in range(timed)]


def _free_memory(cuda: bool) -> None:
    import gc

    import torch

    gc.collect()
    if cuda:
        # cuBLAS keeps a workspace per stream it ran on, for the process's life: a recorded row's warm-up stream and
        # the recording's add two (~67 MB on the H200), which the next rows' peaks would carry (measured, session
        # 14: +0.067 GB reserved a row). A `train` process records once; so does a row.
        clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear_workspaces is not None:
            clear_workspaces()
        torch.cuda.empty_cache()


def _cap_allocator(cap_gib: float) -> int:
    """Emulate a card of `cap_gib`: the allocator gets it less what CUDA holds outside it; returns that part."""
    import torch

    free, total = torch.cuda.mem_get_info()
    outside = max(0, total - free - torch.cuda.memory_reserved())
    torch.cuda.set_per_process_memory_fraction(min(1.0, max(0.0, cap_gib * GIB - outside) / total))
    torch.cuda.reset_peak_memory_stats()
    return outside


def measure_row(loaded, shape: ModelShape, model_dir: Path, examples: Examples, target_set: str, cap_gib: float,
                settings: MatrixSettings) -> tuple[dict[str, Any], Any]:
    """Plan, then train `settings.warmup_steps + settings.steps` steps on the plan; (the row, the bare model)."""
    import torch

    from falcon_desktop.checkpoint import TrainerState
    from falcon_desktop.distributed import Cluster
    from falcon_desktop.optim import make_optimizer, warmup_cosine
    from falcon_desktop.runs import RunCard
    from falcon_desktop.step_graphs import PAD_MULTIPLE as GRAPHS_PAD_MULTIPLE
    from falcon_desktop.train import train_step
    from falcon_desktop.train_config import TrainConfig
    from falcon_desktop.train_session import Session, adapted_for_training, fit_plan_to_device, make_step_graphs

    epoch = examples.at(PlanRequest.max_seq_len)
    plan = plan_for(shape, target_set, cap_gib, settings.gpu, settings.effective_batch, len(epoch), settings.recorded)
    epoch = examples.at(plan.max_seq_len)
    lengths = [len(example.input_ids) for example in epoch]
    started = time.perf_counter()
    row: dict[str, Any] = {"targets": target_set, "lora_targets": list(plan.lora_targets), "cap_gib": cap_gib,
                           "gpu": settings.gpu, "effective_batch": settings.effective_batch,
                           "epoch_examples": len(epoch), "epoch_tokens": sum(lengths), "plan": plan_summary(plan),
                           "predicted": predictions(plan)}
    if settings.recorded:
        row.update(recorded=True, records_steps=plan.records_steps)
    if not plan.fits:
        row["status"] = "plan does not fit"
        return row, loaded.model
    cuda = loaded.device.type == "cuda"
    _free_memory(cuda)
    # What earlier rows of this process left allocated besides the model (its weights): a peak carries it.
    at_start = {"allocated_at_start_bytes": torch.cuda.memory_allocated(),
                "reserved_at_start_bytes": torch.cuda.memory_reserved()} if cuda else {}
    outside = _cap_allocator(cap_gib) if cuda else None
    run_plan = fit_plan_to_device(plan, loaded.device)  # the trainer's own CPU fallback (the test's tiny model)
    config = TrainConfig(model=str(model_dir), data=settings.data, output=model_dir / "unused-run")
    model = adapted_for_training(loaded.model, run_plan)
    optimizer = make_optimizer(model, run_plan.optimizer, run_plan.learning_rate, loaded.device)
    steps_per_epoch = -(-len(epoch) // settings.effective_batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps_per_epoch, config.warmup_fraction))
    scaler = torch.amp.GradScaler(loaded.device.type, enabled=loaded.compute_dtype == torch.float16)
    graphs = (make_step_graphs(config, run_plan, model, "eager", Cluster(), loaded.compute_dtype, scaler,
                               loaded.device) if settings.recorded else None)
    session = Session(  # what train_step reads; no run folder or evaluation, a card only for a recording's failure
        config=config, plan=run_plan, run=None, model=model, tokenizer=loaded.tokenizer, device=loaded.device,
        compute_dtype=loaded.compute_dtype, examples=epoch, lengths=lengths, eval_records=[],
        steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch, optimizer=optimizer, scheduler=scheduler,
        scaler=scaler, state=TrainerState(token_budget=run_plan.micro_batch_size * run_plan.max_seq_len),
        card=RunCard(model=str(model_dir), status="running", train={"compile_style": "eager", "cuda_graphs": True}),
        pad_multiple=GRAPHS_PAD_MULTIPLE if graphs else 1, step_graphs=graphs,
    )
    steps = choose_steps(lengths, settings.effective_batch, config.seed, settings.warmup_steps, settings.steps)
    warmup = settings.warmup_steps
    if settings.recorded:  # the timed steps once more in the warm-up: their shapes are recorded before the timing
        warmup += settings.steps
        steps = steps[:settings.warmup_steps] + steps[settings.warmup_steps:] * 2
    log, oom = [], False
    try:
        for number, indices in enumerate(steps):
            session.state.step = number
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = train_step(session, indices)
            if cuda:
                torch.cuda.synchronize()
            log.append({"seconds": round(time.perf_counter() - start, 4), "real_tokens": result.real_tokens,
                        "padded_tokens": result.padded_tokens, "loss": round(result.values.read()[0], 5)})
    except torch.cuda.OutOfMemoryError:
        oom = True
    timed = log[warmup:]
    seconds = sum(step["seconds"] for step in timed)
    speed = sum(step["real_tokens"] for step in timed) / seconds if timed and not oom else None
    row.update(status="oom" if oom else "ok", measured={
        "tokens_per_second": round(speed, 1) if speed else None,
        "hours_per_epoch": sum(lengths) / speed / 3600 if speed else None,
        "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
        "peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "outside_allocator_bytes": outside, **at_start,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "warmup_steps": warmup, "steps": log, "row_seconds": round(time.perf_counter() - started, 1),
    })
    if settings.recorded:  # whether the steps were recorded in the end (a GPU, no failure or OOM on the way)
        row["measured"]["recorded_steps"] = session.step_graphs is not None
        if session.step_graphs is not None:
            session.step_graphs.close()
    optimizer.zero_grad(set_to_none=True)
    bare = model.unload()
    del session, model, optimizer, scheduler
    _free_memory(cuda)
    return row, bare


def save_row(result: Path, name: str, model: dict, row: dict) -> None:
    """Add (or replace) one row of `result` and write it at once: a cut-off run keeps the rows it finished.

    `model` is what the table needs of the model (its config.json) and how long it took to make and load.
    """
    document = (json.loads(result.read_text(encoding="utf-8")) if result.is_file()
                else {"about": __doc__.split("\n\n")[0], "models": {}, "rows": []})
    document["models"][name] = model
    key = (name, row["targets"], row["cap_gib"])
    document["rows"] = [r for r in document["rows"] if (r["model"], r["targets"], r["cap_gib"]) != key]
    document["rows"].append({"model": name, **row})
    result.parent.mkdir(parents=True, exist_ok=True)
    write_json(result, document)


def measure_model(name: str, models_dir: Path, settings: MatrixSettings, result: Path) -> None:
    """Every (targets, cap) row of one model, in this process: load it once, then one row after another."""
    import torch

    from falcon_desktop.model import ModelSettings, load_base_model

    clock = [time.perf_counter()]

    def lap() -> float:
        clock.append(time.perf_counter())
        return round(clock[-1] - clock[-2], 1)

    model_dir = ensure_model(name, models_dir, settings.tokenizer)
    _free_memory(torch.cuda.is_available())
    made = lap()
    loaded = load_base_model(ModelSettings(str(model_dir), quantize=True))
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    model = {"config": config, "make_seconds": made, "load_seconds": lap(),
             "footprint_bytes": loaded.quantization.footprint_bytes if loaded.quantization else None}
    shape = shape_from_config(config, name, "directory")
    examples = Examples(settings.data, loaded.tokenizer)
    examples.at(PlanRequest.max_seq_len)
    print(f"[{name}] made in {made} s, loaded and quantized by our loader in {model['load_seconds']} s, data "
          f"tokenized in {lap()} s\n{HEADER}", flush=True)
    for target_set in settings.target_sets:
        for cap in settings.caps_gib:
            if time.time() > settings.deadline:
                print(f"[{name}] deadline reached: {target_set} at {cap:g} GiB and later rows not run", flush=True)
                return
            row, loaded.model = measure_row(loaded, shape, model_dir, examples, target_set, cap, settings)
            save_row(result, name, model, row)
            seconds = row.get("measured", {}).get("row_seconds", 0)
            print(f"{table_line(name, row, row['plan'], row['predicted'])} {seconds} s", flush=True)


# -------------------------------------------------------------------------------------------- the table (no torch)
HEADER = ("| model | LoRA targets | cap | plan: micro-batch x seq, ckpt | predicted tok/s | measured tok/s | error | "
          "predicted h/epoch | measured h/epoch | error | predicted GB | measured GB | error | OOM |\n"
          "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def _error(predicted: float | None, measured: float | None) -> float | None:
    return predicted / measured - 1 if predicted and measured else None


def _cell(value: float | None, form: str) -> str:
    return "n/a" if value is None else format(value, form)


def table_line(name: str, row: dict, plan: dict, predicted: dict) -> str:
    """One markdown row: `plan` and `predicted` are the planner's (then or now), the rest what was measured."""
    measured = row.get("measured", {})
    reserved = measured.get("peak_reserved_bytes")
    settings = f"{plan['micro_batch_size']}x{plan['max_seq_len']}, {plan['checkpoint_layers']} ckpt"
    if not plan["fits"]:
        settings += " (does not fit)"
    return (f"| {name} | {row['targets']} | {row['cap_gib']:g} GiB | {settings} | "
            f"{_cell(predicted['tokens_per_second'], ',.0f')} | {_cell(measured.get('tokens_per_second'), ',.0f')} | "
            f"{_cell(_error(predicted['tokens_per_second'], measured.get('tokens_per_second')), '+.1%')} | "
            f"{_cell(predicted['hours_per_epoch'], '.3f')} | {_cell(measured.get('hours_per_epoch'), '.3f')} | "
            f"{_cell(_error(predicted['hours_per_epoch'], measured.get('hours_per_epoch')), '+.1%')} | "
            f"{predicted['allocator_peak_bytes'] / 1e9:.2f} | {_cell(reserved and reserved / 1e9, '.2f')} | "
            f"{_cell(_error(predicted['allocator_peak_bytes'], reserved), '+.1%')} | "
            f"{'yes' if row.get('status') == 'oom' else 'no'} |")


def replanned(document: dict, row: dict) -> tuple[dict, dict]:
    """The planner's plan and predictions for a measured row, as the planner decides today."""
    shape = shape_from_config(document["models"][row["model"]]["config"], row["model"], "directory")
    plan = plan_for(shape, row["targets"], row["cap_gib"], row["gpu"], row["effective_batch"], row["epoch_examples"],
                    row.get("recorded", False))
    return plan_summary(plan), predictions(plan)


def row_problems(row: dict, predicted: dict) -> list[str]:
    """Why a measured row breaks the planner's promises (empty: it holds)."""
    if row.get("status") == "oom":
        return ["ran out of memory"]
    measured = row.get("measured") or {}
    problems = [f"{what} off by {error:+.1%}" for what, error in (
        ("tokens/s", _error(predicted["tokens_per_second"], measured.get("tokens_per_second"))),
        ("hours", _error(predicted["hours_per_epoch"], measured.get("hours_per_epoch"))))
        if error is not None and abs(error) > SPEED_TOLERANCE]
    memory = memory_error(row, predicted)
    if memory is not None and not MEMORY_OVER[0] <= memory <= MEMORY_OVER[1]:
        problems.append(f"memory {memory:+.1%}")
    return problems


def memory_error(row: dict, predicted: dict) -> float | None:
    """How far the predicted allocator peak lies over the measured reserved peak (MEMORY_OVER bounds it); None
    without a CUDA measurement."""
    return _error(predicted["allocator_peak_bytes"], (row.get("measured") or {}).get("peak_reserved_bytes"))


def steps_changed(row: dict, predicted: dict) -> bool:
    """Whether the planner now records the steps of a row measured as `train` runs it (`run --recorded`) where the
    row ran them eagerly, or the other way round."""
    return bool(row.get("recorded")) and predicted["records_steps"] != row.get("records_steps")


def table(result: Path) -> tuple[str, int]:
    """docs/planner.md's matrix table and its verdict; (text, exit status)."""
    document = json.loads(result.read_text(encoding="utf-8"))
    lines, notes, speed_errors, failed = [HEADER], [], [], 0
    for row in document["rows"]:
        plan, predicted = replanned(document, row)
        lines.append(table_line(row["model"], row, plan, predicted))
        where = f"{row['model']}, {row['targets']}, {row['cap_gib']:g} GiB"
        if plan != row["plan"]:
            notes.append(f"- {where}: the planner now chooses {plan}, not the measured {row['plan']}: re-measure.")
            continue
        if steps_changed(row, predicted):
            steps = "recorded" if predicted["records_steps"] else "eager"
            notes.append(f"- {where}: the planner now chooses {steps} steps, not the measured ones: re-measure.")
            continue
        if row.get("status") not in ("ok", "oom"):
            continue
        speed_errors.append(_error(predicted["tokens_per_second"], row["measured"]["tokens_per_second"]))
        problems = row_problems(row, predicted)
        failed += bool(problems)
        notes += [f"- {where}: {'; '.join(problems)}."] if problems else []
    worst = max((abs(error) for error in speed_errors if error is not None), default=0.0)
    summary = (f"\n{len(document['rows'])} rows, {len(speed_errors)} measured on the plan the planner makes today; "
               f"{failed} break the promises (tokens/s and hours within ±{SPEED_TOLERANCE:.0%}, memory "
               f"{MEMORY_OVER[0]:+.0%} to {MEMORY_OVER[1]:+.0%} over the measured peak, no OOM); worst tokens/s "
               f"error {worst:.1%}.")
    return "\n".join(lines + [summary] + notes), 1 if failed else 0


# ------------------------------------------------------------------------------------------------------- commands
def run(args: argparse.Namespace) -> int:
    """One child process per model (clean CUDA state, one load each), then the table."""
    deadline = time.time() + args.budget_s
    scratch = None if args.models_dir else Path(tempfile.mkdtemp(prefix="planner-matrix-"))
    models_dir = Path(args.models_dir) if args.models_dir else scratch
    common = ["--data", args.data, "--result", args.result, "--models-dir", str(models_dir), "--gpu", args.gpu,
              "--targets", args.targets, "--caps", args.caps, "--effective-batch", str(args.effective_batch),
              "--warmup-steps", str(args.warmup_steps), "--steps", str(args.steps), "--deadline", str(deadline)]
    if args.tokenizer:
        common += ["--tokenizer", args.tokenizer]
    if args.recorded:
        common.append("--recorded")
    try:
        for name in args.models.split(","):
            if time.time() > deadline:
                print(f"[{name}] budget of {args.budget_s:g} s spent: not run", flush=True)
                continue
            child = subprocess.run([sys.executable, __file__, "model", "--model", name, *common], check=False)
            if child.returncode:
                print(f"[{name}] failed (exit {child.returncode}); its finished rows are kept", flush=True)
            if scratch:
                shutil.rmtree(scratch / name, ignore_errors=True)  # disk: the 8B's bf16 weights are 16 GB
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    if not Path(args.result).is_file():
        print("No row was measured.", file=sys.stderr)
        return 1
    text, status = table(Path(args.result))
    print(text, flush=True)
    return status


def settings_from(args: argparse.Namespace) -> MatrixSettings:
    return MatrixSettings(data=args.data, tokenizer=args.tokenizer, gpu=args.gpu,
                          target_sets=tuple(args.targets.split(",")),
                          caps_gib=tuple(float(cap) for cap in args.caps.split(",")),
                          effective_batch=args.effective_batch, warmup_steps=args.warmup_steps, steps=args.steps,
                          deadline=args.deadline, recorded=args.recorded)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    shown = sub.add_parser("table", help="the committed measurements vs the planner of today")
    shown.add_argument("--result", default=str(RESULT))
    for name in ("run", "model"):
        command = sub.add_parser(name, help="measure the matrix, one process per model" if name == "run" else
                                 "one model's rows (what `run` starts per model)")
        command.add_argument("--data", required=True, help="SQuAD JSON (the shared dev half)")
        command.add_argument("--tokenizer", help="folder of the Falcon tokenizer, for making the models")
        command.add_argument("--result", default=str(RESULT))
        command.add_argument("--models-dir", help="where the models are made (default: a temporary folder)")
        command.add_argument("--gpu", default="H200", help="the planner's table entry for this card")
        command.add_argument("--targets", default=",".join(TARGET_SETS), help="all,attention")
        command.add_argument("--caps", default=",".join(f"{cap:g}" for cap in CAPS_GIB), help="GiB, e.g. 8,24,12")
        command.add_argument("--effective-batch", type=int, default=PlanRequest.effective_batch_size)
        command.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS)
        command.add_argument("--steps", type=int, default=TIMED_STEPS, help="timed steps after the warm-up")
        command.add_argument("--recorded", action="store_true",
                             help="plan as `train` does and record the steps as CUDA graphs where the plan records "
                                  "them; the timed steps run once in the warm-up, so their shapes are recorded")
    sub.choices["run"].add_argument("--models", default=",".join(MODELS), help="gpu_bench.SHAPES names")
    sub.choices["run"].add_argument("--budget-s", type=float, default=float("inf"),
                                    help="start no model or row after this many seconds")
    sub.choices["model"].add_argument("--model", required=True)
    sub.choices["model"].add_argument("--deadline", type=float, default=float("inf"), help="time.time() to stop at")
    args = parser.parse_args()
    if args.command == "table":
        text, status = table(Path(args.result))
        print(text)
        return status
    if args.command == "run":
        return run(args)
    os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")  # as the CLI sets it, before CUDA starts
    measure_model(args.model, Path(args.models_dir or tempfile.mkdtemp()), settings_from(args), Path(args.result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
