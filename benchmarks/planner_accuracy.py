"""The planner's predicted peak vs the peak measured on the GPU, for every row of the committed memory matrices.

Measured = torch.cuda.max_memory_reserved over 3 optimizer steps of full-length rows (benchmarks/gpu_bench.py
matrix). Predicted = the planner's peak without its CUDA-context term, which lives outside PyTorch's allocator and
so outside max_memory_reserved. Writes docs/planner-accuracy.md's table to stdout; exits 1 if any row is off by
more than 10%.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from falcon_desktop.plan_memory import COEFFICIENTS, Setup, memory_breakdown
from falcon_desktop.shapes import load_shape

RESULTS = Path(__file__).parent / "results"
# The benchmark's model shapes (gpu_bench.SHAPES), as config.json files for the planner.
SHAPES = {
    "falcon-7b": "falcon-7b",
    "llama-1b": {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32,
                 "num_key_value_heads": 4, "intermediate_size": 5632, "vocab_size": 65024,
                 "tie_word_embeddings": False},
}
TOLERANCE = 0.10


def shape_for(name: str, scratch: Path):
    spec = SHAPES[name]
    if isinstance(spec, str):
        return load_shape(spec)
    directory = scratch / name
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(spec), encoding="utf-8")
    return load_shape(str(directory))


def main() -> int:
    rows, worst = [], 0.0
    with tempfile.TemporaryDirectory() as scratch:
        for name in ("falcon-7b", "llama-1b"):
            shape = shape_for(name, Path(scratch))
            matrix = json.loads((RESULTS / f"matrix-{name}.json").read_text(encoding="utf-8"))
            for run in matrix["rows"]:
                if run["status"] != "ok":
                    continue
                setup = Setup("qlora", run["seq_len"], run["rows"], run["checkpoint_layers"], "paged_adamw_8bit",
                              tuple(run["targets"].split(",")), 16, 0.05,
                              fused_lora=False, fused_rms_norm=False)  # measured before fused_lora.py
                predicted = sum(memory_breakdown(shape, setup).values()) - COEFFICIENTS.cuda_context_bytes
                measured = run["peak_reserved_bytes"]
                error = predicted / measured - 1
                worst = max(worst, abs(error))
                targets = "qkv" if len(setup.lora_targets) <= 2 else f"{len(setup.lora_targets)} kinds"
                rows.append(f"| {name} | {run['seq_len']} | {run['rows']} | {run['checkpoint_layers']} | {targets} | "
                            f"{measured / 1e9:.2f} | {predicted / 1e9:.2f} | {error:+.1%} |")
    print("| model | seq len | rows | checkpointed layers | LoRA targets | measured GB | predicted GB | error |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{len(rows)} runs; worst error {worst:.1%} (tolerance {TOLERANCE:.0%}).")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
