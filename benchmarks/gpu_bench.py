"""GPU benchmark: the tutorials' Trainer recipe vs `falcon-desktop train`, under an emulated desktop VRAM cap.

One process per run (clean memory statistics). Subcommands:
  make-model  --shape SHAPE --tokenizer DIR --out DIR               random weights of a SHAPES entry, bf16 safetensors
  hf          --recipe seed|careful ...                              transformers Trainer (the baseline)
  ours        ...                                                    falcon-desktop's planner + trainer
  compare     --model DIR --data FILE --out DIR                      seed recipe, careful user and ours, one after
                                                                     the other, then the comparison table
Every run writes one JSON result: real (non-padding) tokens/s after warm-up, samples/s, peak allocated/reserved VRAM,
padding efficiency, MFU = 4 x params x tokens/s / bf16 peak (LoRA: forward 2N + input-gradient backward 2N; the
recomputation of checkpointed layers is not counted as useful work), and the loss per step.
`compare` is the headline in one command; results are committed under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

GIB = 1024**3
WARMUP_STEPS = 3
# Measured on the test H100 (8192^3 bf16 matmul, KINDS.md: 798 TFLOP/s); used as the MFU denominator.
H100_BF16_PEAK = 798e12

SHAPES = {
    # Falcon-7B as published (tiiuae/falcon-7b config.json, current `falcon` keys).
    "falcon-7b": dict(model_type="falcon", hidden_size=4544, num_hidden_layers=32, num_attention_heads=71,
                      multi_query=True, new_decoder_architecture=False, parallel_attn=True, bias=False,
                      alibi=False, vocab_size=65024, bos_token_id=11, eos_token_id=11),
    # Falcon-40B as published (falcon_desktop/assets/presets/falcon-40b.json): the multi-GPU FSDP measurement's model.
    "falcon-40b": dict(model_type="falcon", hidden_size=8192, num_hidden_layers=60, num_attention_heads=128,
                       num_kv_heads=8, new_decoder_architecture=True, parallel_attn=True, bias=False, alibi=False,
                       vocab_size=65024, bos_token_id=11, eos_token_id=11),
    # TinyLlama-1.1B's dimensions with Falcon's 65,024-token vocabulary, so the Falcon tokenizer drives it.
    "llama-1b": dict(model_type="llama", hidden_size=2048, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4, intermediate_size=5632, vocab_size=65024, tie_word_embeddings=False,
                     bos_token_id=11, eos_token_id=11, max_position_embeddings=4096),
    # SmolLM2-135M's dimensions (tied embeddings) with Falcon's 65,024-token vocabulary instead of its 49,152, so the
    # Falcon tokenizer's ids all have an embedding row; the planner reads this config, so it prices the same model.
    "smollm2-135m": dict(model_type="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, vocab_size=65024,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                         tie_word_embeddings=True, bos_token_id=11, eos_token_id=11, max_position_embeddings=8192),
    # Llama-3-8B's dimensions (meta-llama/Meta-Llama-3-8B config.json) with Falcon's EOS id, so the Falcon tokenizer
    # drives it: its ids (< 65,024) are all valid rows of the 128,256-row embedding.
    "llama-3-8b": dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, bos_token_id=11,
                       eos_token_id=11, max_position_embeddings=8192),
}


def cap_memory(vram_gib: float) -> None:
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, vram_gib * GIB / total), 0)


def make_model(args: argparse.Namespace) -> None:
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(SHAPES[args.shape])
    if args.vocab_size:  # e.g. spare rows beyond the tokenizer's, for a peer that adds its own pad token
        fields["vocab_size"] = args.vocab_size
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    out = Path(args.out)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(Path(args.tokenizer) / name, out / name)
    print(json.dumps({"shape": args.shape, "params": sum(p.numel() for p in model.parameters()), "dir": str(out)}))


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def load_examples(model_dir: str, data: str, max_seq_len: int):
    from falcon_desktop.data import load_records, tokenize_records
    from falcon_desktop.model import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    records = load_records(data).records
    return tokenizer, tokenize_records(records, tokenizer, max_seq_len).examples


def steady_tokens_per_second(walls: list[float], tokens: list[int]) -> int | None:
    """Tokens/s without the steps over 3x the median step: the pace once compiling (new shapes) is done."""
    if not walls:
        return None
    median = sorted(walls)[len(walls) // 2]
    kept = [(wall, count) for wall, count in zip(walls, tokens, strict=True) if wall <= 3 * median]
    return round(sum(count for _, count in kept) / sum(wall for wall, _ in kept))


def summarise(name: str, steps: list[dict], params: int, extra: dict) -> dict:
    """Aggregate per-step records {seconds, real_tokens, padded_tokens, samples, loss} after the warm-up steps."""
    timed = steps[WARMUP_STEPS:] or steps
    seconds = sum(s["seconds"] for s in timed)
    real = sum(s["real_tokens"] for s in timed)
    padded = sum(s["padded_tokens"] for s in timed)
    tokens_per_second = real / seconds
    return {
        "name": name,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "params": params,
        "steps": len(steps),
        "timed_steps": len(timed),
        "real_tokens_per_second": round(tokens_per_second, 1),
        "steady_tokens_per_second": steady_tokens_per_second([s["seconds"] for s in timed],
                                                             [s["real_tokens"] for s in timed]),
        "samples_per_second": round(sum(s["samples"] for s in timed) / seconds, 2),
        "padding_efficiency": round(real / padded, 4) if padded else None,
        "mfu": round(4 * params * tokens_per_second / H100_BF16_PEAK, 4),
        "mfu_peak_flops": H100_BF16_PEAK,
        "peak_allocated_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0,
        "peak_reserved_bytes": torch.cuda.max_memory_reserved() if torch.cuda.is_available() else 0,
        "losses": [round(s["loss"], 5) for s in steps],
        "step_seconds": [round(s["seconds"], 4) for s in steps],
        "step_padded_tokens": [s["padded_tokens"] for s in steps],
        **extra,
    }


def run_hf(args: argparse.Namespace) -> dict:
    """The tutorials' recipe: transformers Trainer, prepare_model_for_kbit_training, per-example tokenization."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

    from falcon_desktop.model import ModelSettings, load_base_model

    set_seed(args.seed)  # the LoRA weights are drawn before the Trainer seeds anything
    tokenizer, examples = load_examples(args.model, args.data, args.seq_len)
    model = load_base_model(ModelSettings(args.model, quantize=True, device="auto")).model
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                                             target_modules=args.targets.split(","), task_type="CAUSAL_LM"))
    rows = [{"input_ids": list(e.input_ids), "labels": [-100] * e.prompt_len + list(e.input_ids[e.prompt_len:])}
            for e in examples]
    pad = tokenizer.pad_token_id
    step_log: list[dict] = []
    pending = {"real": 0, "padded": 0, "samples": 0}

    def collate(batch: list[dict]) -> dict:
        longest = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), longest), pad)
        labels = torch.full((len(batch), longest), -100)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
            mask[i, : len(r["input_ids"])] = 1
        pending["real"] += int(mask.sum())
        pending["padded"] += ids.numel()
        pending["samples"] += len(batch)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            synchronize()
            step_log.append({"seconds": time.perf_counter() - self.start, "real_tokens": pending["real"],
                             "padded_tokens": pending["padded"], "samples": pending["samples"], "loss": math.nan})
            pending.update(real=0, padded=0, samples=0)

        def on_log(self, _args, state, control, logs=None, **k):
            if logs and "loss" in logs and step_log:
                step_log[-1]["loss"] = logs["loss"]

    batch, accumulation = (1, 4) if args.recipe == "seed" else (args.batch, args.accumulation)
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
            gradient_checkpointing=True, optim="paged_adamw_8bit", learning_rate=args.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, round(0.03 * args.steps)), bf16=True, max_steps=args.steps, logging_steps=1,
            report_to=[], save_strategy="no", dataloader_num_workers=0, remove_unused_columns=False, seed=args.seed,
            use_cpu=not torch.cuda.is_available(),  # the CPU test of this harness
        )
        Trainer(model=model, args=training_args, train_dataset=rows, data_collator=collate,
                callbacks=[Timer()]).train()
    if args.save_adapter:  # for benchmarks/quality.py: score this recipe's adapter with `falcon-desktop eval`
        save_adapter_run(Path(args.save_adapter), model, tokenizer, args.model, len(step_log))
    from falcon_desktop.shapes import load_shape

    return summarise(f"hf-{args.recipe}", step_log, load_shape(args.model).total_params,
                     {"micro_batch": batch, "gradient_accumulation": accumulation, "effective_batch": batch * accumulation})


