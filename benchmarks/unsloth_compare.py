"""Unsloth side by side with `falcon-desktop train`, on the same work, in one command (issue #16).

    python benchmarks/unsloth_compare.py run --model DIR --data SQUAD.json --examples 1024 --steps 30 --out DIR

What is the same on both sides, and how:
- data: the first `--examples` questions of the SQuAD file, tokenized by falcon-desktop's pipeline (its prompt
  template, answer + EOS labelled, IGNORE_INDEX elsewhere). Our trainer runs first; its run card fixes the plan and
  the settings, and the Unsloth side gets exactly the micro-batches our trainer fed, rebuilt with the trainer's own
  functions (schedule_steps, step_micro_batches) from the card's seed and token budget, and checked step
  by step against the trainer's metrics.jsonl (real tokens, padded tokens, examples).
- LoRA rank, alpha, dropout and targets; the optimizer (falcon_desktop.optim.make_optimizer, the plan's choice),
  learning rate, warmup + cosine schedule, gradient clipping, effective batch and number of optimizer steps.
- loss: per answer token, summed over the step's labelled tokens and divided by their count, over all its
  micro-batches (Unsloth's fused cross-entropy gets `num_items_in_batch`, the step's labelled tokens).
- memory cap: torch.cuda.set_per_process_memory_fraction to `--vram` GiB in each side's process; checkpointing on
  the Unsloth side ("unsloth") wherever our plan checkpoints any layer, off where it checkpoints none.
`--compile`: our side compiles its decoder layers too (Unsloth always compiles its own; each pays it in the warm-up
steps); our micro-batches are then padded as the trainer pads them (to multiples of 8, or 64 where it replays CUDA
graphs: model.PAD_MULTIPLE), and the Unsloth side gets those same padded batches; so are the batches of a run whose
steps `train` recorded as CUDA graphs (to 64, step_graphs.py).
Each side runs in its own process (Unsloth patches transformers when imported, so it is imported first there);
an Unsloth failure is recorded as its error text in the JSON instead of ending the benchmark.
Reported per side: real (non-padding) tokens/s after the warm-up steps, peak reserved VRAM, the loss per optimizer
step, training and wall seconds; then the speed ratio and the max/mean absolute difference of the loss curves.
The curves start equal (LoRA B starts at 0) and drift apart only through each side's random LoRA A init and
dropout masks, and kernel rounding.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
for folder in (ROOT, BENCHMARKS):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from gpu_bench import WARMUP_STEPS, synchronize, cap_memory, summarise

LLAMA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "UNSLOTH_DISABLE_STATISTICS": "1"}


# ------------------------------------------------------------------------------------------------------- the data
def first_questions(squad: dict, count: int) -> dict:
    """The SQuAD file cut to its first `count` questions in file order, articles and paragraphs kept."""
    articles, left = [], count
    for article in squad["data"]:
        paragraphs = []
        for paragraph in article["paragraphs"]:
            if left <= 0:
                break
            questions = paragraph["qas"][:left]
            left -= len(questions)
            paragraphs.append({**paragraph, "qas": questions})
        if paragraphs:
            articles.append({**article, "paragraphs": paragraphs})
        if left <= 0:
            break
    return {**squad, "data": articles}


def read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """Our run's card and its per-step metrics."""
    card = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return card, [json.loads(line) for line in lines if line.strip()]


