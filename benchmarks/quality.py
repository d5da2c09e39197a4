"""Does `train` teach? SQuAD v2 F1/EM before and after fine-tuning a real model, on articles it never saw.

    python benchmarks/quality.py --model SmolLM2-135M-Instruct.Q4_1.gguf --data ../shared/data/squad/dev-v2.0-half.json \
        --out benchmarks/results/quality-smollm2 --curve-steps 50,100,200 --jobs 4 -- --epochs 2

1. Split the SQuAD file BY ARTICLE (never by question: questions of one paragraph share their answer's context) into
   train.json and heldout.json (seeded; `--heldout-fraction` of the articles).
2. Score the base model zero-shot on the first `--heldout-questions` held-out questions with `falcon-desktop eval`.
3. Score the abstain-always answer ("" for every question) on the same questions: the floor a model must beat.
4. Fine-tune with `falcon-desktop train` (arguments after `--` are passed on), score the result the same way.
5. Learning curve: one more run per `--curve-steps` value (`--max-steps N`, same arguments otherwise), each scored;
   these are separate runs whose schedule ends at N, so a point is "a run of N steps", which is cheap for a small
   model and needs no checkpoint format.
6. `--compare-hf`: the plain transformers Trainer recipe (benchmarks/gpu_bench.py `hf`, its own code path) trained on
   the same file for `--hf-steps` at the effective batch, learning rate and LoRA of our run of as many steps (read from
   its run card; it starts once that run ends), so both saw the same number of examples; scored the same way.
   It takes `--seed` too, so several seeds give paired runs (benchmarks/quality_seeds.py sums them up).
7. `--compare-ungrouped`: the fine-tune again with steps drawn freely instead of grouped by length
   (benchmarks/train_ungrouped.py), to see whether that speed lever changes what is learned.

The training runs go first, `--jobs` of them at once (a 135M model keeps an H200 mostly idle, so they hardly slow
each other; wall times say so: `concurrent_training_jobs`), then the evaluations one at a time, so questions/s is
the figure of `eval` alone. Each stage's record is kept in `stage-<label>.json`: the same command run again after an
interruption skips what is done and resumes a cut-off training run.

Every command is run as a subprocess and recorded exactly, with its wall time, in one `quality.json`; `quality.png`
plots held-out F1 against training steps with the base and abstain-always lines. Tiny-model runs (the test) show the
mechanics only: their numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from falcon_desktop.atomic import write_text  # noqa: E402
from falcon_desktop.evaluate import iter_squad_questions, read_squad, score_predictions  # noqa: E402

KEYS = ("f1", "exact", "HasAns_f1", "HasAns_exact", "NoAns_f1", "NoAns_exact", "total")
_RATE = re.compile(r"\(([\d.,]+) questions/s")


def split_by_article(squad: dict, heldout_fraction: float, seed: int) -> tuple[dict, dict]:
    """(train, held-out) SQuAD documents; whole articles on one side, at least one on each."""
    articles = list(squad["data"])
    if len(articles) < 2:
        raise SystemExit("The data needs at least two articles to hold some out.")
    order = list(range(len(articles)))
    random.Random(seed).shuffle(order)
    count = min(len(articles) - 1, max(1, round(heldout_fraction * len(articles))))
    heldout = set(order[:count])
    version = squad.get("version", "v2.0")
    return ({"version": version, "data": [a for i, a in enumerate(articles) if i not in heldout]},
            {"version": version, "data": [a for i, a in enumerate(articles) if i in heldout]})


def run_command(command: list[str], log: Path) -> dict:
    """Run `command`, keep its output in `log`; {command, seconds, returncode}; exit on failure."""
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    record = {"command": shlex.join(command), "seconds": round(time.perf_counter() - started, 2),
              "returncode": result.returncode, "log": log.name}
    if result.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"Command failed ({result.returncode}): {record['command']}\n{tail}")
    return record


def falcon_desktop(*args: str) -> list[str]:
    return [sys.executable, "-m", "falcon_desktop", *args]


def stage(label: str, out: Path, work) -> dict:
    """`work()`'s record, kept in `stage-<label>.json`: run the benchmark again and it goes on where it stopped."""
    path = out / f"stage-{label}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    record = work()
    write_text(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return record


def evaluate(label: str, model_args: list[str], heldout: Path, args: argparse.Namespace) -> dict:
    """`falcon-desktop eval` on the held-out questions; scores, questions/s and the command."""
    def work() -> dict:
        predictions = args.out / f"predictions-{label}.json"
        command = falcon_desktop("eval", *model_args, "--data", str(heldout), "--limit", str(args.heldout_questions),
                                 "--device", args.device, "--answer-batch", str(args.answer_batch),
                                 "--save-predictions", str(predictions), "--json")
        record = run_command(command, args.out / f"eval-{label}.log")
        text = (args.out / record["log"]).read_text(encoding="utf-8")
        scores = json.loads(text[text.index("{"): text.rindex("}") + 1])
        rate = _RATE.search(text)
        return {"label": label, **{key: scores.get(key) for key in KEYS},
                "questions_per_second": float(rate.group(1).replace(",", "")) if rate else None, **record}
    return stage(f"eval-{label}", args.out, work)


def train(label: str, train_file: Path, extra: list[str], args: argparse.Namespace, ungrouped: bool = False) -> dict:
    """`falcon-desktop train` (`ungrouped`: through benchmarks/train_ungrouped.py, steps not grouped by length); a run
    cut off by an earlier, interrupted benchmark is resumed, not restarted."""
    run_dir = args.out / "runs" / label
    program = [sys.executable, str(ROOT / "benchmarks" / "train_ungrouped.py")] if ungrouped else falcon_desktop()

    def work() -> dict:
        resume = ["--resume"] if (run_dir / "run.json").exists() else []
        command = [*program, "train", "--model", args.model, "--data", str(train_file), "--output", str(run_dir),
                                 "--eval-fraction", "0", "--eval-examples", "0", "--device", args.device,
                                 "--batch-size", str(args.batch_size), "--seed", str(args.seed), *extra, *resume]
        record = run_command(command, args.out / f"train-{label}.log")
        card = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        return {"label": label, "run": str(run_dir), "steps": card.get("steps"),
                "final_loss": (card.get("metrics") or {}).get("final_loss"), **record}
    return stage(f"train-{label}", args.out, work)


def train_hf(steps: int, ours: dict, train_file: Path, args: argparse.Namespace) -> dict:
    """The plain Trainer recipe of gpu_bench.py at the same steps, effective batch, learning rate and LoRA as our run
    `ours` (its card says what the plan chose); only the code path differs."""
    adapter = args.out / "runs" / "hf-trainer"

    def work() -> dict:
        card = json.loads((Path(ours["run"]) / "run.json").read_text(encoding="utf-8"))
        plan = card["plan"]
        same = ["--learning-rate", str(card["train"]["learning_rate"]), "--lora-r", str(plan["lora_r"]),
                "--lora-alpha", str(plan["lora_alpha"]), "--lora-dropout", str(plan["lora_dropout"]),
                "--targets", ",".join(plan["lora_targets"])]
        command = [sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "hf", "--recipe", "careful",
                   "--model", args.model, "--data", str(train_file), "--steps", str(steps),
                   "--batch", str(args.hf_micro_batch), "--accumulation", str(args.batch_size // args.hf_micro_batch),
                   *same, "--seed", str(args.seed), "--save-adapter", str(adapter),
                   "--result", str(args.out / "hf-trainer.json")]
        return {"label": "hf-trainer", "run": str(adapter), "steps": steps,
                **run_command(command, args.out / "train-hf-trainer.log")}
    return stage("train-hf-trainer", args.out, work)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = sorted(result["learning_curve"], key=lambda point: point["steps"])
    figure, axis = plt.subplots(figsize=(7, 4.2))
    axis.plot([p["steps"] for p in curve], [p["f1"] for p in curve], "o-", label="falcon-desktop train, held-out F1")
    axis.plot([p["steps"] for p in curve], [p["HasAns_f1"] for p in curve], "s--", label="HasAns F1")
    axis.axhline(result["base"]["f1"], color="grey", linestyle=":", label="base model, zero-shot")
    axis.axhline(result["abstain_always"]["f1"], color="red", linestyle=":", label='always "unanswerable"')
    if result.get("hf_trainer"):
        hf = result["hf_trainer"]
        axis.plot([hf["steps"]], [hf["f1"]], "D", color="black", label="plain Trainer, same examples seen")
    if result.get("ungrouped"):
        axis.plot([result["ungrouped"]["steps"]], [result["ungrouped"]["f1"]], "^", color="green",
                  label="ours, steps not grouped by length")
    axis.set_xlabel("optimizer steps")
    axis.set_ylabel("SQuAD v2 F1 (%)")
    axis.set_title(f"{Path(result['model']).name}: {result['heldout']['questions']} held-out questions")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_result(result: dict, out: Path) -> None:
    """quality.json as it stands: written after every stage, so a run cut short still leaves what it measured."""
    write_text(out / "quality.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="base: a .gguf file, a model directory or a Hub id")
    parser.add_argument("--data", required=True, help="SQuAD v2 JSON (split here by article)")
    parser.add_argument("--out", required=True, type=Path, help="folder for quality.json, quality.png and the logs")
    parser.add_argument("--heldout-fraction", type=float, default=0.25, help="share of articles held out")
    parser.add_argument("--heldout-questions", type=int, default=300, help="held-out questions scored each time")
    parser.add_argument("--curve-steps", default="", help="comma-separated --max-steps of extra runs for the curve")
    parser.add_argument("--batch-size", type=int, default=16, help="effective batch (examples per step) of every run")
    parser.add_argument("--answer-batch", type=int, default=64, help="questions generated together by `eval`")
    parser.add_argument("--jobs", type=int, default=1,
                        help="training runs at once (a small model leaves the GPU mostly idle); evaluations run alone")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--compare-hf", action="store_true", help="also train with the plain Trainer recipe")
    parser.add_argument("--hf-steps", type=int, default=None,
                        help="its steps (default: the fine-tune's); compare with the curve point of as many steps")
    parser.add_argument("--compare-ungrouped", action="store_true",
                        help="also train as the fine-tune does but with steps not grouped by length (an ablation)")
    parser.add_argument("--hf-micro-batch", type=int, default=8, help="its micro-batch (accumulation makes up the rest)")
    parser.add_argument("train_args", nargs="*", help="after `--`: passed to every `falcon-desktop train`")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    train_doc, heldout_doc = split_by_article(read_squad(args.data), args.heldout_fraction, args.seed)
    train_file, heldout_file = args.out / "train.json", args.out / "heldout.json"
    for path, document in ((train_file, train_doc), (heldout_file, heldout_doc)):
        path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    questions = list(iter_squad_questions(heldout_doc))[: args.heldout_questions]
    abstain = score_predictions(questions, {question.id: "" for question in questions})

    result: dict = {
        "model": args.model, "data": args.data, "seed": args.seed, "train_args": args.train_args,
        "split": "by article", "train": {"articles": len(train_doc["data"]),
                                         "questions": sum(1 for _ in iter_squad_questions(train_doc))},
        "heldout": {"articles": len(heldout_doc["data"]), "titles": [a.get("title") for a in heldout_doc["data"]],
                    "questions": len(questions)},
        "abstain_always": {key: abstain.get(key) for key in KEYS}, "complete": False,
    }
    curve_steps = [int(s) for s in args.curve_steps.split(",") if s.strip()]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        final_run = pool.submit(train, "final", train_file, args.train_args, args)
        curve_runs = {steps: pool.submit(train, f"steps-{steps}", train_file,
                                         [*args.train_args, "--max-steps", str(steps)], args) for steps in curve_steps}

        def run_hf() -> dict:  # its hyperparameters come from the card of the run it is compared with
            ours = curve_runs.get(args.hf_steps, final_run).result()
            return train_hf(args.hf_steps or ours["steps"], ours, train_file, args)
        hf_run = pool.submit(run_hf) if args.compare_hf else None
        ungrouped_run = (pool.submit(train, "ungrouped", train_file, args.train_args, args, ungrouped=True)
                         if args.compare_ungrouped else None)
        final = final_run.result()
        curve_trained = {steps: run.result() for steps, run in curve_runs.items()}
        hf = hf_run.result() if hf_run else None
        ungrouped = ungrouped_run.result() if ungrouped_run else None
    result["concurrent_training_jobs"] = args.jobs

    result["base"] = evaluate("base", ["--model", args.model], heldout_file, args)
    write_result(result, args.out)
    result["finetuned"] = {**evaluate("final", ["--adapter", final["run"]], heldout_file, args), "train": final}
    write_result(result, args.out)
    curve = [{"steps": 0, **{key: result["base"][key] for key in KEYS}},
             {"steps": final["steps"], **{key: result["finetuned"][key] for key in KEYS}}]
    for steps, run in curve_trained.items():
        scores = evaluate(f"steps-{steps}", ["--adapter", run["run"]], heldout_file, args)
        curve.append({"steps": run["steps"], **{key: scores[key] for key in KEYS}, "train": run, "eval": scores})
        result["learning_curve"] = sorted(curve, key=lambda point: point["steps"])
        write_result(result, args.out)
    result["learning_curve"] = sorted(curve, key=lambda point: point["steps"])
    if hf:
        result["hf_trainer"] = {**evaluate("hf-trainer", ["--adapter", hf["run"]], heldout_file, args), "train": hf,
                                "steps": hf["steps"]}
    if ungrouped:
        result["ungrouped"] = {**evaluate("ungrouped", ["--adapter", ungrouped["run"]], heldout_file, args),
                               "train": ungrouped, "steps": ungrouped["steps"]}
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["complete"] = True
    write_result(result, args.out)
    plot(result, args.out / "quality.png")
    summary = {key: result[key]["f1"] for key in ("abstain_always", "base", "finetuned")}
    print(json.dumps({"f1": summary, "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
