#!/usr/bin/env bash
# Session 15 call 3: why Falcon-7B's recorded rows peak above their plans (call 1: attention 24 GiB 23.98 GB against
# 22.73 predicted; eager 22.20). (a) the whole recorded Falcon matrix in one process, with each row's leftover at its
# start; (b) attention 24 GiB alone in its process; (c) the same with the allocator cache emptied between the warm-up
# and the recording (.explore/empty-first.patch).
# Carry .gpu-site .bench-data .explore/s15call3.sh .explore/empty-first.patch
set -u
START=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ROOT=$PWD
rm -rf /tmp/ec && mkdir /tmp/ec && cp -r falcon_desktop benchmarks /tmp/ec/
(cd /tmp/ec && patch -p1 < $ROOT/.explore/empty-first.patch) || { echo "patch failed"; exit 1; }
mkdir -p /tmp/mm
run() {  # name tree extra-args
  local name=$1 tree=$2; shift 2
  (cd $tree && PYTHONPATH=$ROOT/.gpu-site:$tree timeout -s KILL 200 python3 benchmarks/planner_matrix.py run --recorded \
    --tokenizer $ROOT/.bench-data --data $ROOT/.bench-data/dev-v2.0-half.json --result $OUT/$name.json \
    --budget-s 150 --models-dir /tmp/mm --models falcon-7b "$@" > $OUT/$name.log 2>&1)
  echo "$name rc=$? t=$(( $(date +%s) - START ))"; grep -E "^\| falcon" $OUT/$name.log | tail -6
}
run alone-before $ROOT --targets attention --caps 24
run alone-empty-first /tmp/ec --targets attention --caps 24
run all-rows $ROOT
run all-rows-empty-first /tmp/ec
python3 - <<'PY'
import json, os
for name in ("alone-before", "alone-empty-first", "all-rows", "all-rows-empty-first"):
    path = os.path.join(os.environ["OUT"], name + ".json")
    if not os.path.exists(path): continue
    for r in json.load(open(path))["rows"]:
        m = r.get("measured", {})
        print(name, r["targets"], r["cap_gib"], r.get("records_steps"), m.get("recorded_steps"),
              "start alloc/res %.2f/%.2f" % (m.get("allocated_at_start_bytes", 0)/1e9, m.get("reserved_at_start_bytes", 0)/1e9),
              "peak alloc/res %.2f/%.2f" % (m.get("peak_allocated_bytes", 0)/1e9, m.get("peak_reserved_bytes", 0)/1e9),
              "pred %.2f" % (r["predicted"]["allocator_peak_bytes"]/1e9), "tok/s", m.get("tokens_per_second"))
PY