def trainer_batches(card: dict, model_dir: str) -> list[list[dict]]:
    """The micro-batches of every optimizer step of our run, rebuilt as the trainer builds them (train_session.py
    `setup`, train.py `_step_indices` and `train_step`) from its card: data split, tokenization, seed, effective
    batch, token budget."""
    from falcon_desktop.data import (
        load_records,
        schedule_steps,
        split_by_article,
        step_micro_batches,
        tokenize_records,
    )
    from falcon_desktop.model import PAD_MULTIPLE, load_tokenizer
    from falcon_desktop.step_graphs import PAD_MULTIPLE as GRAPHS_PAD_MULTIPLE

    plan, train = card["plan"], card["train"]
    tokenizer = load_tokenizer(model_dir)
    records = load_records(train["data"], strict=train["strict_data"]).records
    train_records, _ = split_by_article(records, train["eval_fraction"], train["seed"])
    examples = tokenize_records(train_records, tokenizer, plan["max_seq_len"]).examples
    lengths = [len(example.input_ids) for example in examples]
    batch = plan["effective_batch_size"]
    steps_per_epoch = math.ceil(len(examples) / batch)
    budget = plan["micro_batch_size"] * plan["max_seq_len"]
    # Cards written before compile_style was recorded padded compiled runs to 8 ("kernels"); recorded steps pad to 64
    # (a run that stopped recording mid-way says cuda_graphs false, and when: its steps before that were recorded).
    unrecorded_pad = PAD_MULTIPLE[train.get("compile_style", "kernels" if train.get("compile") else "eager")]
    stops = [event["step"] for event in card.get("events", []) if event.get("event") == "cuda_graphs_off"]
    recorded_until = card["total_steps"] if train.get("cuda_graphs") else min(stops, default=1) - 1
    schedules: dict[int, list[list[int]]] = {}
    steps = []
    for step in range(card["total_steps"]):
        epoch, index = divmod(step, steps_per_epoch)
        if epoch not in schedules:
            schedules[epoch] = schedule_steps(lengths, batch, train["seed"], epoch)
        indices = schedules[epoch][index]
        pad_multiple = GRAPHS_PAD_MULTIPLE if step < recorded_until else unrecorded_pad
        steps.append(step_micro_batches(examples, indices, lengths, budget, tokenizer.pad_token_id, pad_multiple))
    return steps


def batch_mismatches(steps: list[list[dict]], history: list[dict], card: dict) -> list[str]:
    """Where the rebuilt batches differ from what our trainer logged per step (empty: the same batches)."""
    problems = [f"our trainer lowered its token budget after a CUDA OOM at step {event['step']}"
                for event in card.get("events", []) if event.get("event") == "cuda_oom"]
    if len(steps) != len(history):
        problems.append(f"{len(steps)} rebuilt steps, {len(history)} logged")
    for number, (batches, logged) in enumerate(zip(steps, history), 1):
        rebuilt = {"real_tokens": sum(b["real_tokens"] for b in batches),
                   "padded_tokens": sum(b["input_ids"].numel() for b in batches),
                   "samples": sum(len(b["input_ids"]) for b in batches)}
        differing = {key: (value, logged[key]) for key, value in rebuilt.items() if logged[key] != value}
        if differing:
            problems.append(f"step {number}: rebuilt vs logged {differing}")
    return problems


# ------------------------------------------------------------------------------------------------- the two sides
def run_ours(args: argparse.Namespace) -> dict:
    """Our real trainer through its command line, in this process under the memory cap."""
    from falcon_desktop.cli import main as falcon_desktop

    if torch.cuda.is_available():
        cap_memory(args.vram)
    timer = None
    if args.profile_step:  # train_step calls the name train.py imports from optim, so that is the one to wrap
        import falcon_desktop.train as trainer
        from step_profile import StepTimer

        timer = trainer.optimizer_step = StepTimer(trainer.optimizer_step, WARMUP_STEPS, args.profile_step)
    started = time.perf_counter()
    status = falcon_desktop(["train", *args.train_args])
    if status != 0:
        raise SystemExit(f"falcon-desktop train exited with status {status}")
    card, history = read_run(Path(args.run_dir))
    steps = [{key: record[key] for key in ("seconds", "real_tokens", "padded_tokens", "samples", "loss")}
             for record in history]
    plan = card["plan"]
    layers = json.loads((Path(card["model"]) / "config.json").read_text(encoding="utf-8")).get("num_hidden_layers")
    return summarise("falcon-desktop", steps, plan["total_params"], {
        "train_seconds": round(sum(s["seconds"] for s in steps), 2),
        "process_seconds": round(time.perf_counter() - started, 1),
        "checkpointing": f"{plan['checkpoint_layers']} of {layers} layers",
        "micro_batch_size": plan["micro_batch_size"],
        "oom_events": card.get("measured", {}).get("oom_events"),
        **({"profile": timer.profile} if timer else {}),
    })


