#!/usr/bin/env bash
# Session 13 call 4: ~1.1B Llama, eager steps, all 22 layers checkpointed: graphless first forward vs torch's non-reentrant checkpoint, alternating.
set -u
START=$(date +%s)
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTORCH_ALLOC_CONF=expandable_segments:True
python3 benchmarks/gpu_bench.py make-model --shape llama-1b --tokenizer .bench-data --out /tmp/m1b --vocab-size 65536 > $OUT/make.log 2>&1
echo "made t=$(( $(date +%s) - START ))"
for i in 1 2 3; do for v in "" 1; do
  [ $(( $(date +%s) - START )) -gt 400 ] && break 2
  NO_GRAPHLESS=$v timeout -s KILL 120 python3 .explore/ab_graphless.py ours --model /tmp/m1b --data .bench-data/dev-v2.0-half.json --steps 30 --seq-len 512 --vram 24 \
    --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --effective-batch 32 --checkpoint-layers 22 --result $OUT/ab-$i-nographless$v.json > $OUT/ab-$i-$v.log 2>&1
  python3 -c "import json;d=json.load(open('$OUT/ab-$i-nographless$v.json'));print('nographless=$v', d['real_tokens_per_second'], d['steady_tokens_per_second'], round(d['peak_allocated_bytes']/2**30,2), d.get('checkpointing'))" || tail -3 $OUT/ab-$i-$v.log
  echo "t=$(( $(date +%s) - START ))"
done; done
