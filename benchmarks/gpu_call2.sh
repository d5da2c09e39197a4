#!/usr/bin/env bash
# Device call 2: matrix with the flash attention fast path; ours (planner's choice) and the seed recipe, 24 GiB cap.
set -uo pipefail
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 PYTORCH_ALLOC_CONF=expandable_segments:True
M=$HOME/m; mkdir -p $M; D=.bench-data/dev-v2.0-half.json
python3 benchmarks/gpu_bench.py make-model --shape falcon-7b --tokenizer .bench-data --out $M/falcon-7b 2>&1 | tail -1
Q=query_key_value; A=query_key_value,dense,dense_h_to_4h,dense_4h_to_h
timeout 200 python3 benchmarks/gpu_bench.py matrix --model $M/falcon-7b --steps 3 --result $OUT/matrix2-falcon-7b.json --configs \
 "512:16:32:$Q 512:16:0:$Q 512:16:16:$Q 512:8:0:$Q 256:16:0:$Q 1024:4:32:$Q 1024:4:0:$Q 2048:2:32:$Q 2048:2:0:$Q 512:16:32:$A 512:16:0:$A 512:32:32:$Q 512:4:0:$Q" 2>&1 | grep '^{'
timeout 150 python3 benchmarks/gpu_bench.py ours --model $M/falcon-7b --data $D --steps 20 --effective-batch 64 --result $OUT/ours-plan.json 2>&1 | grep -v "Warning\|warn\|Loading\|train " | tail -5
timeout 120 python3 benchmarks/gpu_bench.py hf --recipe seed --model $M/falcon-7b --data $D --steps 16 --result $OUT/hf-seed.json 2>&1 | tail -2