def unsloth_checkpointing(plan: dict) -> str | bool:
    """Unsloth's setting for our plan's choice: its offloaded checkpointing wherever we checkpoint any layer."""
    return "unsloth" if plan["checkpoint_layers"] > 0 else False


def train_on_batches(model: torch.nn.Module, steps: list[list[dict]], card: dict, profile_at: int = 0,
                     profile: dict | None = None) -> list[dict]:
    """Our optimizer step (optim.py `optimizer_step`) driven through `model(input_ids, labels)`'s own loss.

    `num_items_in_batch` makes that loss sum / the step's labelled tokens (Unsloth's fused cross-entropy and
    transformers' loss both take it), so the micro-batches' losses add up to our loss per answer token.
    """
    from falcon_desktop.loss import count_label_tokens
    from falcon_desktop.optim import make_optimizer, warmup_cosine_phases

    plan, train = card["plan"], card["train"]
    device = next(p for p in model.parameters() if p.requires_grad).device
    dtype = getattr(torch, plan["compute_dtype"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(model, plan["optimizer"], train["learning_rate"], device)
    phases = card.get("schedule") or [[0, card["total_steps"]]]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine_phases(phases, train["warmup_fraction"]))
    model.train()
    records = []
    window = None
    for number, batches in enumerate(steps, 1):
        if number == profile_at:
            from step_profile import ProfileWindow

            window = ProfileWindow()
        synchronize()
        start = time.perf_counter()
        label_tokens = torch.tensor(sum(count_label_tokens(b["labels"]) for b in batches), device=device)
        total = torch.zeros((), device=device)
        for batch in batches:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = model(input_ids=batch["input_ids"].to(device), labels=batch["labels"].to(device),
                             num_items_in_batch=label_tokens).loss
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(trainable, train["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step_loss = float(total)
        synchronize()
        seconds = time.perf_counter() - start
        records.append({"seconds": seconds, "loss": step_loss, "samples": sum(len(b["input_ids"]) for b in batches),
                        "real_tokens": sum(b["real_tokens"] for b in batches),
                        "padded_tokens": sum(b["input_ids"].numel() for b in batches)})
        print(f"unsloth step {number}/{len(steps)}: loss {step_loss:.4f}, {seconds:.2f} s", flush=True)
        if window is not None and (summary := window.after_step(len(batches))) is not None:
            profile.update(summary)
            window = None
    return records


def run_unsloth(args: argparse.Namespace) -> dict:
    """Unsloth's FastLanguageModel on our batches, in this process (unsloth imported before transformers)."""
    import unsloth  # first: it patches transformers, peft and bitsandbytes as they import
    from unsloth import FastLanguageModel

    if torch.cuda.is_available():
        cap_memory(args.vram)
    started = time.perf_counter()
    card, _ = read_run(Path(args.run_dir))
    plan, train = card["plan"], card["train"]
    steps = torch.load(args.batches, weights_only=True)
    checkpointing = unsloth_checkpointing(plan)
    model, _tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(args.model), max_seq_length=plan["max_seq_len"], dtype=getattr(torch, plan["compute_dtype"]),
        load_in_4bit=True, use_gradient_checkpointing=checkpointing, random_state=train["seed"],
    )
    model = FastLanguageModel.get_peft_model(
        model, r=plan["lora_r"], target_modules=list(plan["lora_targets"]), lora_alpha=plan["lora_alpha"],
        lora_dropout=plan["lora_dropout"], bias="none", use_gradient_checkpointing=checkpointing,
        random_state=train["seed"],
    )
    FastLanguageModel.for_training(model, use_gradient_checkpointing=checkpointing)
    loaded_seconds = time.perf_counter() - started
    profile: dict = {}
    records = train_on_batches(model, steps, card, args.profile_step, profile)
    return summarise("unsloth", records, plan["total_params"], {
        "unsloth_version": getattr(unsloth, "__version__", "?"),
        "train_seconds": round(sum(r["seconds"] for r in records), 2),
        "load_seconds": round(loaded_seconds, 1),
        "process_seconds": round(time.perf_counter() - started, 1),
        "checkpointing": checkpointing,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        **({"profile": profile} if profile else {}),
    })


# -------------------------------------------------------------------------------------------------- the command
def _side(command: list[str], result: Path, log: Path, env: dict, cwd: Path) -> dict:
    """One side in its own process (its stderr shown and kept in `log`); its JSON result, or its failure as text."""
    result.unlink(missing_ok=True)
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as kept, subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), command[0], "--result", str(result), *command[1:]], env=env, cwd=cwd,
        stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
    ) as process:
        for line in process.stderr:
            kept.write(line)
            sys.stderr.write(line)
            sys.stderr.flush()
    status = process.returncode
    wall = round(time.perf_counter() - started, 1)
    written = json.loads(result.read_text(encoding="utf-8")) if result.is_file() else {}
    if status == 0 and written and "error" not in written:
        return {**written, "wall_seconds": wall}
    tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
    return {"name": command[0], "error": written.get("error") or tail or f"exit status {status}",
            "exit_status": status, "wall_seconds": wall}


