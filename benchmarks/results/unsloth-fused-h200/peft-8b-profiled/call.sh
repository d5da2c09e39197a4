#!/usr/bin/env bash
# Session 11 call 1: 8B side by side (eager by plan) with 3 steps profiled on each side; then ours alone at micro-batch 16.
set -u
START=$(date +%s)
FINAL=$OUT
tar xzf .unsloth-site.tgz
OUT=$FINAL/u STEPS_8B=${STEPS_8B:-40} COMPARE_ARGS="--profile-step 12" timeout -s KILL $(( ${TOTAL:-430} - $(date +%s) + START )) bash benchmarks/unsloth_side_by_side.sh 8b > $FINAL/console.log 2>&1
echo "unsloth rc=$? t=$(( $(date +%s) - START ))"
grep -iE "Traceback|Error|Cannot record|CUDA graphs|checkpointed|Done:" $FINAL/console.log | head -12
cat $FINAL/u/*/*.md 2>/dev/null | head -30
python3 - <<'PY'
import json, glob
for f in glob.glob("/dev/null") + sorted(glob.glob(__import__("os").environ["OUT"] + "/u/*/unsloth_compare.json")):
    d = json.load(open(f)); print(d["table"])
    for side in ("ours", "unsloth"):
        p = d.get(side, {}).get("profile", {})
        print(side, {k: p.get(k) for k in ("kernel_ms", "profiled_wall_ms", "gpu_busy_fraction", "kernel_launches", "micro_batches")})
        print(json.dumps(p.get("kernel_family_ms")))
        for k in p.get("top_kernels", [])[:14]: print("   ", k)
PY
M=/tmp/unsloth-models/llama-3-8b; D=$FINAL/u/unsloth-llama-3-8b/data.json
if [ -f "$D" ] && [ $(( $(date +%s) - START )) -lt ${MB_START_BY:-470} ]; then
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
timeout -s KILL $(( 585 - $(date +%s) + START )) python3 benchmarks/unsloth_compare.py ours --vram 24 --run-dir /tmp/mb16 --result $FINAL/mb16.json --profile-step 12 -- \
  --model $M --data $D --output /tmp/mb16 --overwrite --max-steps 25 --batch-size 32 --seq-len 512 --lora-r 16 \
  --lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --vram 24 --eval-fraction 0 --eval-examples 0 \
  --save-every 1000000 --micro-batch 16 > $FINAL/mb16.log 2>&1
echo "mb16 rc=$? t=$(( $(date +%s) - START ))"
python3 -c "
import json; d=json.load(open('$FINAL/mb16.json')); p=d.get('profile',{})
print({k: d.get(k) for k in ('real_tokens_per_second','steady_tokens_per_second','checkpointing','micro_batch_size','peak_reserved_bytes')})
print({k: p.get(k) for k in ('kernel_ms','profiled_wall_ms','gpu_busy_fraction','micro_batches')}); print(p.get('kernel_family_ms'))"
fi
cd $FINAL && find u \( -name '*.json' -o -name '*.md' -o -name '*.log' -o -name '*.jsonl' \) -size -3M | tar czf unsloth.tgz -T - && rm -rf u
echo "t=$(( $(date +%s) - START ))"
