#!/usr/bin/env bash
# Device call 4: ask's decoding speed (4-bit + adapter), a less-checkpointed training variant, doctor's timing.
set -uo pipefail
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 PYTORCH_ALLOC_CONF=expandable_segments:True
M=$HOME/m; mkdir -p $M; D=.bench-data/dev-v2.0-half.json
python3 benchmarks/gpu_bench.py make-model --shape falcon-7b --tokenizer .bench-data --out $M/falcon-7b 2>&1 | tail -1
timeout 100 python3 benchmarks/ask_speed.py --model $M/falcon-7b --context-file .bench-data/context.txt --result $OUT/ask-nf4.json 2>&1 | grep '^{'
timeout 150 python3 benchmarks/gpu_bench.py ours --model $M/falcon-7b --data $D --steps 30 --effective-batch 64 --micro-batch 28 --checkpoint-layers 28 --result $OUT/ours-k28.json 2>&1 | grep '^{'
( time python3 -m falcon_desktop doctor ) > $OUT/doctor.txt 2>&1; tail -4 $OUT/doctor.txt