def train_arguments(args: argparse.Namespace, data: Path, run_dir: Path) -> list[str]:
    """`falcon-desktop train` flags for the benchmark: the whole file trains (nothing held out, no evaluation)."""
    flags = ["--model", str(args.model), "--data", str(data), "--output", str(run_dir), "--overwrite",
             "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
             "--lora-r", "16", "--lora-targets", args.lora_targets, "--vram", f"{args.vram:g}",
             "--eval-fraction", "0", "--eval-examples", "0", "--save-every", str(10**6)]
    if args.micro_batch:
        flags += ["--micro-batch", str(args.micro_batch)]
    if args.lora_dropout is not None:
        flags += ["--lora-dropout", f"{args.lora_dropout:g}"]
    if args.device:
        flags += ["--device", args.device]
    if args.compile:
        flags.append("--compile")
    return flags


def comparison(ours: dict, peer: dict) -> dict:
    """Speed ratio and loss-curve differences, where both sides finished."""
    if "error" in ours or "error" in peer:
        return {"complete": False}
    differences = [abs(a - b) for a, b in zip(ours["losses"], peer["losses"])]
    return {
        "complete": True,
        "unsloth_over_ours_speed": round(peer["real_tokens_per_second"] / ours["real_tokens_per_second"], 3),
        "ours_over_unsloth_speed": round(ours["real_tokens_per_second"] / peer["real_tokens_per_second"], 3),
        # Without either side's compiling steps (over 3x its median step), where both runs recorded them.
        "ours_over_unsloth_steady_speed": round(ours["steady_tokens_per_second"] / peer["steady_tokens_per_second"], 3)
        if ours.get("steady_tokens_per_second") and peer.get("steady_tokens_per_second") else None,
        "loss_abs_difference_max": round(max(differences), 5),
        "loss_abs_difference_mean": round(sum(differences) / len(differences), 5),
        "first_step_loss_difference": round(differences[0], 5),
        **step_by_step(ours, peer),
    }


