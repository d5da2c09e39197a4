#!/usr/bin/env bash
# Session 15 call 1: GPU tests (rotary fast path CUDA variants, Falcon included); planner matrix --recorded on the
# Llama-3-8B and Falcon-7B shapes (what train runs for their plans: never measured recorded at these sizes).
set -u
START=$(date +%s)
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
timeout -s KILL 100 python3 -m pytest -q -p no:cacheprovider tests/test_model.py > $OUT/gpu-tests.log 2>&1
echo "tests rc=$? t=$(( $(date +%s) - START ))"; grep -E "passed|failed|Error" $OUT/gpu-tests.log | tail -8
timeout -s KILL $(( 585 - $(date +%s) + START )) python3 benchmarks/planner_matrix.py run --recorded --tokenizer .bench-data \
  --data .bench-data/dev-v2.0-half.json --result $OUT/planner-matrix-recorded-big.json \
  --budget-s $(( 520 - $(date +%s) + START )) --models-dir /tmp/mm --models llama-3-8b,falcon-7b > $OUT/matrix.log 2>&1
echo "matrix rc=$? t=$(( $(date +%s) - START ))"
grep -E "^\| (llama|falcon)|made in|deadline|Error" $OUT/matrix.log | tail -16
