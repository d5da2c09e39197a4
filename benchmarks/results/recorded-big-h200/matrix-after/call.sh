#!/usr/bin/env bash
# Session 15 call 5, after the value copy and the refit: GPU tests; planner matrix --recorded on the
# Falcon-7B and Llama-3-8B shapes (Falcon first: its recorded peaks were over the plan).
set -u
START=$(date +%s)
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
timeout -s KILL 120 python3 -m pytest -q -p no:cacheprovider tests/test_model.py tests/test_step_graphs.py > $OUT/gpu-tests.log 2>&1
echo "tests rc=$? t=$(( $(date +%s) - START ))"; grep -E "passed|failed|Error" $OUT/gpu-tests.log | tail -8
timeout -s KILL $(( 500 - $(date +%s) + START )) python3 benchmarks/planner_matrix.py run --recorded --tokenizer .bench-data \
  --data .bench-data/dev-v2.0-half.json --result $OUT/planner-matrix-recorded-big.json \
  --budget-s $(( 440 - $(date +%s) + START )) --models-dir /tmp/mm --models falcon-7b,llama-3-8b > $OUT/matrix.log 2>&1
echo "matrix rc=$? t=$(( $(date +%s) - START ))"
grep -E "^\| (llama|falcon)|made in|deadline|Error" $OUT/matrix.log | tail -16
