#!/usr/bin/env bash
# A multi-process Aerie cluster on this machine, found through a local etcd:
# etcd, one router, N target workers and M draft workers, each its own
# process, the way a Kubernetes install runs them. Ctrl-C (or SIGTERM)
# stops everything: workers first (they drain and deregister), then the
# router, then etcd.
#
#   deploy/local/cluster.sh [--targets N] [--drafts M] [--port 30000] [--cluster local]
#
# Add or remove workers while it runs, from another shell:
#   aerie draft-worker --etcd-endpoints http://127.0.0.1:$ETCD_PORT --cluster local
#   kill <pid>            # a worker leaves at once (SIGTERM) or within 10 s (kill -9)
# and watch the router's view at http://127.0.0.1:30000/workers.
#
# Needs `etcd` (Debian: etcd-server) and a built `aerie` (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

targets=1 drafts=1 port=30000 cluster=local etcd_port=${ETCD_PORT:-23790}
while [ $# -gt 0 ]; do
  case "$1" in
    --targets) targets=$2; shift 2 ;;
    --drafts) drafts=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --cluster) cluster=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

aerie=${AERIE_BIN:-./target/release/aerie}
[ -x "$aerie" ] || { echo "no $aerie: run scripts/setup.sh first" >&2; exit 1; }
command -v etcd >/dev/null || { echo "etcd is missing (Debian: apt-get install etcd-server)" >&2; exit 1; }

run=$(mktemp -d /tmp/aerie-local.XXXXXX)
pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping: workers drain and deregister, then the router, then etcd"
  # Reverse start order: etcd (first) goes last, so deregistrations land.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; wait "${pids[$i]}" 2>/dev/null || true; done
  rm -rf "$run"
}
trap stop INT TERM EXIT

peer=$((etcd_port + 1))
etcd --name local --data-dir "$run/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
  --initial-cluster "local=http://127.0.0.1:$peer" --logger zap --log-level error > "$run/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$etcd_port/health" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$etcd_port/health" >/dev/null || { echo "etcd did not start; see $run/etcd.log" >&2; exit 1; }
echo "etcd        http://127.0.0.1:$etcd_port"

export AERIE_ETCD_ENDPOINTS="http://127.0.0.1:$etcd_port" AERIE_CLUSTER="$cluster"
# Each process logs to $run; READY lines are echoed here.
start() {
  local name=$1; shift
  "$aerie" "$@" > "$run/$name.out" 2> "$run/$name.log" &
  pids+=($!)
  for _ in $(seq 600); do grep -q '^READY' "$run/$name.out" 2>/dev/null && break; kill -0 "${pids[-1]}" 2>/dev/null || { echo "$name failed:"; tail -5 "$run/$name.log"; exit 1; }; sleep 0.1; done
  printf '%-11s %s (pid %s)\n' "$name" "$(grep -m1 '^READY' "$run/$name.out")" "${pids[-1]}"
}
start router router --port "$port"
for i in $(seq "$targets"); do start "target-$i" target-worker --worker-id "target-$i"; done
for i in $(seq "$drafts"); do start "draft-$i" draft-worker --worker-id "draft-$i"; done

echo
echo "OpenAI endpoint: http://127.0.0.1:$port/v1   workers: http://127.0.0.1:$port/workers   logs: $run"
echo "Ctrl-C stops the cluster."
wait "${pids[1]}"
