#!/usr/bin/env bash
# Session 10: GPU tests of recorded checkpointed layers, then the Unsloth side by side on PART (1b/8b).
set -u
START=$(date +%s)
FINAL=$OUT
tar xzf .unsloth-site.tgz
if [ -z "${SKIP_TESTS:-}" ]; then
PYTHONPATH=$PWD/.gpu-site:$PWD HF_HUB_OFFLINE=1 timeout -s KILL ${TEST_LIMIT:-220} python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/test_step_graphs.py} -x > $FINAL/gpu-tests.log 2>&1
echo "tests rc=$? t=$(( $(date +%s) - START ))"; tail -25 $FINAL/gpu-tests.log
fi
OUT=$FINAL/u timeout -s KILL $(( ${TOTAL:-580} - $(date +%s) + START )) bash benchmarks/unsloth_side_by_side.sh ${PART:-1b} > $FINAL/console.log 2>&1
echo "unsloth rc=$? t=$(( $(date +%s) - START ))"
grep -iE "Traceback|Error|Cannot record|CUDA graphs|checkpointed|Done:" $FINAL/console.log | head -12
cat $FINAL/u/*/*.md 2>/dev/null | head -30
cd $FINAL && find u \( -name '*.json' -o -name '*.md' -o -name '*.log' -o -name '*.jsonl' \) -size -3M | tar czf unsloth.tgz -T - && rm -rf u
echo "t=$(( $(date +%s) - START ))"
