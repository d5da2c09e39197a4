#!/usr/bin/env bash
# Unsloth side by side with falcon-desktop (issue #16), on the GPU machine (one H200), from the repository root:
#   bash benchmarks/unsloth_side_by_side.sh            # both models, 100 and 40 steps: 462 s on the H200 (8B model made)
#   bash benchmarks/unsloth_side_by_side.sh 1b         # or one model per call if a call would run past 9 minutes
#   bash benchmarks/unsloth_side_by_side.sh 8b
#   COMPARE_ARGS=--compile SUFFIX=-compile bash benchmarks/unsloth_side_by_side.sh 1b   # ours with train --compile
# Needs here, before the call: .unsloth-site/ (bash ../shared/gpu/make-unsloth-site.sh; it does not fit the carry
# beside .gpu-site as a folder: carry it packed, `tar czf .unsloth-site.tgz .unsloth-site`, and `tar xzf` it first,
# as benchmarks/results/unsloth-recorded-h200/call10c.sh does) and .bench-data/ with the Falcon tokenizer and the SQuAD
# dev half (mkdir -p .bench-data && cp ../shared/data/falcon-7b/* ../shared/data/squad/dev-v2.0-half.json .bench-data/).
# Results: $OUT/unsloth-llama-1b/ and $OUT/unsloth-llama-3-8b/ (unsloth_compare.json, the table, each side's JSON and stderr log).
set -euo pipefail
OUT=${OUT:?set OUT to the folder for the results}
PART=${1:-all}
MODELS=${MODELS:-/tmp/unsloth-models}
DATA=${DATA:-.bench-data}
export PYTHONPATH=$PWD/.unsloth-site:$PWD/.gpu-site:$PWD PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
mkdir -p "$OUT" "$MODELS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

model() {  # name shape [extra make-model flags]: random weights of the shape, made once
  local name=$1 shape=$2; shift 2
  [ -f "$MODELS/$name/config.json" ] || { echo "[unsloth_side_by_side] making $name ($(date +%T))";
    python3 benchmarks/gpu_bench.py make-model --shape "$shape" --tokenizer "$DATA" --out "$MODELS/$name" "$@"; }
}

compare() {  # name steps: each of the steps x 32 questions once, as in a real run's first epoch
  echo "[unsloth_side_by_side] comparing on $1: $2 steps ($(date +%T))"
  # shellcheck disable=SC2086  # COMPARE_ARGS is a list of flags: split on spaces on purpose
  python3 benchmarks/unsloth_compare.py run --model "$MODELS/$1" --data "$DATA/dev-v2.0-half.json" \
    --examples $(( $2 * 32 )) --steps "$2" --batch-size 32 --seq-len 512 --vram 24 --out "$OUT/unsloth-$1${SUFFIX:-}" ${COMPARE_ARGS:-}
  echo "[unsloth_side_by_side] done $1 ($(date +%T))"
}

# ~1.1B Llama (TinyLlama's dimensions) with 65,536 embedding rows: the Falcon tokenizer has 65,024 and no pad
# token, and Unsloth adds one only where the embedding has a spare row (unsloth_zoo/pad_token.py).
if [ "$PART" = all ] || [ "$PART" = 1b ]; then
  model llama-1b llama-1b --vocab-size 65536
  compare llama-1b "${STEPS_1B:-100}"
fi
# Llama-3-8B's shape (128,256 rows: room for the pad), driven by the Falcon tokenizer (ids < 65,024).
if [ "$PART" = all ] || [ "$PART" = 8b ]; then
  model llama-3-8b llama-3-8b
  compare llama-3-8b "${STEPS_8B:-40}"
fi