def save_adapter_run(run_dir: Path, model, tokenizer, base: str, steps: int) -> None:
    """The adapter and a minimal run card, laid out as `falcon-desktop train` lays them out."""
    model.save_pretrained(str(run_dir / "adapter"))
    tokenizer.save_pretrained(str(run_dir / "adapter"))
    card = {"model": base, "status": "finished", "steps": steps, "train": {"quantize": True}, "recipe": "hf-trainer"}
    (run_dir / "run.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def run_ours(args: argparse.Namespace) -> dict:
    from dataclasses import replace

    from falcon_desktop.plan import GpuSpec, PlanRequest, make_plan
    from falcon_desktop.shapes import load_shape
    from falcon_desktop.train import TrainConfig, run_training

    shape = load_shape(args.model)
    on_gpu = torch.cuda.is_available()
    gpu = GpuSpec(name=f"{args.vram:g} GiB cap on {torch.cuda.get_device_name() if on_gpu else 'cpu'}",
                  vram_bytes=int(args.vram * GIB), compute_capability=torch.cuda.get_device_capability() if on_gpu
                  else None, bf16_tflops=H100_BF16_PEAK / 1e12, watts=None, source="--vram")
    request = PlanRequest(method="qlora", lora_targets=tuple(args.targets.split(",")), max_seq_len=args.seq_len,
                          effective_batch_size=args.effective_batch, micro_batch_size=args.micro_batch,
                          gradient_checkpointing=args.checkpointing)
    plan = make_plan(shape, gpu, request)
    if args.checkpoint_layers is not None:
        plan = replace(plan, checkpoint_layers=args.checkpoint_layers, gradient_checkpointing=args.checkpoint_layers > 0)
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(model=args.model, data=args.data, output=Path(out) / "run", max_steps=args.steps,
                             eval_examples=0, eval_fraction=0.0, save_every=10**9)
        card = run_training(config, plan)
        history = [json.loads(line) for line in (Path(out) / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [{k: r[k] for k in ("seconds", "real_tokens", "padded_tokens", "samples", "loss")} for r in history]
    return summarise("ours", steps, shape.total_params, {
        "plan": {k: plan.to_json()[k] for k in ("micro_batch_size", "checkpoint_layers", "optimizer", "max_seq_len",
                                                "effective_batch_size", "peak_vram_bytes")},
        "predicted_peak_bytes": plan.peak_vram_bytes,
        "measured": card.measured,
    })


def run_matrix(args: argparse.Namespace) -> dict:
    """Peak memory and speed of the trainer's optimizer step over (seq_len, rows, checkpointed layers, targets).

    The base model is loaded once; each configuration gets fresh LoRA adapters and a fresh optimizer, and runs
    full-length rows (the planner's worst case) with the last 16 positions of each row labelled.
    """
    import gc

    from falcon_desktop.model import ModelSettings, add_lora, load_base_model, set_checkpointing
    from falcon_desktop.optim import make_optimizer, optimizer_step, warmup_cosine

    loaded = load_base_model(ModelSettings(args.model, quantize=True, device="cuda:0"))
    base = loaded.model
    vocab = base.config.vocab_size
    rows_out = []
    for spec in args.configs.split():
        seq, rows, ckpt, targets = spec.split(":")
        seq, rows, ckpt = int(seq), int(rows), int(ckpt)
        model = add_lora(base, targets.split(","), 16, 32, 0.05)
        set_checkpointing(model, ckpt)
        optimizer = make_optimizer(model, "paged_adamw_8bit", 2e-4, loaded.device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(100, 0.03))
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (rows, seq), generator=generator)
        labels = torch.full_like(ids, -100)
        labels[:, -16:] = ids[:, -16:]
        batch = {"input_ids": ids, "labels": labels}
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        times, status = [], "ok"
        try:
            for _ in range(args.steps):
                torch.cuda.synchronize()
                start = time.perf_counter()
                optimizer_step(model, [batch], optimizer, scheduler, scaler, torch.bfloat16, 1.0)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        except torch.cuda.OutOfMemoryError:
            status = "oom"
        timed = times[1:] or times
        row = {
            "seq_len": seq, "rows": rows, "checkpoint_layers": ckpt, "targets": targets, "status": status,
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
            "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
            "seconds_per_step": round(sum(timed) / len(timed), 4) if timed else None,
            "tokens_per_second": round(rows * seq * len(timed) / sum(timed), 1) if timed else None,
        }
        print(json.dumps(row), flush=True)
        rows_out.append(row)
        base = model.unload()
        del model, optimizer, scheduler
    return {"name": "matrix", "device": torch.cuda.get_device_name(), "model": args.model,
            "footprint_bytes": loaded.quantization.footprint_bytes, "rows": rows_out}


COMPARED = (  # (result file, subcommand arguments): the two baselines, then ours with its own plan
    ("hf-seed.json", ["hf", "--recipe", "seed"]),
    ("hf-careful.json", ["hf", "--recipe", "careful", "--batch", "16", "--accumulation", "4"]),
    ("ours.json", ["ours", "--effective-batch", "64"]),
)


def comparison(results: dict[str, dict]) -> dict:
    """Speed-ups over both baselines and a markdown table, from the three runs' results."""
    ours = results["ours.json"]["real_tokens_per_second"]
    rows = ["| run | real tokens/s | samples/s | peak reserved | padding efficiency | MFU | x ours |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, result in results.items():
        speed = result["real_tokens_per_second"]
        rows.append(f"| {result['name']} | {speed:,.0f} | {result['samples_per_second']:.2f} | "
                    f"{result['peak_reserved_bytes'] / 1e9:.2f} GB | {result['padding_efficiency']:.1%} | "
                    f"{result['mfu']:.1%} | {ours / speed:.2f} |")
    return {
        "device": results["ours.json"]["device"],
        "real_tokens_per_second": {r["name"]: r["real_tokens_per_second"] for r in results.values()},
        "speedup_over_seed": round(ours / results["hf-seed.json"]["real_tokens_per_second"], 2),
        "speedup_over_careful": round(ours / results["hf-careful.json"]["real_tokens_per_second"], 2),
        "table": "\n".join(rows),
    }


def run_compare(args: argparse.Namespace) -> dict:
    """Each run in its own process (clean memory statistics, same cap), then the comparison."""
    import subprocess

    out = Path(args.out)
    results = {}
    for filename, command in COMPARED:
        subprocess.run([sys.executable, __file__, *command, "--model", args.model, "--data", args.data,
                        "--steps", str(args.steps), "--vram", str(args.vram), "--result", str(out / filename)],
                       check=True)
        results[filename] = json.loads((out / filename).read_text(encoding="utf-8"))
    summary = comparison(results)
    print(summary["table"])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-model")
    make.add_argument("--shape", choices=sorted(SHAPES), required=True)
    make.add_argument("--tokenizer", required=True)
    make.add_argument("--out", required=True)
    make.add_argument("--vocab-size", type=int, help="override the shape's vocabulary (embedding rows)")
    for name in ("hf", "ours"):
        run = sub.add_parser(name)
        run.add_argument("--model", required=True)
        run.add_argument("--data", required=True)
        run.add_argument("--steps", type=int, default=30)
        run.add_argument("--seq-len", type=int, default=512)
        run.add_argument("--vram", type=float, default=24.0, help="emulated card size in GiB")
        run.add_argument("--result", required=True)
    compare = sub.add_parser("compare")
    compare.add_argument("--model", required=True)
    compare.add_argument("--data", required=True)
    compare.add_argument("--steps", type=int, default=30)
    compare.add_argument("--vram", type=float, default=24.0, help="emulated card size in GiB")
    compare.add_argument("--out", required=True, help="folder for the three results and comparison.json")
    matrix = sub.add_parser("matrix")
    matrix.add_argument("--model", required=True)
    matrix.add_argument("--configs", required=True, help='space-separated "seq:rows:checkpoint_layers:targets"')
    matrix.add_argument("--steps", type=int, default=3)
    matrix.add_argument("--result", required=True)
    hf = sub.choices["hf"]
    hf.add_argument("--recipe", choices=("seed", "careful"), default="seed")
    hf.add_argument("--batch", type=int, default=16)
    hf.add_argument("--accumulation", type=int, default=1)
    hf.add_argument("--targets", default="query_key_value", help="LoRA targets, comma-separated")
    hf.add_argument("--save-adapter", metavar="RUN_DIR", help="also save the adapter as a run `eval --adapter` reads")
    hf.add_argument("--learning-rate", type=float, default=2e-4, help="the tutorials' rate unless matching a run of ours")
    hf.add_argument("--lora-r", type=int, default=16)
    hf.add_argument("--lora-alpha", type=int, default=32)
    hf.add_argument("--lora-dropout", type=float, default=0.05)
    hf.add_argument("--seed", type=int, default=42, help="the Trainer's seed (LoRA init, dropout, example order)")
    ours = sub.choices["ours"]
    ours.add_argument("--targets", default="query_key_value")
    ours.add_argument("--effective-batch", type=int, default=64)
    ours.add_argument("--micro-batch", type=int, default=None)
    ours.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None)
    ours.add_argument("--checkpoint-layers", type=int, default=None)
    args = parser.parse_args()
    if args.command == "make-model":
        make_model(args)
        return
    if args.command == "compare":
        Path(args.out, "comparison.json").write_text(json.dumps(run_compare(args), indent=2) + "\n", encoding="utf-8")
        return
    if args.command == "matrix":
        result = run_matrix(args)
    else:
        if torch.cuda.is_available():
            cap_memory(args.vram)
        result = run_hf(args) if args.command == "hf" else run_ours(args)
    result["args"] = {k: v for k, v in vars(args).items()}
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps({k: result.get(k) for k in ("name", "real_tokens_per_second", "peak_reserved_bytes", "mfu")}))


if __name__ == "__main__":
    sys.exit(main())
