#!/usr/bin/env bash
# The soak test's long profile: `aerie serve` with 2 targets and 2 drafts
# under closed-loop load with a fault every few seconds (see
# launcher/tests/soak.rs for the faults and the checks).
#   bash scripts/soak.sh [SECONDS=3600] [FAULT_EVERY_SECONDS=4]
# The report (JSON) is written to target/soak-report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-3600}"
every="${2:-4}"
mkdir -p target
AERIE_SOAK_SECS="$secs" AERIE_SOAK_FAULT_SECS="$every" AERIE_SOAK_REPORT="$PWD/target/soak-report.json" \
  cargo test --release -q -p aerie-launcher --test integration soak:: -- --nocapture 2>&1 \
  | grep -av '^\[\(target\|draft\|router\)' | grep -av 'WARN\|INFO'
echo "report: target/soak-report.json"
