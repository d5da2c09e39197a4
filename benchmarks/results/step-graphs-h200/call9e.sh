#!/usr/bin/env bash
# Session 9 call 5: every GPU test; then Falcon-7B at the 24 GiB plan (checkpointed: eager steps, read a step late).
set -u
START=$(date +%s)
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
FINAL=$OUT; mkdir -p $OUT/r
timeout -s KILL 260 python3 -m pytest -q -p no:cacheprovider -m gpu tests > $FINAL/gpu-tests.log 2>&1
echo "tests rc=$? t=$(( $(date +%s) - START ))"; tail -8 $FINAL/gpu-tests.log
OUT=$FINAL/r BUDGET=$(( 560 - $(date +%s) + START )) ONLY=qkv-eager bash benchmarks/compile_speed.sh falcon
for f in $FINAL/r/*.json; do python3 - "$f" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); p = r.get("profiled_step", {})
print(sys.argv[1].split("/")[-1], r.get("real_tokens_per_second"), "steady", r.get("steady_tokens_per_second"),
      "s/step", r.get("mean_step_seconds"), "busy", p.get("gpu_busy_fraction"), "launches", p.get("kernel_launches"))
PY
done
tar czf $FINAL/runs.tgz -C $FINAL r && rm -rf $FINAL/r
echo "t=$(( $(date +%s) - START ))"
