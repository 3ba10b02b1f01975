#!/usr/bin/env bash
# Chart tests: render, lint and schema-check charts/aerie, no helm binary or cluster needed.
# Uses the repository's .venv (created when missing) and installs the pinned test
# dependencies only when they are not importable yet.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
py=.venv/bin/python

if ! "$py" -c 'import helm_python, kubernetes_validate, yaml, jsonschema' 2>/dev/null; then
    "$py" -m pip install --quiet --disable-pip-version-check \
        'helm-python-sdk==0.2.2' 'kubernetes-validate==1.37.0' 'pyyaml>=6'
fi

exec "$py" tests/chart/test_chart.py "$@"
