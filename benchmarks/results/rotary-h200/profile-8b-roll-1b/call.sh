#!/usr/bin/env bash
# Session 14 call 2: profile our 8B step on the rotary fast path (steps 12-14); ~1.1B side by side.
set -u
START=$(date +%s)
FINAL=$OUT
export PYTHONPATH=$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
M=/tmp/unsloth-models; mkdir -p $M
python3 benchmarks/gpu_bench.py make-model --shape llama-3-8b --tokenizer .bench-data --out $M/llama-3-8b > $FINAL/make.log 2>&1
echo "made rc=$? t=$(( $(date +%s) - START ))"
python3 -c "
import json,sys; sys.path.insert(0,'benchmarks')
from unsloth_compare import first_questions
json.dump(first_questions(json.load(open('.bench-data/dev-v2.0-half.json')), 1280), open('/tmp/data8b.json','w'))"
timeout -s KILL 200 python3 benchmarks/unsloth_compare.py ours --vram 24 --run-dir /tmp/run8b --result $FINAL/ours-profiled.json --profile-step 12 -- \
  --model $M/llama-3-8b --data /tmp/data8b.json --output /tmp/run8b --overwrite --max-steps 16 --batch-size 32 --seq-len 512 \
  --lora-r 16 --lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --vram 24 --eval-fraction 0 --eval-examples 0 --save-every 1000000 > $FINAL/ours.log 2>&1
echo "profile rc=$? t=$(( $(date +%s) - START ))"
python3 -c "
import json; d=json.load(open('$FINAL/ours-profiled.json')); p=d.get('profile',{})
print(d.get('real_tokens_per_second'), d.get('steady_tokens_per_second'))
print({k:v for k,v in p.items() if k not in ('top_kernels',)})
for k in p.get('top_kernels',[])[:30]: print(k)
"
rm -rf $M/llama-3-8b /tmp/run8b
tar xzf .unsloth-site.tgz
OUT=$FINAL/u STEPS_1B=100 timeout -s KILL $(( 590 - $(date +%s) + START )) bash benchmarks/unsloth_side_by_side.sh 1b > $FINAL/console-1b.log 2>&1
echo "1b rc=$? t=$(( $(date +%s) - START ))"
python3 -c "
import json,glob
for f in sorted(glob.glob('$FINAL/u/*/unsloth_compare.json')):
    d=json.load(open(f)); print(f); print(d['table']); print(d['comparison'])
"
cd $FINAL && find u \( -name '*.json' -o -name '*.md' -o -name '*.log' -o -name '*.jsonl' \) -size -3M | tar czf unsloth.tgz -T - && rm -rf u
echo "t=$(( $(date +%s) - START ))"
