#!/usr/bin/env bash
# Runs every Aerie test. On a fresh Debian machine it first installs what the
# tests need (scripts/setup.sh). Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export AERIE_THREADS="${AERIE_THREADS:-2}"
# The benchmark datasets' parsers are tested on the real (truncated) ShareGPT.
export AERIE_SHAREGPT="$(bash scripts/fetch_sharegpt.sh)"

echo "== CUDA kernels compile to PTX with NVRTC (no GPU needed)"
.venv/bin/python tests/cuda/nvrtc_compile.py | tee target/nvrtc.log

echo "== cargo test (unit, oracle parity, tree parity, CLI)"
set +e
cargo test --release --workspace 2>&1 | tee target/test.log
status=${PIPESTATUS[0]}
# One closing line over every runner: cargo's per-binary results plus NVRTC's.
read -r passed failed < <(awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
  /^[0-9]+ passed, [0-9]+ failed$/ { p += $1; f += $3 }
  END { print p + 0, f + 0 }' target/test.log target/nvrtc.log)
echo "total: ${passed} passed, ${failed} failed"
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ]
