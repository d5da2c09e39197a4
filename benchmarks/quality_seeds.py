"""Same learning? Our trainer against the plain Trainer recipe (and against itself without length-grouped steps) over
several seeds of `benchmarks/quality.py`.

    python benchmarks/quality_seeds.py --data ../shared/data/squad/dev-v2.0-half.json \
        --out benchmarks/results/quality-seeds/summary.json benchmarks/results/quality-seeds/s4?

Each folder is one `quality.py --seed S --compare-hf --compare-ungrouped ... -- --max-steps 100` run: its own split of
articles and its own training seed on every side, so the seeds are independent repeats. Per seed: held-out F1 of
each side and ours minus the other. Across seeds, two intervals for the mean difference:
- a t-interval over the seeds: the spread between training runs, the main noise at 100 steps;
- a paired bootstrap over questions (each seed's questions resampled, the same ones for both sides): the noise of
  scoring 1,000 questions only, which says nothing of another training run.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
for folder in (BENCHMARKS.parent, BENCHMARKS):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from quality import split_by_article  # noqa: E402  (the split the runs made, recomputed)

from falcon_desktop.atomic import write_text  # noqa: E402
from falcon_desktop.evaluate import iter_squad_questions, question_scores, read_squad  # noqa: E402

# Sides: label in quality.json -> predictions file of quality.py.
SIDES = {"finetuned": "final", "hf_trainer": "hf-trainer", "ungrouped": "ungrouped"}
# Two-sided 95% t quantiles by degrees of freedom; the normal's beyond the table.
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_interval(differences: list[float]) -> dict:
    """Mean of per-seed differences with its 95% t-interval (None with fewer than two seeds)."""
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return {"mean": round(mean, 2), "sd": None, "ci95": None}
    sd = statistics.stdev(differences)
    half = T_95.get(len(differences) - 1, 1.96) * sd / len(differences) ** 0.5
    return {"mean": round(mean, 2), "sd": round(sd, 2), "ci95": [round(mean - half, 2), round(mean + half, 2)]}


def paired_bootstrap(pairs: list[tuple[list[float], list[float]]], resamples: int, seed: int = 0) -> list[float]:
    """95% interval of mean(F1 a - F1 b) over seeds, resampling each seed's questions (paired: same questions)."""
    rng = random.Random(seed)
    gaps = [[a - b for a, b in zip(first, second, strict=True)] for first, second in pairs]
    means = []
    for _ in range(resamples):
        per_seed = [sum(rng.choices(gap, k=len(gap))) / len(gap) for gap in gaps]
        means.append(100 * statistics.fmean(per_seed))
    means.sort()
    return [round(means[int(0.025 * resamples)], 2), round(means[int(0.975 * resamples) - 1], 2)]


def seed_scores(folder: Path, data: dict, heldout_fraction: float) -> dict:
    """{side: per-question F1 in question order} of one quality.py run, on the questions it scored."""
    if not (folder / "quality.json").is_file():
        raise SystemExit(f"{folder} holds no quality.json: give the --out folders of benchmarks/quality.py runs.")
    report = json.loads((folder / "quality.json").read_text(encoding="utf-8"))
    heldout = split_by_article(data, heldout_fraction, report["seed"])[1]
    if [article.get("title") for article in heldout["data"]] != report["heldout"]["titles"]:
        raise SystemExit(f"{folder}: --data or --heldout-fraction is not the run's: its held-out articles differ.")
    questions = list(iter_squad_questions(heldout))[: report["heldout"]["questions"]]
    scores = {}
    for side, label in SIDES.items():
        path = folder / f"predictions-{label}.json"
        if side in report and path.exists():
            predictions = json.loads(path.read_text(encoding="utf-8"))
            scores[side] = list(question_scores(questions, predictions)[1].values())
    return {"seed": report["seed"], "steps": report["finetuned"]["train"]["steps"], "scores": scores,
            "abstain_always": report["abstain_always"]["f1"], "base": report["base"]["f1"]}


def summarise(runs: list[dict], resamples: int) -> dict:
    rows = []
    for run in runs:
        row = {"seed": run["seed"], "steps": run["steps"], "abstain_always": run["abstain_always"],
               "base": round(run["base"], 2)}
        row.update({side: round(100 * statistics.fmean(values), 2) for side, values in run["scores"].items()})
        rows.append(row)
    comparisons = {}
    for other in ("hf_trainer", "ungrouped"):
        paired = [run for run in runs if other in run["scores"]]
        if not paired:
            continue
        differences = [100 * (statistics.fmean(r["scores"]["finetuned"]) - statistics.fmean(r["scores"][other]))
                       for r in paired]
        comparisons[f"finetuned_minus_{other}"] = {
            "seeds": [r["seed"] for r in paired], "per_seed": [round(d, 2) for d in differences],
            **mean_interval(differences),
            "bootstrap_ci95_questions_only": paired_bootstrap(
                [(r["scores"]["finetuned"], r["scores"][other]) for r in paired], resamples),
        }
    return {"runs": rows, "comparisons": comparisons, "bootstrap_resamples": resamples}


def table(summary: dict) -> str:
    lines = ["| seed | abstain-always | base | ours | plain Trainer | ours, steps not grouped |",
             "|---|---|---|---|---|---|"]
    for row in summary["runs"]:
        cells = [row.get(key) for key in ("abstain_always", "base", "finetuned", "hf_trainer", "ungrouped")]
        lines.append(f"| {row['seed']} | " + " | ".join("—" if c is None else f"{c:.1f}" for c in cells) + " |")
    for name, comparison in summary["comparisons"].items():
        lines.append(f"\n{name}: mean {comparison['mean']:+.2f} F1, per seed {comparison['per_seed']}, t-interval "
                     f"{comparison['ci95']}, question bootstrap {comparison['bootstrap_ci95_questions_only']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="quality.py --out folders, one per seed")
    parser.add_argument("--data", required=True, help="the SQuAD file the runs split")
    parser.add_argument("--heldout-fraction", type=float, default=0.25, help="as the runs were given")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--out", type=Path, help="write the summary JSON here")
    args = parser.parse_args(argv)
    data = read_squad(args.data)
    summary = summarise([seed_scores(folder, data, args.heldout_fraction) for folder in args.folders], args.resamples)
    if args.out:
        write_text(args.out, json.dumps(summary, indent=2) + "\n")
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
