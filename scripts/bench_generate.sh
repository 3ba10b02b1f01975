#!/usr/bin/env bash
# `aerie generate` with the shipped EAGLE head against plain `aerie generate`,
# on MT-bench first turns, in one run.
#
# Each question is generated twice by separate `aerie generate --json`
# processes, once plainly and once speculatively; which goes first alternates
# from question to question, so drift in a shared machine's speed falls on
# both sides alike. Two ratios are printed: decode speed (the sum of
# completion tokens over the sum of `decode_ms`; the draft head's pass over
# the prompt falls outside it) and whole-process wall time, launch to exit,
# model and head loading included, which is what a user of the CLI waits
# for. Greedy output
# must be the same token for token (speculation is lossless); the script
# fails if any question differs.
#
# Usage: bash scripts/bench_generate.sh [QUESTIONS] [speculative flags]
#   QUESTIONS (default 20) are taken evenly spaced from the 80, as
#   `aerie eval-draft --questions` does. The default speculative flags are
#   `--speculative-algorithm EAGLE` alone, which `aerie generate` runs as
#   `aerie serve` does by default: the shipped head as a (1, 1, 2) chain over
#   its 2,048-id hot vocabulary with --speculative-min-draft-score 0.3. The
#   setting actually run is printed, from the JSON's `speculative` block.
# Environment: AERIE_THREADS (default: all cores), MAX_TOKENS (256),
#   PROMPTS (../shared/data/mt_bench.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-20}"
[ $# -gt 0 ] && shift
spec=("$@")
if [ ${#spec[@]} -eq 0 ]; then
  spec=(--speculative-algorithm EAGLE)
fi
[ -x target/release/aerie ] || cargo build --release -q -p aerie-launcher
prompts="${PROMPTS:-../shared/data/mt_bench.jsonl}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$prompts" "$n" "$work" <<'EOF'
import json, sys
path, n, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = [json.loads(l) for l in open(path) if l.strip()]
n = min(n, len(rows))
for i in range(n):
    r = rows[i * len(rows) // n]
    open(f"{work}/q{i:03d}.txt", "w").write(r["turns"][0])
EOF
common=(--json --ignore-eos --max-tokens "${MAX_TOKENS:-256}")
i=0
for q in "$work"/q*.txt; do
  if [ $((i % 2)) -eq 0 ]; then order="plain spec"; else order="spec plain"; fi
  for side in $order; do
    t0=$(date +%s%N)
    if [ "$side" = plain ]; then
      ./target/release/aerie generate "${common[@]}" --prompt-file "$q" > "${q%.txt}.plain.json"
    else
      ./target/release/aerie generate "${common[@]}" "${spec[@]}" --prompt-file "$q" > "${q%.txt}.spec.json"
    fi
    echo $(( ($(date +%s%N) - t0) / 1000000 )) > "${q%.txt}.$side.wall_ms"
  done
  i=$((i + 1))
done
python3 - "$work" "${spec[*]}" <<'EOF'
import glob, json, sys
work, flags = sys.argv[1], sys.argv[2]
tot = {"plain": [0, 0.0], "spec": [0, 0.0]}
wall = {"plain": 0, "spec": 0}
mismatch, verifies, accepted, setting = [], 0, 0, None
for q in sorted(glob.glob(f"{work}/q*.txt")):
    base = q[:-4]
    p = json.load(open(base + ".plain.json"))
    s = json.load(open(base + ".spec.json"))
    if p["token_ids"] != s["token_ids"]:
        mismatch.append(base.rsplit("/", 1)[1])
    for side, v in (("plain", p), ("spec", s)):
        tot[side][0] += v["stats"]["completion_tokens"]
        tot[side][1] += v["stats"]["decode_ms"]
        wall[side] += int(open(f"{base}.{side}.wall_ms").read())
    setting = setting or s.get("speculative")
    verifies += s["stats"].get("spec_verify_ct", 0)
    accepted += s["stats"].get("spec_num_correct_drafts", 0)
rate = {k: t / (ms / 1e3) for k, (t, ms) in tot.items()}
print(f"aerie generate, {len(glob.glob(work + '/q*.txt'))} MT-bench first turns, speculative flags: {flags}")
if setting:
    print("setting run:", json.dumps(setting))
print(f"decode: plain {rate['plain']:.1f} tok/s   speculative {rate['spec']:.1f} tok/s   ratio {rate['spec'] / rate['plain']:.3f}x")
print(f"process wall time: plain {wall['plain'] / 1e3:.1f} s   speculative {wall['spec'] / 1e3:.1f} s   "
      f"ratio {wall['plain'] / max(wall['spec'], 1):.3f}x")
if verifies:
    print(f"tau {(accepted + verifies) / verifies:.3f} ({verifies} verifies)")
if mismatch:
    print(f"greedy outputs differ on {mismatch}", file=sys.stderr)
    sys.exit(1)
print("greedy outputs identical on every question")
EOF
