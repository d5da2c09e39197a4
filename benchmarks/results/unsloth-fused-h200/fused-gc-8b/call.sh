#!/usr/bin/env bash
# Session 11 call 4: fused GPU tests; Falcon-7B matrix rows re-measured (backward temporaries freed); 8B side by side with the collector paused.
set -u
START=$(date +%s)
FINAL=$OUT
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
timeout -s KILL 60 python3 -m pytest -q -p no:cacheprovider tests/test_fused_lora.py > $FINAL/gpu-tests.log 2>&1
echo "tests rc=$? t=$(( $(date +%s) - START ))"; grep -E "passed|failed" $FINAL/gpu-tests.log
cp benchmarks/results/planner-matrix.json $FINAL/planner-matrix.json
timeout -s KILL 200 python3 benchmarks/planner_matrix.py run --tokenizer .bench-data --data .bench-data/dev-v2.0-half.json \
  --result $FINAL/planner-matrix.json --models falcon-7b --budget-s 170 > $FINAL/matrix.log 2>&1
echo "matrix rc=$? t=$(( $(date +%s) - START ))"; grep -E "falcon-7b|rows," $FINAL/matrix.log | tail -8
tar xzf .unsloth-site.tgz
OUT=$FINAL/u STEPS_8B=40 timeout -s KILL $(( ${TOTAL:-560} - $(date +%s) + START )) bash benchmarks/unsloth_side_by_side.sh 8b > $FINAL/console.log 2>&1
echo "side by side rc=$? t=$(( $(date +%s) - START ))"
python3 -c "
import json,glob
for f in sorted(glob.glob('$FINAL/u/*/unsloth_compare.json')):
    d=json.load(open(f)); print(d['table']); print(d['comparison'])
"
cd $FINAL && find u \( -name '*.json' -o -name '*.md' -o -name '*.log' -o -name '*.jsonl' \) -size -3M | tar czf unsloth.tgz -T - && rm -rf u
echo "t=$(( $(date +%s) - START ))"