def step_by_step(ours: dict, peer: dict) -> dict:
    """Our step's seconds over the peer's on the same batch, after the warm-up: the median over the timed steps, and
    over the smaller and the larger half of them by padded tokens (where a host-bound and a GPU-bound gap show
    apart). Empty where a side did not record its steps."""
    if not (ours.get("step_seconds") and peer.get("step_seconds")):
        return {}
    ratios = sorted((tokens, mine / theirs) for tokens, mine, theirs in zip(
        ours["step_padded_tokens"][WARMUP_STEPS:], ours["step_seconds"][WARMUP_STEPS:],
        peer["step_seconds"][WARMUP_STEPS:]))
    half = len(ratios) // 2
    return {"step_time_ratio_median": _median([r for _, r in ratios]),
            "step_time_ratio_median_smaller_half": _median([r for _, r in ratios[:half]]),
            "step_time_ratio_median_larger_half": _median([r for _, r in ratios[half:]])}


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def table(sides: list[dict], compared: dict) -> str:
    rows = ["| side | real tokens/s | steady tokens/s | peak reserved | train s | wall s | loss first → last | "
            "checkpointing |", "|---|---:|---:|---:|---:|---:|---|---|"]
    for side in sides:
        if "error" in side:
            first_line = side["error"].strip().splitlines()[-1][:100] if side["error"].strip() else "?"
            rows.append(f"| {side['name']} | failed: {first_line} | | | | {side['wall_seconds']} | | |")
            continue
        rows.append(f"| {side['name']} | {side['real_tokens_per_second']:,.0f} | "
                    f"{side.get('steady_tokens_per_second') or 0:,} | {side['peak_reserved_bytes'] / 2**30:.1f} GiB | "
                    f"{side['train_seconds']} | {side['wall_seconds']} | "
                    f"{side['losses'][0]:.4f} → {side['losses'][-1]:.4f} | {side['checkpointing']} |")
    if compared.get("complete"):
        rows.append("")
        rows.append(f"Unsloth / ours speed: {compared['unsloth_over_ours_speed']:.2f}x; loss curves differ by at most "
                    f"{compared['loss_abs_difference_max']:.4f} (mean {compared['loss_abs_difference_mean']:.4f}, "
                    f"first step {compared['first_step_loss_difference']:.4f}).")
        if compared.get("step_time_ratio_median") is not None:
            rows.append(f"Step by step, our seconds over Unsloth's on the same batch (median): "
                        f"{compared['step_time_ratio_median']:.2f}x; the smaller half of the steps "
                        f"{compared['step_time_ratio_median_smaller_half']:.2f}x, the larger "
                        f"{compared['step_time_ratio_median_larger_half']:.2f}x.")
    return "\n".join(rows)


