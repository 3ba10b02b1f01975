#!/usr/bin/env bash
# Issue 36's benchmark: adaptive speculation budgets against plain decoding
# and the fixed settings, with `aerie bench serve` interleaving the servers
# (one decodes at a time) on MT-bench and the `categories` set, 128 tokens,
# at concurrency 1, 4, 8 and 16, greedy; then MT-bench at temperature 0.7.
#   plain      aerie serve --no-speculation
#   fixed      aerie serve --speculative-adaptive false (the shipped head, a
#              (1, 1, 2) chain, minimum draft score 0.3, the whole tree verified)
#   adaptive   aerie serve, the default since session 36 (depth 0 or 1 per step)
#   adaptive3  --speculative-adaptive over a (3, 1, 4) chain (depth 0–3)
# Usage: [SERVERS="plain adaptive3"] [OUT=DIR] bash scripts/bench_adaptive.sh [NUM_PROMPTS=16] [PART...]
#   PART: mt-bench, categories, mt-bench-t0.7 (default: all three)
#   SERVERS: a subset of the four (plain always runs: it is the baseline)
# Results: docs/benchmarks/adaptive-*/ (report.md, run.jsonl), or OUT/adaptive-*/.
set -euo pipefail
cd "$(dirname "$0")/.."
aerie=./target/release/aerie
[ -x "$aerie" ] || cargo build --release -q -p aerie-launcher
n="${1:-16}"
out="${OUT:-docs/benchmarks}"
servers=" plain ${SERVERS:-fixed adaptive adaptive3} "
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
start() { # label port flags...
  local label=$1 port=$2; shift 2
  [[ "$servers" == *" $label "* ]] || return 0
  $aerie --threads 2 serve --port "$port" "$@" > "/tmp/aerie-$label.log" 2>&1 &
  pids+=($!)
}
start plain 30121 --no-speculation
start fixed 30122 --speculative-adaptive false
start adaptive 30123 --speculative-adaptive
start adaptive3 30124 --speculative-adaptive --speculative-num-steps 3 --speculative-eagle-topk 1 \
  --speculative-num-draft-tokens 4 --speculative-min-draft-score 0.3
for l in plain fixed adaptive adaptive3; do
  [[ "$servers" == *" $l "* ]] || continue
  until grep -q "OpenAI endpoint" "/tmp/aerie-$l.log"; do
    kill -0 "${pids[0]}" 2>/dev/null || { cat "/tmp/aerie-$l.log"; exit 1; }
    sleep 1
  done
done
urls=()
port=30121
for l in plain fixed adaptive adaptive3; do
  [[ "$servers" == *" $l "* ]] && urls+=(--base-url "$l=http://127.0.0.1:$port/v1")
  port=$((port + 1))
done
run() { # name dataset prompts temperature
  mkdir -p "$out/adaptive-$1"
  $aerie --threads 2 bench serve "${urls[@]}" --baseline plain --dataset "$2" --num-prompts "$3" \
    --max-tokens 128 --temperature "$4" --concurrency 1,4,8,16 \
    --output "$out/adaptive-$1/run.jsonl" --report-dir "$out/adaptive-$1"
}
shift || true
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(mt-bench categories mt-bench-t0.7)
for part in "${parts[@]}"; do
  case "$part" in
    mt-bench) run mt-bench mt-bench "$n" 0 ;;
    categories) run categories categories "$n" 0 ;;
    mt-bench-t0.7) run mt-bench-t0.7 mt-bench "$n" 0.7 ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
