#!/usr/bin/env bash
# Session 14 call 4: the shipped train --compile on Llama-3-8B beside Unsloth.
set -u
START=$(date +%s)
FINAL=$OUT
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
tar xzf .unsloth-site.tgz
OUT=$FINAL/u COMPARE_ARGS=--compile SUFFIX=-compile STEPS_8B=40 timeout -s KILL $(( 540 - $(date +%s) + START )) bash benchmarks/unsloth_side_by_side.sh 8b > $FINAL/console-8b.log 2>&1
echo "8b rc=$? t=$(( $(date +%s) - START ))"
python3 -c "
import json,glob
for f in sorted(glob.glob('$FINAL/u/*/unsloth_compare.json')):
    d=json.load(open(f)); print(f); print(d['table']); print(d['comparison'])
"
cd $FINAL && find u \( -name '*.json' -o -name '*.md' -o -name '*.log' -o -name '*.jsonl' \) -size -3M | tar czf unsloth.tgz -T - && rm -rf u
echo "t=$(( $(date +%s) - START ))"
