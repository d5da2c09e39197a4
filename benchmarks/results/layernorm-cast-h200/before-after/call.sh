#!/usr/bin/env bash
# Session 8, call 1: Falcon-7B planner-matrix rows with LayerNorm outputs cast to bf16, then the same train run
# before (b2652c3, .explore/before) and after the change, step_profile (GPU busy, launches), same call.
set -u
START=$(date +%s)
MATRIX_ARGS="--models falcon-7b" MODELS=/tmp/cm bash .explore/gpu_matrix.sh
echo "matrix done t=$(( $(date +%s) - START ))"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTORCH_ALLOC_CONF=expandable_segments:True \
  HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error
D=.explore/matrix-data M=/tmp/cm
run() {  # name code limit_s [train args]
  local name=$1 code=$2 limit=$3; shift 3
  if [ $(( $(date +%s) - START + limit )) -gt ${BUDGET:-560} ]; then echo "$name skipped (time)"; return; fi
  PYTHONPATH=$PWD/.gpu-site:$code:$PWD timeout -s KILL $limit python3 benchmarks/step_profile.py --warmup-steps 3 \
    --result $OUT/$name.json -- train --data $D/dev-v2.0-half.json --eval-examples 0 --eval-fraction 0 \
    --save-every 1000 --output /tmp/r/$name --overwrite "$@" > $OUT/$name.log 2>&1
  echo "$name rc=$? $(python3 -c "import json;r=json.load(open('$OUT/$name.json'));p=r['profiled_step'];print(r['real_tokens_per_second'],'tok/s', r['mean_step_seconds'],'s/step busy',p.get('gpu_busy_fraction'),'launches',p.get('kernel_launches'))" 2>/dev/null) t=$(( $(date +%s) - START ))"
  grep -E "peak|VRAM|checkpoint" $OUT/$name.log | tail -3
}
run qkv-after $PWD 110 --model $M/falcon-7b --vram 24 --max-steps 20 --lora-targets query_key_value
run qkv-before $PWD/.explore/before 110 --model $M/falcon-7b --vram 24 --max-steps 20 --lora-targets query_key_value
run all4-after $PWD 120 --model $M/falcon-7b --vram 24 --max-steps 20
run all4-before $PWD/.explore/before 120 --model $M/falcon-7b --vram 24 --max-steps 20
