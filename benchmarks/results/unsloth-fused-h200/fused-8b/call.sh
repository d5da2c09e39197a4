#!/usr/bin/env bash
# Session 11 call 2: GPU tests of fused_lora (+ step graphs), then the 8B side by side with the fused layers.
set -u
START=$(date +%s)
FINAL=$OUT
tar xzf .unsloth-site.tgz
if [ -z "${SKIP_TESTS:-}" ]; then
PYTHONPATH=$PWD/.gpu-site:$PWD HF_HUB_OFFLINE=1 timeout -s KILL ${TEST_LIMIT:-200} python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/test_fused_lora.py tests/test_step_graphs.py} > $FINAL/gpu-tests.log 2>&1
echo "tests rc=$? t=$(( $(date +%s) - START ))"; tail -15 $FINAL/gpu-tests.log | grep -vi warn
fi
OUT=$FINAL/u STEPS_8B=${STEPS_8B:-40} timeout -s KILL $(( ${TOTAL:-585} - $(date +%s) + START )) bash benchmarks/unsloth_side_by_side.sh ${PART:-8b} > $FINAL/console.log 2>&1
echo "side by side rc=$? t=$(( $(date +%s) - START ))"
grep -iE "Traceback|Error|Cannot record|CUDA graphs|checkpointed|Done:" $FINAL/console.log | head -12
python3 -c "
import json,glob
for f in sorted(glob.glob('$FINAL/u/*/unsloth_compare.json')):
    d=json.load(open(f)); print(d['table']); print(d['comparison'])
"
cd $FINAL && find u \( -name '*.json' -o -name '*.md' -o -name '*.log' -o -name '*.jsonl' \) -size -3M | tar czf unsloth.tgz -T - && rm -rf u
echo "t=$(( $(date +%s) - START ))"
