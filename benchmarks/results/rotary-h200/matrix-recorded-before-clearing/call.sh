#!/usr/bin/env bash
# Session 14 call 5: planner matrix --recorded (as train runs its plans) on the SmolLM2 and ~1B Llama shapes.
set -u
START=$(date +%s)
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
timeout -s KILL 440 python3 benchmarks/planner_matrix.py run --recorded --tokenizer .bench-data --data .bench-data/dev-v2.0-half.json \
  --result $OUT/planner-matrix-recorded.json --budget-s 400 --models smollm2-135m,llama-1b 2>&1 | tee $OUT/matrix.log | grep -v Warning | tail -40
echo "t=$(( $(date +%s) - START ))"
