#!/usr/bin/env bash
# `train`'s speed options against eager steps (docs/benchmarks.md, "`train --compile` on the H200" and "Recorded
# steps"), on the GPU machine from the repository root, one call of under 9 minutes per group:
#   bash benchmarks/compile_speed.sh small     # SmolLM2-135M and ~1.1B Llama shapes, eager and compiled (~6 min)
#   bash benchmarks/compile_speed.sh falcon    # Falcon-7B at the 24 GiB plan, all four targets and qkv (~7 min)
#   bash benchmarks/compile_speed.sh graphs    # SmolLM2-135M and ~1.1B Llama, `train` defaults: CUDA graphs or not
#   bash benchmarks/compile_speed.sh graphs-7b # Falcon-7B, whole H200 (no checkpointed layer): CUDA graphs or not
#   bash benchmarks/compile_speed.sh graphs-long # the three sizes recorded over 50-400 steps, profiled late
#   bash benchmarks/compile_speed.sh graphs-same # SmolLM2 and ~1.1B, 60 steps recorded and eager: the loss curves
# Needs .gpu-site/ (bash ../shared/gpu/make-site.sh) and .bench-data/ with the Falcon tokenizer and the SQuAD dev
# half (mkdir -p .bench-data && cp ../shared/data/falcon-7b/* ../shared/data/squad/dev-v2.0-half.json .bench-data/).
# Random weights of each shape (gpu_bench.py make-model). Results: $OUT/<run>.json (benchmarks/step_profile.py:
# steady_tokens_per_second, per-step walls and tokens, one profiled step) and $OUT/<run>.log with TORCH_LOGS=recompiles.
# A run that would end after BUDGET seconds (default 540) is skipped and says so; ONLY=REGEX runs only the runs whose
# name matches (ONLY=compile: the compiled ones). Each run's metrics.jsonl comes back as $OUT/<run>.metrics.jsonl.
set -u
OUT=${OUT:?set OUT to the folder for the results}
GROUP=${1:-small}
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
  PYTORCH_ALLOC_CONF=expandable_segments:True HF_HUB_DISABLE_PROGRESS_BARS=1 TORCH_LOGS=recompiles
DATA=${DATA:-.bench-data} MODELS=${MODELS:-/tmp/compile-models}
START=$(date +%s)

model() {  # shape: random bf16 weights, made once
  [ -f "$MODELS/$1/config.json" ] ||
    python3 benchmarks/gpu_bench.py make-model --shape "$1" --tokenizer "$DATA" --out "$MODELS/$1" 2>&1 | tail -1
}

run() {  # name limit_s warmup_steps [train flags]
  local name=$1 limit=$2 warmup=$3; shift 3
  if [[ -n "${ONLY:-}" && ! $name =~ $ONLY ]]; then return; fi
  if [ $(( $(date +%s) - START + limit )) -gt "${BUDGET:-540}" ]; then echo "$name skipped (time)"; return; fi
  timeout "$limit" python3 benchmarks/step_profile.py --warmup-steps "$warmup" --profile-at "${PROFILE_AT:-12}" \
    --result "$OUT/$name.json" -- train \
    --data "$DATA/dev-v2.0-half.json" --eval-examples 0 --eval-fraction 0 --save-every 1000 \
    --output "/tmp/compile-runs/$name" --overwrite "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? after $(( $(date +%s) - START )) s"
  cp "/tmp/compile-runs/$name/metrics.jsonl" "$OUT/$name.metrics.jsonl" 2>/dev/null
}

if [ "$GROUP" = small ]; then
  model smollm2-135m; model llama-1b
  run smollm2-4bit-eager 100 3 --model "$MODELS/smollm2-135m" --max-steps 25 --no-cuda-graphs
  run smollm2-4bit-compile 200 10 --model "$MODELS/smollm2-135m" --max-steps 40 --compile
  run llama-1b-4bit-eager 120 3 --model "$MODELS/llama-1b" --max-steps 25 --no-cuda-graphs
  run llama-1b-4bit-compile 200 10 --model "$MODELS/llama-1b" --max-steps 40 --compile
elif [ "$GROUP" = graphs ]; then  # `train`'s defaults, which record the steps; the first steps record new shapes
  model smollm2-135m; model llama-1b
  run smollm2-4bit-eager 100 3 --model "$MODELS/smollm2-135m" --max-steps 25 --no-cuda-graphs
  run smollm2-4bit-graphs 120 10 --model "$MODELS/smollm2-135m" --max-steps 80
  run llama-1b-4bit-eager 120 3 --model "$MODELS/llama-1b" --max-steps 25 --no-cuda-graphs
  run llama-1b-4bit-graphs 150 10 --model "$MODELS/llama-1b" --max-steps 60
elif [ "$GROUP" = graphs-7b ]; then
  model falcon-7b
  run falcon-7b-all4-h200-eager 150 3 --model "$MODELS/falcon-7b" --max-steps 20 --no-cuda-graphs
  run falcon-7b-all4-h200-graphs 150 6 --model "$MODELS/falcon-7b" --max-steps 30
  run falcon-7b-qkv-h200-eager 150 3 --model "$MODELS/falcon-7b" --max-steps 25 --lora-targets query_key_value \
    --no-cuda-graphs
  run falcon-7b-qkv-h200-graphs 150 6 --model "$MODELS/falcon-7b" --max-steps 30 --lora-targets query_key_value
elif [ "$GROUP" = graphs-same ]; then  # one schedule, recorded or eager: the loss curves side by side
  model smollm2-135m; model llama-1b
  run smollm2-4bit-eager-60 90 3 --model "$MODELS/smollm2-135m" --max-steps 60 --no-cuda-graphs
  run smollm2-4bit-graphs-60 60 3 --model "$MODELS/smollm2-135m" --max-steps 60
  run llama-1b-4bit-eager-60 90 3 --model "$MODELS/llama-1b" --max-steps 60 --no-cuda-graphs
  run llama-1b-4bit-graphs-60 60 3 --model "$MODELS/llama-1b" --max-steps 60
elif [ "$GROUP" = graphs-long ]; then  # longer runs: most shapes recorded, the profile taken late (PROFILE_AT)
  model smollm2-135m; model llama-1b; model falcon-7b
  PROFILE_AT=300 run smollm2-4bit-graphs-400 150 10 --model "$MODELS/smollm2-135m" --max-steps 400
  PROFILE_AT=150 run llama-1b-4bit-graphs-200 150 10 --model "$MODELS/llama-1b" --max-steps 200
  PROFILE_AT=40 run falcon-7b-all4-h200-graphs-50 150 10 --model "$MODELS/falcon-7b" --max-steps 50
  PROFILE_AT=40 run falcon-7b-qkv-h200-graphs-50 150 10 --model "$MODELS/falcon-7b" --max-steps 50 \
    --lora-targets query_key_value
else
  model falcon-7b
  run falcon-7b-all4-eager 150 3 --model "$MODELS/falcon-7b" --vram 24 --max-steps 25
  run falcon-7b-all4-compile 200 8 --model "$MODELS/falcon-7b" --vram 24 --max-steps 30 --compile
  run falcon-7b-qkv-eager 150 3 --model "$MODELS/falcon-7b" --vram 24 --max-steps 25 --lora-targets query_key_value
  run falcon-7b-qkv-compile 200 8 --model "$MODELS/falcon-7b" --vram 24 --max-steps 30 \
    --lora-targets query_key_value --compile
fi
