#!/usr/bin/env bash
# Session 14 call 1: GPU tests (rotary fast path CUDA variants); 8B side by side on the rotary fast path; profile if time.
set -u
START=$(date +%s)
FINAL=$OUT
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
timeout -s KILL 170 python3 -m pytest -q -p no:cacheprovider tests/test_model.py tests/test_fused_lora.py tests/test_step_graphs.py > $FINAL/gpu-tests.log 2>&1
echo "tests rc=$? t=$(( $(date +%s) - START ))"; grep -E "passed|failed|Error" $FINAL/gpu-tests.log | tail -8
tar xzf .unsloth-site.tgz
OUT=$FINAL/u STEPS_8B=40 timeout -s KILL $(( 585 - $(date +%s) + START )) bash benchmarks/unsloth_side_by_side.sh 8b > $FINAL/console-8b.log 2>&1
echo "8b rc=$? t=$(( $(date +%s) - START ))"
python3 -c "
import json,glob
for f in sorted(glob.glob('$FINAL/u/*/unsloth_compare.json')):
    d=json.load(open(f)); print(f); print(d['table']); print(d['comparison'])
"
cd $FINAL && find u \( -name '*.json' -o -name '*.md' -o -name '*.log' -o -name '*.jsonl' \) -size -3M | tar czf unsloth.tgz -T - && rm -rf u
echo "t=$(( $(date +%s) - START ))"
