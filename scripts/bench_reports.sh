#!/usr/bin/env bash
# Regenerates the `aerie bench` results in docs/benchmarks/: MT-bench and the
# built-in categories at concurrency 1 and 8 with and without speculation,
# a sweep of speculative settings on MT-bench, and the comparison against
# llama.cpp's server (installed on first use). About 40 minutes on 2 cores.
# Usage: bash scripts/bench_reports.sh [serve|sweep|compare]...
set -euo pipefail
cd "$(dirname "$0")/.."
aerie=./target/release/aerie
[ -x "$aerie" ] || cargo build --release -q -p aerie-launcher
out=docs/benchmarks
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(serve sweep compare)
for part in "${parts[@]}"; do
  case "$part" in
    serve)
      # Two clusters side by side; bench serve interleaves them, so only
      # one decodes at a time.
      $aerie --threads 2 serve --port 30101 > /tmp/aerie-eagle.log 2>&1 & eagle=$!
      $aerie --threads 2 serve --port 30102 --no-speculation > /tmp/aerie-plain.log 2>&1 & plain=$!
      trap 'kill $eagle $plain 2>/dev/null || true' EXIT
      for log in /tmp/aerie-eagle.log /tmp/aerie-plain.log; do
        until grep -q "OpenAI endpoint" "$log"; do sleep 1; done
      done
      for ds in mt-bench categories; do
        n=32; [ "$ds" = categories ] && n=24
        $aerie --threads 2 bench serve --base-url eagle=http://127.0.0.1:30101/v1 --base-url plain=http://127.0.0.1:30102/v1 \
          --baseline plain --dataset "$ds" --num-prompts "$n" --max-tokens 128 --concurrency 1,8 \
          --output "$out/serve-$ds/run.jsonl" --report-dir "$out/serve-$ds"
      done
      kill $eagle $plain; wait $eagle $plain 2>/dev/null || true; trap - EXIT
      ;;
    sweep)
      $aerie --threads 2 bench sweep --dataset mt-bench --num-prompts 16 --max-tokens 96 --concurrency 1,8 \
        --steps 1,3,5 --topk 1,4 --draft-tokens 2,4,6,8 --output "$out/sweep-mt-bench/run.jsonl" --report-dir "$out/sweep-mt-bench"
      ;;
    compare)
      $aerie --threads 2 bench compare --dataset mt-bench --num-prompts 16 --max-tokens 128 \
        --output "$out/compare-llama-cpp/run.jsonl" --report-dir "$out/compare-llama-cpp"
      ;;
    *) echo "unknown part $part (serve, sweep, compare)" >&2; exit 2 ;;
  esac
done
