#!/usr/bin/env bash
# Runs every Aerie test. On a fresh Debian machine it first installs what the
# tests need (scripts/setup.sh). Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export AERIE_THREADS="${AERIE_THREADS:-2}"

echo "== CUDA kernels compile to PTX with NVRTC (no GPU needed)"
.venv/bin/python tests/cuda/nvrtc_compile.py

echo "== cargo test (unit, oracle parity, tree parity, CLI)"
cargo test --release --workspace 2>&1 | tee target/test.log
grep -q "test result: FAILED" target/test.log && exit 1
echo "all tests passed"
