#!/usr/bin/env bash
# Runs every Aerie test. On a fresh Debian machine it first installs what the
# tests need (scripts/setup.sh). Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export AERIE_THREADS="${AERIE_THREADS:-2}"
# The benchmark datasets' parsers are tested on the real (truncated) ShareGPT.
export AERIE_SHAREGPT="$(bash scripts/fetch_sharegpt.sh)"
# setup.sh installed etcd-server: the discovery tests must run, not skip.
export AERIE_REQUIRE_ETCD=1

echo "== CUDA kernels compile to PTX with NVRTC, and to sm_80/sm_90 cubins with nvcc (no GPU needed)"
.venv/bin/python tests/cuda/nvrtc_compile.py | tee target/nvrtc.log
.venv/bin/python tests/cuda/nvcc_compile.py | tee -a target/nvrtc.log

echo "== CUDA kernels in the interpreter under AddressSanitizer"
bash tests/cuda/interp_asan.sh | tee -a target/nvrtc.log

echo "== cargo test (unit, oracle parity, tree parity, CLI, cluster, etcd discovery)"
set +e
cargo test --release --workspace 2>&1 | tee target/test.log
status=${PIPESTATUS[0]}

echo "== Prometheus alert rules (promtool unit tests)"
promtool test rules deploy/prometheus/alerts_test.yml 2>&1 | tee target/promtool.log
[ "${PIPESTATUS[0]}" -eq 0 ] && echo "1 passed, 0 failed" | tee -a target/promtool.log || { echo "0 passed, 1 failed" | tee -a target/promtool.log; status=1; }

echo "== Helm chart (render, strict lint, kubernetes-validate --strict, per-value-set assertions)"
bash tests/chart/run.sh 2>&1 | tee target/chart.log
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== Container images and a containerised cluster (skipped without Docker)"
# The CUDA image is built too (its ~1 GB of wheels are cached after the first run).
AERIE_TEST_CUDA_IMAGE="${AERIE_TEST_CUDA_IMAGE:-1}" bash tests/container/run.sh 2>&1 | tee target/container.log
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
# One closing line over every runner: cargo's per-binary results plus NVRTC's.
read -r passed failed < <(awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
  /^[0-9]+ passed, [0-9]+ failed$/ { p += $1; f += $3 }
  END { print p + 0, f + 0 }' target/test.log target/nvrtc.log target/promtool.log target/chart.log target/container.log)
echo "total: ${passed} passed, ${failed} failed"
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ]
