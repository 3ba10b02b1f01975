#!/usr/bin/env bash
# Installs what Aerie's commands need on a Debian machine: system packages,
# a Rust toolchain check, the Python tools venv (.venv), and the default model.
# Sourced by scripts/test.sh and scripts/run.sh; safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v python3 >/dev/null || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v cc >/dev/null || missing+=(build-essential)
command -v pkg-config >/dev/null || missing+=(pkg-config)
# The cluster tests scrape the workers with a real Prometheus.
command -v prometheus >/dev/null || missing+=(prometheus)
# etcd-client (router discovery) compiles etcd's protos with protoc at build time.
command -v protoc >/dev/null || missing+=(protobuf-compiler)
# The discovery tests run a real single-node etcd on loopback.
command -v etcd >/dev/null || missing+=(etcd-server)
# The soak test partitions a worker with iptables.
command -v iptables >/dev/null || missing+=(iptables)
# The container test builds its Debian base image with debootstrap (only
# where a Docker engine is present; it is skipped otherwise).
if command -v docker >/dev/null && ! command -v debootstrap >/dev/null; then missing+=(debootstrap); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
  echo "setup: installing Debian's cargo (Aerie needs Rust >= 1.89)"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cargo rustc
fi
rustv=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n1.89.0\n' "$rustv" | sort -V | head -1)" != "1.89.0" ]; then
  echo "setup: rustc $rustv is older than 1.89; install a newer toolchain (rustup) and retry" >&2
  exit 1
fi

# Python tools for the tests: NVRTC for the CUDA compile check, nvcc 13.0
# for the sm_80/sm_90 cubins and ptxas figures (every companion wheel pinned
# to the same 13.0 release: a lone nvcc pin pulls newer ones whose ptxas
# refuses its PTX), the official openai client for the router's
# conformance suite, and jsonschema to validate structured outputs.
cuda13=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import nvidia.cuda_nvrtc, openai, jsonschema' 2>/dev/null \
   || ! ls .venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc >/dev/null 2>&1; then
  echo "setup: creating .venv with nvidia-cuda-nvrtc-cu12, nvcc 13.0, openai and jsonschema"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check 'nvidia-cuda-nvrtc-cu12==12.9.86' 'openai==1.109.1' 'jsonschema==4.23.0' "${cuda13[@]}"
fi

cargo build --release -q -p aerie-launcher
# The default model (idempotent: a verified copy is reused).
./target/release/aerie fetch-model smollm2 >/dev/null
