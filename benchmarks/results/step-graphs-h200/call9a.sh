#!/usr/bin/env bash
# Session 9 call 1: GPU tests of recorded steps, then `compile_speed.sh graphs` (SmolLM2, ~1B: graphs vs eager).
set -u
START=$(date +%s)
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
FINAL=$OUT; mkdir -p $OUT/r
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ -z "${SKIP_TESTS:-}" ]; then
timeout -s KILL 200 python3 -m pytest -q -p no:cacheprovider tests/test_step_graphs.py -x > $FINAL/gpu-tests.log 2>&1
echo "tests rc=$? t=$(( $(date +%s) - START ))"; tail -25 $FINAL/gpu-tests.log
fi
OUT=$FINAL/r BUDGET=$(( 570 - $(date +%s) + START )) bash benchmarks/compile_speed.sh ${GROUP:-graphs}
for f in $FINAL/r/*.json; do python3 - "$f" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); p = r.get("profiled_step", {})
print(sys.argv[1].split("/")[-1], r.get("real_tokens_per_second"), "steady", r.get("steady_tokens_per_second"),
      "s/step", r.get("median_step_seconds", r.get("mean_step_seconds")), "busy", p.get("gpu_busy_fraction"),
      "launches", p.get("kernel_launches"))
PY
done
grep -h -iE "error|Traceback|Cannot record|peak" $FINAL/r/*.log | head -20
tar czf $FINAL/runs.tgz -C $FINAL r && rm -rf $FINAL/r
echo "t=$(( $(date +%s) - START ))"