def run_compare(args: argparse.Namespace) -> dict:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    squad = json.loads(Path(args.data).read_text(encoding="utf-8"))
    data = out / "data.json"
    data.write_text(json.dumps(first_questions(squad, args.examples)), encoding="utf-8")
    run_dir = out / "ours-run"
    env = {**os.environ, **OFFLINE, "PYTHONPATH": os.pathsep.join(
        [p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p])}
    print(f"[unsloth_compare] ours: falcon-desktop train on {args.examples} questions, {args.steps} steps", flush=True)
    profiling = ["--profile-step", str(args.profile_step)]
    ours = _side(["ours", "--vram", str(args.vram), "--run-dir", str(run_dir), *profiling, "--",
                  *train_arguments(args, data, run_dir)], out / "ours.json", out / "ours-stderr.log", env, out)
    result = {"model": str(args.model), "data": str(args.data), "examples": args.examples, "steps": args.steps,
              "warmup_steps_excluded": WARMUP_STEPS, "vram_cap_gib": args.vram, "ours": ours}
    if "error" in ours:
        result["unsloth"] = {"name": "unsloth", "error": "not run: our side failed, so there is no plan to match",
                             "wall_seconds": 0}
    else:
        card, history = read_run(run_dir)
        steps = trainer_batches(card, str(args.model))
        result["batch_mismatches"] = batch_mismatches(steps, history, card)
        result["same_batches"] = not result["batch_mismatches"]
        plan = card["plan"]
        result["settings"] = {
            "effective_batch_size": plan["effective_batch_size"], "micro_batch_token_budget":
                plan["micro_batch_size"] * plan["max_seq_len"], "micro_batches_per_step": [len(s) for s in steps],
            "max_seq_len": plan["max_seq_len"], "lora": {k: plan[k] for k in ("lora_r", "lora_alpha", "lora_dropout",
                                                                               "lora_targets")},
            "optimizer": plan["optimizer"], "learning_rate": card["train"]["learning_rate"],
            "warmup_fraction": card["train"]["warmup_fraction"], "max_grad_norm": card["train"]["max_grad_norm"],
            "compute_dtype": plan["compute_dtype"], "our_checkpoint_layers": plan["checkpoint_layers"],
            "unsloth_gradient_checkpointing": unsloth_checkpointing(plan),
        }
        torch.save(steps, out / "batches.pt")
        print(f"[unsloth_compare] unsloth: same {len(steps)} steps, same batches: {result['same_batches']}", flush=True)
        with tempfile.TemporaryDirectory() as scratch:  # Unsloth writes its compiled cache into the working folder
            result["unsloth"] = _side(["unsloth", "--model", str(Path(args.model).resolve()), "--vram", str(args.vram),
                                       "--run-dir", str(run_dir), "--batches", str(out / "batches.pt"), *profiling],
                                      out / "unsloth.json", out / "unsloth-stderr.log", env, Path(scratch))
    result["comparison"] = comparison(ours, result["unsloth"])
    result["table"] = table([ours, result["unsloth"]], result["comparison"])
    (out / "unsloth_compare.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(result["table"], flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="both sides, then the comparison (the benchmark)")
    run.add_argument("--model", required=True, help="model folder (gpu_bench.py make-model)")
    run.add_argument("--data", required=True, help="SQuAD v2 JSON")
    run.add_argument("--examples", type=int, default=1024, help="the first N questions of --data")
    run.add_argument("--steps", type=int, default=30, help="optimizer steps on each side")
    run.add_argument("--batch-size", type=int, default=32, help="effective batch: examples per optimizer step")
    run.add_argument("--micro-batch", type=int, help="force our plan's micro-batch (default: the plan's)")
    run.add_argument("--seq-len", type=int, default=512)
    run.add_argument("--lora-targets", default=LLAMA_TARGETS)
    run.add_argument("--lora-dropout", type=float, help="default: ours (falcon-desktop train's default)")
    run.add_argument("--vram", type=float, default=24.0, help="memory cap in GiB, each side")
    run.add_argument("--device", help="our trainer's --device (cpu for the CPU test)")
    run.add_argument("--compile", action="store_true",
                     help="our side with `train --compile` (Unsloth compiles its own; each pays it in the warm-up)")
    run.add_argument("--out", required=True, help="folder for the results")
    run.add_argument("--profile-step", type=int, default=0,
                     help="profile 3 steps from this one on each side (where the GPU time goes: each side's JSON, "
                          "`profile`); those steps run slower")
    ours = sub.add_parser("ours", help="one side: our trainer (run starts it)")
    ours.add_argument("--vram", type=float, required=True)
    ours.add_argument("--run-dir", required=True)
    ours.add_argument("--result", required=True)
    ours.add_argument("--profile-step", type=int, default=0)
    ours.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: falcon-desktop train's flags")
    peer = sub.add_parser("unsloth", help="one side: Unsloth on our batches (run starts it)")
    peer.add_argument("--model", required=True)
    peer.add_argument("--vram", type=float, required=True)
    peer.add_argument("--run-dir", required=True)
    peer.add_argument("--batches", required=True)
    peer.add_argument("--result", required=True)
    peer.add_argument("--profile-step", type=int, default=0)
    args = parser.parse_args()
    if args.command == "run":
        run_compare(args)
        return 0
    if args.command == "ours":
        args.train_args = [a for a in args.train_args if a != "--"]
    result_path = Path(args.result)
    try:
        result = run_ours(args) if args.command == "ours" else run_unsloth(args)
    except BaseException as error:  # recorded for the comparison, then re-raised for the exit status
        result_path.write_text(json.dumps({"name": args.command, "error": "".join(
            traceback.format_exception(error))[-4000:]}, indent=2) + "\n", encoding="utf-8")
        raise
    result_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
