#!/usr/bin/env bash
# Session 15 call 4: where Falcon-7B's recorded step (attention 24 GiB) holds more than its eager step: CUDA memory
# history of one row each way, the live allocations at the peak grouped by where they were made.
# Carry .gpu-site .bench-data .explore/s15call4.sh .explore/memtrace.py
set -u
START=$(date +%s)
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p /tmp/mm
python3 benchmarks/gpu_bench.py make-model --shape falcon-7b --tokenizer .bench-data --out /tmp/mm/falcon-7b > $OUT/make.log 2>&1
echo "made rc=$? t=$(( $(date +%s) - START ))"
for mode in recorded eager; do
  FLAG=""; [ $mode = recorded ] && FLAG=--recorded
  timeout -s KILL 200 python3 .explore/memtrace.py model --model falcon-7b --models-dir /tmp/mm \
    --data .bench-data/dev-v2.0-half.json --result $OUT/trace-$mode.json --targets attention --caps 24 \
    --warmup-steps 1 --steps 1 $FLAG > $OUT/trace-$mode.log 2>&1
  echo "$mode rc=$? t=$(( $(date +%s) - START ))"; grep -E "MEMTRACE|^\| falcon|Error" $OUT/trace-$mode.log | cut -c1-230
done
