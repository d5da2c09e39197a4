#!/usr/bin/env bash
# Session 13 call 3: ~1.1B Llama side by side (grouped siblings, graphless checkpoints).
set -u
START=$(date +%s)
FINAL=$OUT
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
tar xzf .unsloth-site.tgz
OUT=$FINAL/u STEPS_1B=100 timeout -s KILL $(( 570 - $(date +%s) + START )) bash benchmarks/unsloth_side_by_side.sh 1b > $FINAL/console-1b.log 2>&1
echo "1b rc=$? t=$(( $(date +%s) - START ))"
python3 -c "
import json,glob
for f in sorted(glob.glob('$FINAL/u/*/unsloth_compare.json')):
    d=json.load(open(f)); print(f); print(d['table']); print(d['comparison'])
"
cd $FINAL && find u \( -name '*.json' -o -name '*.md' -o -name '*.log' -o -name '*.jsonl' \) -size -3M | tar czf unsloth.tgz -T - && rm -rf u
echo "t=$(( $(date +%s) - START ))"
