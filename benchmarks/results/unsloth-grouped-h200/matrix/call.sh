#!/usr/bin/env bash
# Session 12 call 5: planner matrix rows with the final fused layers (grouped siblings, adapter casts kept a forward); GPU fused tests.
set -u
START=$(date +%s)
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
M=/tmp/unsloth-models; mkdir -p $M
timeout -s KILL 60 python3 -m pytest -q -p no:cacheprovider tests/test_fused_lora.py > $OUT/gpu-tests.log 2>&1
echo "tests rc=$? t=$(( $(date +%s) - START ))"; grep -E "passed|failed" $OUT/gpu-tests.log | tail -2
cp benchmarks/results/planner-matrix.json $OUT/planner-matrix.json
timeout -s KILL $(( 370 - $(date +%s) + START )) python3 benchmarks/planner_matrix.py run --tokenizer .bench-data --data .bench-data/dev-v2.0-half.json \
  --result $OUT/planner-matrix.json --models-dir $M --models llama-3-8b,llama-1b,smollm2-135m --budget-s $(( 330 - $(date +%s) + START )) > $OUT/matrix.log 2>&1
echo "matrix rc=$? t=$(( $(date +%s) - START ))"; grep -E "^\| (llama|smol)|rows,|budget" $OUT/matrix.log | tail -20
