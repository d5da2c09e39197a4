#!/usr/bin/env bash
# Session 14 call 8: planner matrix, eager rows of the Llama-3-8B shape on the shipped code (as many as fit).
set -u
START=$(date +%s)
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
timeout -s KILL 195 python3 benchmarks/planner_matrix.py run --tokenizer .bench-data --data .bench-data/dev-v2.0-half.json \
  --result $OUT/planner-matrix-8b-eager.json --budget-s 150 --models-dir /tmp/mm --models llama-3-8b > $OUT/matrix-8b.log 2>&1
echo "rc=$? t=$(( $(date +%s) - START ))"
grep -E "^\| llama|made in|deadline" $OUT/matrix-8b.log | tail -12
