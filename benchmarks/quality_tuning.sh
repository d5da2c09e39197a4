#!/usr/bin/env bash
# The tuning runs behind docs/quality.md's "Tuning" table: six settings of `falcon-desktop train` on SmolLM2-135M-Instruct
# (real weights), scored on 1,000 questions of 4 held-out articles of the shared SQuAD v2 dev half. Run on the H200
# from the repository root:   MODEL=DIR_OR_GGUF OUT=DIR bash benchmarks/quality_tuning.sh
# The six trainings run at the same time on one GPU: a 135M step keeps the GPU busy ~7% (step_profile.py), so they
# share it with little slowdown, and the whole table takes about 6 minutes.
set -u
M=${MODEL:?a SmolLM2-135M-Instruct directory or .gguf}; O=${OUT:?a folder for the results}; mkdir -p "$O"
python3 - "$O" <<'PY'
import json, random, sys
squad = json.load(open("../shared/data/squad/dev-v2.0-half.json", encoding="utf-8"))
held = set(random.Random(0).sample(range(len(squad["data"])), 4))  # Normans, Packet_switching, Imperialism, Force
for name, keep in (("tune-train", lambda i: i not in held), ("tune-heldout", lambda i: i in held)):
    data = [a for i, a in enumerate(squad["data"]) if keep(i)]
    json.dump({"version": squad["version"], "data": data}, open(f"{sys.argv[1]}/{name}.json", "w", encoding="utf-8"))
PY
T=$O/tune-train.json; H=$O/tune-heldout.json
common="--model $M --data $T --eval-examples 0 --save-every 100000 --epochs 2"
tr(){ n=$1; shift; python3 -m falcon_desktop train $common --output "$O/run-$n" "$@" > "$O/train-$n.log" 2>&1 & }
tr a_lr2e-4_r16_bs16_16bit --learning-rate 2e-4 --no-quantize
tr b_lr1e-3_r16_bs16_16bit --learning-rate 1e-3 --no-quantize
tr c_lr5e-4_r64_bs16_16bit --learning-rate 5e-4 --lora-r 64 --lora-alpha 128 --no-quantize
tr d_lr1e-3_r16_bs16_4bit --learning-rate 1e-3
tr e_lr1e-3_r16_bs32_16bit --learning-rate 1e-3 --batch-size 32 --no-quantize
tr f_lr2e-3_r16_bs16_16bit --learning-rate 2e-3 --no-quantize
python3 -m falcon_desktop eval --model "$M" --data "$H" --limit 1000 --json --no-quantize > "$O/eval-base.json"
wait
for run in "$O"/run-*; do
  n=${run##*/run-}
  python3 -m falcon_desktop eval --adapter "$run" --data "$H" --limit 1000 --json > "$O/eval-$n.json" &
done
wait
