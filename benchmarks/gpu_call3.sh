#!/usr/bin/env bash
# Device call 3: the headline (ours vs the careful user, same effective batch, same data, 24 GiB cap), and the
# ~1B model's memory matrix for the planner's accuracy table.
set -uo pipefail
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 PYTORCH_ALLOC_CONF=expandable_segments:True
M=$HOME/m; mkdir -p $M; D=.bench-data/dev-v2.0-half.json
python3 benchmarks/gpu_bench.py make-model --shape falcon-7b --tokenizer .bench-data --out $M/falcon-7b 2>&1 | tail -1
python3 benchmarks/gpu_bench.py make-model --shape llama-1b --tokenizer .bench-data --out $M/llama-1b 2>&1 | tail -1
timeout 170 python3 benchmarks/gpu_bench.py ours --model $M/falcon-7b --data $D --steps 30 --effective-batch 64 --result $OUT/ours.json 2>&1 | grep '^{'
timeout 200 python3 benchmarks/gpu_bench.py hf --recipe careful --batch 16 --accumulation 4 --model $M/falcon-7b --data $D --steps 30 --result $OUT/hf-careful.json 2>&1 | grep '^{'
Q=q_proj,v_proj; A=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
timeout 120 python3 benchmarks/gpu_bench.py matrix --model $M/llama-1b --steps 3 --result $OUT/matrix-llama-1b.json --configs \
 "512:16:22:$A 512:16:0:$A 256:16:0:$A 1024:8:22:$A 1024:8:0:$A 2048:4:22:$A 2048:4:11:$A 512:4:0:$Q 512:32:22:$A" 2>&1 | grep '^{'
