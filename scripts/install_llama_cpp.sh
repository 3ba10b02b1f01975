#!/usr/bin/env bash
# Installs the peer server for benchmarks, llama.cpp's OpenAI-compatible
# server from PyPI (llama-cpp-python[server]==0.3.36), into its own venv at
# ${AERIE_PEERS_DIR:-~/.cache/aerie/peers}/llama-cpp. PyPI has no Linux
# wheel for it, so pip compiles llama.cpp from source: about 15 minutes on
# 2 cores. Idempotent. Prints the venv's python on success.
set -euo pipefail
dir="${AERIE_PEERS_DIR:-$HOME/.cache/aerie/peers}/llama-cpp"
if ! "$dir/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
  command -v c++ >/dev/null || { echo "install_llama_cpp: needs a C++ compiler (apt-get install build-essential)" >&2; exit 1; }
  echo "install_llama_cpp: building llama-cpp-python[server]==0.3.36 into $dir (compiles llama.cpp; ~15 min on 2 cores)" >&2
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check 'llama-cpp-python[server]==0.3.36'
fi
echo "$dir/bin/python"
