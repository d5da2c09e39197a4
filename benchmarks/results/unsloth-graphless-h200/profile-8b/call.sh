#!/usr/bin/env bash
# Session 13 call 5: profile our 8B step (ours only, steps 12-14) on the shipped code: grouped siblings, graphless checkpoints.
set -u
START=$(date +%s)
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
M=/tmp/unsloth-models; mkdir -p $M
python3 benchmarks/gpu_bench.py make-model --shape llama-3-8b --tokenizer .bench-data --out $M/llama-3-8b > $OUT/make.log 2>&1
echo "made rc=$? t=$(( $(date +%s) - START ))"
python3 -c "
import json,sys; sys.path.insert(0,'benchmarks')
from unsloth_compare import first_questions
json.dump(first_questions(json.load(open('.bench-data/dev-v2.0-half.json')), 1280), open('/tmp/data8b.json','w'))"
timeout -s KILL $(( 250 - $(date +%s) + START )) python3 benchmarks/unsloth_compare.py ours --vram 24 --run-dir /tmp/run8b --result $OUT/ours-profiled.json --profile-step 12 -- \
  --model $M/llama-3-8b --data /tmp/data8b.json --output /tmp/run8b --overwrite --max-steps 16 --batch-size 32 --seq-len 512 \
  --lora-r 16 --lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --vram 24 --eval-fraction 0 --eval-examples 0 --save-every 1000000 > $OUT/ours.log 2>&1
echo "profile rc=$? t=$(( $(date +%s) - START ))"
python3 -c "
import json; d=json.load(open('$OUT/ours-profiled.json')); p=d.get('profile',{})
print(d.get('real_tokens_per_second'), d.get('steady_tokens_per_second'))
print({k:v for k,v in p.items() if k not in ('top_kernels',)})
for k in p.get('top_kernels',[])[:25]: print(k)
"
