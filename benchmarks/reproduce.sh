#!/usr/bin/env bash
# Every GPU figure in docs/benchmarks.md and docs/planner.md, from the repository root on a CUDA machine:
#   OUT=benchmarks/results bash benchmarks/reproduce.sh
# It needs .bench-data/ (the Falcon tokenizer files, the SQuAD v2 dev half and a ~170-token context.txt):
#   mkdir -p .bench-data && cp ../shared/data/falcon-7b/* ../shared/data/squad/dev-v2.0-half.json .bench-data/
# About 12 minutes on an H100 for steps 1-5; the small-model steps, the planner matrix and Unsloth add ~20 on an H200. The lent test machine runs it in parts (a 10-minute limit per call); the models
# made in step 1 live in $MODELS.
set -euo pipefail
OUT=${OUT:?set OUT to the folder for the JSON results}
MODELS=${MODELS:-$HOME/m}
export PYTHONUNBUFFERED=1 PYTORCH_ALLOC_CONF=expandable_segments:True
D=.bench-data/dev-v2.0-half.json
mkdir -p "$OUT" "$MODELS"

# 1. Random-weight models of the real shapes (no download), bf16 safetensors plus the Falcon tokenizer.
python3 benchmarks/gpu_bench.py make-model --shape falcon-7b --tokenizer .bench-data --out "$MODELS/falcon-7b"
python3 benchmarks/gpu_bench.py make-model --shape llama-1b --tokenizer .bench-data --out "$MODELS/llama-1b"

# 2. The headline: seed recipe, careful user and falcon-desktop's own plan, each under a 24 GiB cap
#    -> hf-seed.json, hf-careful.json, ours.json, comparison.json (the table).
python3 benchmarks/gpu_bench.py compare --model "$MODELS/falcon-7b" --data $D --steps 30 --out "$OUT"

# 3. Memory and speed of one optimizer step over (sequence length : rows : checkpointed layers : LoRA targets),
#    uncapped: the planner's accuracy table (python benchmarks/planner_accuracy.py) and the levers table.
Q=query_key_value; A=query_key_value,dense,dense_h_to_4h,dense_4h_to_h
python3 benchmarks/gpu_bench.py matrix --model "$MODELS/falcon-7b" --steps 3 --result "$OUT/matrix-falcon-7b.json" --configs \
 "512:16:32:$Q 512:16:0:$Q 512:16:16:$Q 512:8:0:$Q 256:16:0:$Q 1024:4:32:$Q 1024:4:0:$Q 2048:2:32:$Q 2048:2:0:$Q 512:16:32:$A 512:16:0:$A 512:32:32:$Q 512:4:0:$Q"
Q=q_proj,v_proj; A=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
python3 benchmarks/gpu_bench.py matrix --model "$MODELS/llama-1b" --steps 3 --result "$OUT/matrix-llama-1b.json" --configs \
 "512:16:22:$A 512:16:0:$A 256:16:0:$A 1024:8:22:$A 1024:8:0:$A 2048:4:22:$A 2048:4:11:$A 512:4:0:$Q 512:32:22:$A"

# 4. `ask`: time to first token and decoding tokens/s, plain generate vs ours, NF4 and bf16 -> ask-speed.json.
python3 benchmarks/ask_speed.py --model "$MODELS/falcon-7b" --context-file .bench-data/context.txt --repeats 3 \
 --result "$OUT/ask-speed.json"

# 5. The plots in docs/img/ (loss curves, throughput) from the committed results.
python3 benchmarks/plot_results.py

# 6. The fixed cost of a small model's step (docs/benchmarks.md "The fixed cost of a step"): SmolLM2-135M-Instruct
#    ($SMOL, a directory or its .gguf), 16-bit base, the plan's own settings -> step-profile-smol-sdpa.json.
if [ -n "${SMOL:-}" ]; then
  python3 benchmarks/step_profile.py --result "$OUT/step-profile-smol-sdpa.json" -- train --model "$SMOL" --data $D \
    --max-steps 25 --eval-examples 0 --save-every 1000 --output "$MODELS/step-profile-run" --overwrite --no-quantize
  # 7. docs/quality.md: the tuning table (six settings at once on one GPU) and the before/after benchmark.
  MODEL="$SMOL" OUT="$OUT/quality-tuning-run" bash benchmarks/quality_tuning.sh
  python3 benchmarks/quality.py --model "$SMOL" --data $D --seed 45 --heldout-questions 1000 --curve-steps 100,250 \
    --jobs 4 --compare-hf --hf-steps 100 --answer-batch 64 --out "$OUT/quality-smollm2" -- --epochs 2
fi

# 8. docs/planner.md "Estimate vs measured across sizes and caps": every size x LoRA targets x 8/12/24 GiB.
python3 benchmarks/planner_matrix.py run --tokenizer .bench-data --data $D --result "$OUT/planner-matrix.json"

# 9. docs/benchmarks.md "Unsloth side by side", where .unsloth-site/ exists (bash ../shared/gpu/make-unsloth-site.sh).
if [ -d .unsloth-site ]; then
  bash benchmarks/unsloth_side_by_side.sh
fi
