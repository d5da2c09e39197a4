"""Plots for docs/benchmarks.md from the committed JSON results: loss curves and throughput."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).parent / "results"
IMAGES = Path(__file__).parents[1] / "docs" / "img"


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    ours, careful, seed = load("ours.json"), load("hf-careful.json"), load("hf-seed.json")
    figure, axes = plt.subplots(figsize=(7, 4), dpi=110)
    for result, label in ((careful, "transformers Trainer, batch 16 x 4"), (ours, "falcon-desktop, effective batch 64")):
        axes.plot(range(1, len(result["losses"]) + 1), result["losses"], label=label)
    axes.set_xlabel("optimizer step (64 examples each)")
    axes.set_ylabel("loss per answer token")
    axes.set_title("Falcon-7B shape (random weights), SQuAD v2 dev half, H100 capped at 24 GiB")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(IMAGES / "loss-curves.png")

    figure, axes = plt.subplots(figsize=(7, 3), dpi=110)
    names = ["seed recipe\n(batch 1 x 4)", "careful user\n(batch 16 x 4)", "falcon-desktop\n(plan for 24 GiB)"]
    speeds = [r["real_tokens_per_second"] for r in (seed, careful, ours)]
    bars = axes.barh(names, speeds, color=["#999", "#69c", "#e83"])
    axes.bar_label(bars, labels=[f"{s:,.0f}" for s in speeds], padding=3)
    axes.set_xlabel("real (non-padding) tokens / s, Falcon-7B QLoRA r=16 on query_key_value")
    axes.set_xlim(0, max(speeds) * 1.2)
    figure.tight_layout()
    figure.savefig(IMAGES / "throughput.png")


if __name__ == "__main__":
    main()
