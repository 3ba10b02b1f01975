#!/usr/bin/env bash
# Overlapped drafting on and off (issue 34): two `aerie serve` clusters that
# differ only by --speculative-overlap, measured side by side by `aerie bench
# serve` on the built-in `categories` prompts at several concurrencies.
# The drafter is the target itself (STANDALONE self-drafting): every draft
# is accepted under greedy decoding and a draft step costs a whole target
# forward, so what overlap hides is as large as it gets. Fixed trees
# (--speculative-adaptive false), so both servers draft every step.
# Usage: [AERIE=path/to/aerie] [DEVICE=cuda|cpu] [MODEL=smollm2|DIR] [CONC=1,8,32]
#        [PROMPTS=32] [TOKENS=64] [OUT=DIR] bash scripts/bench_overlap.sh
# scripts/gpu_check.sh runs it on the GPU with the random SmolLM2-shaped model
# its Python stage writes; on the CPU it runs as is (smaller CONC and PROMPTS).
set -euo pipefail
cd "$(dirname "$0")/.."
aerie=${AERIE:-./target/release/aerie}
device=${DEVICE:-cpu}
model=${MODEL:-smollm2}
out=${OUT:-target/bench-overlap}
mkdir -p "$out"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
start() { # label port extra...
  local label=$1 port=$2; shift 2
  "$aerie" serve --port "$port" --model-path "$model" --device "$device" \
    --speculative-algorithm STANDALONE --speculative-draft-model-path "$model" \
    --speculative-num-steps 3 --speculative-eagle-topk 1 --speculative-num-draft-tokens 4 \
    --speculative-adaptive false --max-running-requests 32 "$@" > "$out/$label.log" 2>&1 &
  pids+=($!)
}
start off 30151
start on 30152 --speculative-overlap
for l in off on; do
  for _ in $(seq 600); do
    grep -q "OpenAI endpoint" "$out/$l.log" && break
    kill -0 "${pids[0]}" 2>/dev/null && kill -0 "${pids[1]}" 2>/dev/null || { cat "$out/$l.log"; exit 1; }
    sleep 1
  done
  grep -q "OpenAI endpoint" "$out/$l.log" || { echo "$l did not start"; exit 1; }
done
"$aerie" bench serve --base-url off=http://127.0.0.1:30151/v1 --base-url on=http://127.0.0.1:30152/v1 \
  --baseline off --dataset categories --num-prompts "${PROMPTS:-32}" --max-tokens "${TOKENS:-64}" \
  --temperature 0 --concurrency "${CONC:-1,8,32}" --output "$out/run.jsonl" --report-dir "$out"
