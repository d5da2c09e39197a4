#!/usr/bin/env bash
# Session 14 call 7: planner matrix on the SmolLM2 and ~1B Llama shapes, recorded then eager, cuBLAS workspaces cleared between rows.
set -u
START=$(date +%s)
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
timeout -s KILL 150 python3 benchmarks/planner_matrix.py run --recorded --tokenizer .bench-data --data .bench-data/dev-v2.0-half.json \
  --result $OUT/planner-matrix-recorded.json --budget-s 130 --models-dir /tmp/mm --models smollm2-135m,llama-1b > $OUT/matrix-recorded.log 2>&1
echo "recorded t=$(( $(date +%s) - START ))"
timeout -s KILL $(( 290 - $(date +%s) + START )) python3 benchmarks/planner_matrix.py run --tokenizer .bench-data --data .bench-data/dev-v2.0-half.json \
  --result $OUT/planner-matrix-eager.json --budget-s $(( 260 - $(date +%s) + START )) --models-dir /tmp/mm --models smollm2-135m,llama-1b > $OUT/matrix-eager.log 2>&1
echo "eager t=$(( $(date +%s) - START ))"
grep -E "^\| (smollm|llama)" $OUT/matrix-recorded.log | tail -12; grep -E "^\| (smollm|llama)" $OUT/matrix-eager.log | tail -12
