#!/usr/bin/env bash
# Session 15 call 2: Falcon-7B with and without RotaryEmbedding in its fast path (38261b4), one call.
# (a) planner matrix eager rows (falcon-7b, attention+all, 24 GiB) on both trees: peak memory and speed;
# (b) `gpu_bench.py ours`, effective batch 64, 24 GiB (session 8's 12,867 qkv / 9,954 all four), alternating.
# Carry .gpu-site .bench-data .explore/s15call2.sh .explore/falcon-rotary.patch
set -u
START=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ROOT=$PWD
rm -rf /tmp/before && mkdir /tmp/before && cp -r falcon_desktop benchmarks /tmp/before/
(cd /tmp/before && patch -p1 < $ROOT/.explore/falcon-rotary.patch) || { echo "patch failed"; exit 1; }
mkdir -p /tmp/mm; M=/tmp/mm/falcon-7b
for side in after before; do
  TREE=$ROOT; [ $side = before ] && TREE=/tmp/before
  (cd $TREE && PYTHONPATH=$ROOT/.gpu-site:$TREE timeout -s KILL 200 python3 benchmarks/planner_matrix.py run \
    --tokenizer $ROOT/.bench-data --data $ROOT/.bench-data/dev-v2.0-half.json --result $OUT/matrix-$side.json \
    --budget-s 150 --models-dir /tmp/mm --models falcon-7b --caps 24 > $OUT/matrix-$side.log 2>&1)
  echo "matrix $side rc=$? t=$(( $(date +%s) - START ))"; grep -E "^\| falcon" $OUT/matrix-$side.log | tail -2
done
for round in 1 2; do
  for side in after before; do
    for targets in query_key_value all; do
      [ $(( $(date +%s) - START )) -gt 500 ] && break 3
      T=$targets; [ $targets = all ] && T=query_key_value,dense,dense_h_to_4h,dense_4h_to_h
      TREE=$ROOT; [ $side = before ] && TREE=/tmp/before
      (cd $TREE && PYTHONPATH=$ROOT/.gpu-site:$TREE timeout -s KILL 120 python3 benchmarks/gpu_bench.py ours --model $M \
        --data $ROOT/.bench-data/dev-v2.0-half.json --targets $T --effective-batch 64 --steps 20 --vram 24 \
        --result $OUT/$side-$targets-$round.json > $OUT/$side-$targets-$round.log 2>&1)
      echo "$side $targets round $round rc=$? t=$(( $(date +%s) - START )) $(python3 -c "import json;d=json.load(open('$OUT/$side-$targets-$round.json'));print(round(d.get('real_tokens_per_second')), d['peak_allocated_bytes']/1e9)" 2>/dev/null)"
    done
  done
done
