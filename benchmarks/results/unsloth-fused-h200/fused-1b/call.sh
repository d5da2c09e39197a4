#!/usr/bin/env bash
# Session 11 call 3: the planner matrix (eager rows, as committed) re-measured with the fused kernels; then the ~1B side by side.
set -u
START=$(date +%s)
FINAL=$OUT
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
cp benchmarks/results/planner-matrix.json $FINAL/planner-matrix.json
timeout -s KILL ${MATRIX_LIMIT:-345} python3 benchmarks/planner_matrix.py run --tokenizer .bench-data --data .bench-data/dev-v2.0-half.json \
  --result $FINAL/planner-matrix.json --models ${MODELS_M:-smollm2-135m,llama-1b,falcon-7b} --budget-s ${MATRIX_BUDGET:-300} > $FINAL/matrix.log 2>&1
echo "matrix rc=$? t=$(( $(date +%s) - START ))"; tail -32 $FINAL/matrix.log
if [ $(( $(date +%s) - START )) -lt ${SBS_START_BY:-380} ]; then
tar xzf .unsloth-site.tgz
OUT=$FINAL/u STEPS_1B=${STEPS_1B:-100} timeout -s KILL $(( ${TOTAL:-590} - $(date +%s) + START )) bash benchmarks/unsloth_side_by_side.sh 1b > $FINAL/console.log 2>&1
echo "side by side rc=$? t=$(( $(date +%s) - START ))"
grep -iE "Traceback|Error|Cannot record|CUDA graphs|checkpointed|Done:" $FINAL/console.log | head -12
python3 -c "
import json,glob
for f in sorted(glob.glob('$FINAL/u/*/unsloth_compare.json')):
    d=json.load(open(f)); print(d['table']); print(d['comparison'])
"
cd $FINAL && find u \( -name '*.json' -o -name '*.md' -o -name '*.log' -o -name '*.jsonl' \) -size -3M | tar czf unsloth.tgz -T - && rm -rf u
fi
echo "t=$(( $(date +%s) - START ))"
