#!/usr/bin/env bash
# Session 14 call 3: rotary on half-width addcmul_: GPU tests, micro-benchmark against the roll form, 8B side by side.
set -u
START=$(date +%s)
FINAL=$OUT
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
timeout -s KILL 120 python3 -m pytest -q -p no:cacheprovider tests/test_model.py > $FINAL/gpu-tests.log 2>&1
echo "tests rc=$? t=$(( $(date +%s) - START ))"; grep -E "passed|failed|Error" $FINAL/gpu-tests.log | tail -8
# .explore/rotary_micro.py as it ran is kept tidied, the same timing, as benchmarks/results/rotary-h200/halves-8b/rotary_micro.py
timeout -s KILL 60 python3 .explore/rotary_micro.py 2>&1 | tee $FINAL/rotary-micro.log
echo "micro t=$(( $(date +%s) - START ))"
tar xzf .unsloth-site.tgz
OUT=$FINAL/u STEPS_8B=40 timeout -s KILL $(( 590 - $(date +%s) + START )) bash benchmarks/unsloth_side_by_side.sh 8b > $FINAL/console-8b.log 2>&1
echo "8b rc=$? t=$(( $(date +%s) - START ))"
python3 -c "
import json,glob
for f in sorted(glob.glob('$FINAL/u/*/unsloth_compare.json')):
    d=json.load(open(f)); print(f); print(d['table']); print(d['comparison'])
"
cd $FINAL && find u \( -name '*.json' -o -name '*.md' -o -name '*.log' -o -name '*.jsonl' \) -size -3M | tar czf unsloth.tgz -T - && rm -rf u
echo "t=$(( $(date +%s) - START ))"
