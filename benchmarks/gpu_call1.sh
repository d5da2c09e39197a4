#!/usr/bin/env bash
# Device call 1: environment, doctor, and the memory/speed matrix of the trainer's step on Falcon-7B's shape.
set -uo pipefail
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, peft, bitsandbytes as b; print(torch.__version__, transformers.__version__, peft.__version__, b.__version__, torch.cuda.get_device_name())"
python3 -m falcon_desktop doctor > $OUT/doctor.txt 2>&1; echo "doctor exit $?" >> $OUT/doctor.txt
python3 -m falcon_desktop doctor --json > $OUT/doctor.json 2>/dev/null
M=$HOME/m; mkdir -p $M
time python3 benchmarks/gpu_bench.py make-model --shape falcon-7b --tokenizer .bench-data --out $M/falcon-7b
Q=query_key_value; A=query_key_value,dense,dense_h_to_4h,dense_4h_to_h
time python3 benchmarks/gpu_bench.py matrix --model $M/falcon-7b --steps 3 --result $OUT/matrix-falcon-7b.json --configs \
 "512:16:32:$Q 512:16:0:$Q 512:16:16:$Q 512:32:32:$Q 256:8:32:$Q 256:8:0:$Q 1024:4:32:$Q 1024:8:0:$Q 2048:2:32:$Q 2048:4:0:$Q 512:16:32:$A 512:16:0:$A 512:1:32:$Q 512:8:8:$Q 512:32:0:$Q" 2>&1 | grep -v Warning
