#!/usr/bin/env bash
# How `aerie train-eagle` scales with threads: the same small job at each
# thread count, one after another, reporting the three phases of the
# shipped pipeline (scripts/train_eagle.sh) separately:
#
#   features  the target answers CONVERSATIONS ShareGPT prompts (greedy, up to
#             256 tokens, batches of 8) and its hidden states are stored;
#   stage 1   single-step training (--ttt-steps 1), STEPS optimizer steps;
#   stage 2   training-time test (--ttt-steps 3), STEPS / 2 steps.
#
# Every thread count builds its own feature cache, so no run reuses another's
# work. The figures are per unit (seconds per conversation, seconds per
# step), read from each run's train_run.json, and a ratio against the first
# thread count. Run it on a quiet machine: other load moves the ratios.
#
# Usage: bash scripts/bench_train_threads.sh [THREADS...]   (default: 1 2)
# Environment: CONVERSATIONS (default 24, three feature batches), STEPS (30),
#   OUT (target/bench-train-threads).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=("$@")
[ ${#threads[@]} -gt 0 ] || threads=(1 2)
conv="${CONVERSATIONS:-24}"
steps="${STEPS:-30}"
out="${OUT:-target/bench-train-threads}"
data=$(bash scripts/fetch_sharegpt.sh)
[ -x target/release/aerie ] || cargo build --release -q -p aerie-launcher
rm -rf "$out"
mkdir -p "$out"
# 4 sequences per step: an epoch is ceil(conv / 4) steps.
per_epoch=$(( (conv + 3) / 4 ))
e1=$(( (steps + per_epoch - 1) / per_epoch ))
e2=$(( (steps / 2 + per_epoch - 1) / per_epoch ))
echo "machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) cores; $(date -u +%F)"
echo "job: $conv conversations, stage 1 $((e1 * per_epoch)) steps, stage 2 $((e2 * per_epoch)) steps (3 unrolled)"
printf '%-8s %14s %12s %14s %14s\n' threads "features s/conv" "tokens/s" "stage1 s/step" "stage2 s/step"
first=()
for t in "${threads[@]}"; do
  d="$out/t$t"
  common=(--model smollm2 --data "$data" --cache "$d/features" --conversations "$conv" --max-new-tokens 256)
  AERIE_THREADS=$t ./target/release/aerie train-eagle "${common[@]}" --out "$d/stage1" --epochs "$e1" --ttt-steps 1 >/dev/null 2>"$d.stage1.log"
  AERIE_THREADS=$t ./target/release/aerie train-eagle "${common[@]}" --out "$d/stage2" --epochs "$e2" --ttt-steps 3 --init "$d/stage1" >/dev/null 2>"$d.stage2.log"
  row=$(python3 - "$d" <<'EOF'
import json, sys
d = sys.argv[1]
s1 = json.load(open(f"{d}/stage1/train_run.json"))
s2 = json.load(open(f"{d}/stage2/train_run.json"))
print(s1["feature_secs"] / s1["conversations"], s1["tokens"] / s1["feature_secs"],
      s1["train_secs"] / s1["steps_this_run"], s2["train_secs"] / s2["steps_this_run"])
EOF
)
  read -r fc ft s1 s2 <<<"$row"
  [ ${#first[@]} -gt 0 ] || first=("$fc" "$ft" "$s1" "$s2")
  printf '%-8s %14.3f %12.1f %14.3f %14.3f\n' "$t" "$fc" "$ft" "$s1" "$s2"
done
if [ ${#threads[@]} -gt 1 ]; then
  echo "speed-up of the last thread count over the first (time per unit, first / last):"
  python3 -c "
a = [float(x) for x in '${first[*]}'.split()]
b = [float(x) for x in '$fc $ft $s1 $s2'.split()]
print(f'features {a[0] / b[0]:.2f}x, stage 1 {a[2] / b[2]:.2f}x, stage 2 {a[3] / b[3]:.2f}x')"
fi
