#!/usr/bin/env bash
# Container acceptance test: Aerie's images, and a discovery-mode cluster made
# of separate containers on a private Docker network.
#
#   tests/container/run.sh
#
# 1. Builds aerie-base:bookworm, aerie:cpu and aerie-etcd:bookworm with
#    deploy/docker/build.sh (cached images are reused; a changed binary is
#    noticed and repackaged).
# 2. Checks the cpu image: it runs as uid 10001, `--version` and the role
#    subcommands start, the shipped EAGLE head is in place, and `generate`
#    works with the host's model cache mounted at /models (and prints what
#    the host binary prints).
# 3. Runs etcd, a router, a target worker and two draft workers, each in its
#    own container; only the router's HTTP port is published, on 127.0.0.1.
#    cluster_test.py (the official openai client) records greedy outputs with
#    no drafts (plain decoding), lets the drafts join, then streams requests
#    while one draft is killed and the other is cut off the network, and
#    checks that every request finishes with the plain output and that the
#    router drops both drafts within the lease TTL plus a few seconds.
#
# Without Docker it prints `SKIP: <reason>` and exits 0. aerie:cuda (about
# 1 GB of wheels to fetch once) is built and checked only with
# AERIE_TEST_CUDA_IMAGE=1 (scripts/test.sh sets it). Set AERIE_TEST_KEEP=1 to leave the containers
# running after the test for a look around.
#
# The last line is `N passed, M failed`; the exit status is 1 if any check failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo=$(pwd)

if ! command -v docker >/dev/null 2>&1; then
  echo "SKIP: docker is not installed"; exit 0
fi
if ! docker info >/dev/null 2>&1; then
  echo "SKIP: the Docker daemon is not reachable"; exit 0
fi

passed=0
failed=0
pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
finish() {
  echo "$passed passed, $failed failed"
  if [ "$failed" = 0 ]; then exit 0; fi
  exit 1
}

py=$repo/.venv/bin/python
bin=${AERIE_BIN:-$repo/target/release/aerie}
models=${AERIE_MODEL_DIR:-$HOME/.cache/aerie/models}
gguf=SmolLM2-135M-Instruct.Q4_1.gguf
run_id=aerie-ct-$$
net=$run_id

cleanup() {
  if [ "${AERIE_TEST_KEEP:-0}" = 1 ]; then
    echo "AERIE_TEST_KEEP=1: leaving containers labelled aerie-ct.run=$run_id and network $net"
    return
  fi
  local ids
  ids=$(docker ps -aq --filter "label=aerie-ct.run=$run_id" 2>/dev/null)
  [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1
  docker network rm "$net" >/dev/null 2>&1
  true
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 130' INT TERM

# ------------------------------------------------------------ images ------

t0=$SECONDS
if out=$(deploy/docker/build.sh base cpu etcd 2>&1); then
  pass "images built: aerie-base:bookworm, aerie:cpu, aerie-etcd:bookworm ($((SECONDS - t0)) s)"
  echo "$out" | sed -n 's/^/  /p' | grep -E 'aerie|took|built' || true
else
  echo "$out" | tail -n 20 | sed 's/^/  /'
  fail "deploy/docker/build.sh base cpu etcd"
  finish
fi

uid=$(docker run --rm --entrypoint id aerie:cpu -u 2>&1)
user=$(docker run --rm --entrypoint id aerie:cpu -un 2>&1)
if [ "$uid" = 10001 ] && [ "$user" = aerie ]; then
  pass "aerie:cpu runs as the non-root user aerie (uid 10001)"
else
  fail "aerie:cpu should run as aerie/10001, runs as '$user'/'$uid'"
fi

ver=$(docker run --rm aerie:cpu --version 2>&1)
host_ver=$("$bin" --version 2>&1)
if [ -n "$ver" ] && [ "$ver" = "$host_ver" ] && [[ "$ver" == aerie* ]]; then
  pass "aerie:cpu --version: $ver"
else
  fail "aerie:cpu --version printed '$ver' (the host binary: '$host_ver')"
fi

for role in router target-worker draft-worker; do
  help=$(docker run --rm aerie:cpu "$role" --help 2>&1)
  if [ $? = 0 ] && grep -q -- '--etcd-endpoints' <<<"$help" && grep -q -- '--cluster' <<<"$help"; then
    pass "aerie:cpu $role --help (has --etcd-endpoints and --cluster)"
  else
    fail "aerie:cpu $role --help should list --etcd-endpoints and --cluster"
  fi
done

if docker run --rm --entrypoint /bin/sh aerie:cpu -c \
    'test -f /opt/aerie/models/smollm2-135m-eagle/config.json && test -f /opt/aerie/models/smollm2-135m-eagle/model.safetensors && test "$AERIE_MODEL_DIR" = /models'; then
  pass "aerie:cpu holds the EAGLE head in /opt/aerie/models and sets AERIE_MODEL_DIR=/models"
else
  fail "aerie:cpu lacks /opt/aerie/models/smollm2-135m-eagle or AERIE_MODEL_DIR=/models"
fi

if [ ! -f "$models/$gguf" ]; then
  echo "  $models/$gguf is missing: fetching it with the host binary"
  AERIE_MODEL_DIR=$models "$bin" fetch-model smollm2 >/dev/null || true
fi
if [ ! -f "$models/$gguf" ]; then
  fail "no $models/$gguf to mount (run scripts/setup.sh or aerie fetch-model smollm2)"
  finish
fi

gen=(generate --model smollm2 --prompt "Name a primary color." --max-tokens 8 --json)
in_image=$(docker run --rm -e AERIE_THREADS=1 -v "$models:/models:ro" aerie:cpu "${gen[@]}" 2>/dev/null)
on_host=$(AERIE_THREADS=1 AERIE_MODEL_DIR=$models "$bin" "${gen[@]}" 2>/dev/null)
text_of() { "$py" -c 'import json,sys; print(json.loads(sys.stdin.read())["text"])' 2>/dev/null; }
if [ -n "$in_image" ] && [ "$(text_of <<<"$in_image")" = "$(text_of <<<"$on_host")" ]; then
  pass "generate in aerie:cpu with the model mounted read-only at /models matches the host: $(text_of <<<"$in_image" | head -c 60)"
else
  fail "generate in aerie:cpu with the model mounted (image: '${in_image:0:200}', host: '${on_host:0:200}')"
fi

if [ "${AERIE_TEST_CUDA_IMAGE:-0}" = 1 ]; then
  t0=$SECONDS
  if out=$(deploy/docker/build.sh cuda 2>&1); then
    pass "aerie:cuda built ($((SECONDS - t0)) s, $(docker image inspect -f '{{.Size}}' aerie:cuda | awk '{printf "%.0f MB", $1/1e6}'))"
    missing=$(docker run --rm --entrypoint /bin/sh aerie:cuda -c \
      'for f in /opt/aerie/cuda/lib/*.so*; do ldd "$f" | grep "not found" | grep -v libcuda.so; done' 2>&1)
    libs=$(docker run --rm --entrypoint /bin/sh aerie:cuda -c 'ls /opt/aerie/cuda/lib | tr "\n" " "')
    if [ -z "$missing" ] && [[ "$libs" == *libcudart.so.12* ]] && [[ "$libs" == *libcublas.so.12* ]] \
        && [[ "$libs" == *libnvrtc.so.12* ]] && [[ "$libs" == *libnccl.so.2* ]]; then
      pass "aerie:cuda holds the CUDA libraries and each resolves its dependencies (libcuda.so.1 comes from the driver): $libs"
    else
      fail "aerie:cuda libraries: [$libs] unresolved: [$missing]"
    fi
    # The GPU device compiles its kernels with the image's NVRTC at start;
    # that needs no GPU, so it is checked here. Without a driver the
    # command says so and still exits 0.
    info=$(docker run --rm aerie:cuda cuda-info 2>&1)
    if [[ "$info" == *"compiled for sm_80"* ]] && [[ "$info" == *"compiled for sm_90"* ]]; then
      pass "aerie:cuda compiles every kernel with its NVRTC: $(echo "$info" | tr '\n' ' ' | head -c 300)"
    else
      fail "aerie cuda-info in aerie:cuda: $info"
    fi
  else
    echo "$out" | tail -n 20 | sed 's/^/  /'
    fail "deploy/docker/build.sh cuda"
  fi
else
  echo "SKIP: aerie:cuda image (downloads about 1 GB of CUDA wheels once; set AERIE_TEST_CUDA_IMAGE=1)"
fi

# ----------------------------------------------------------- cluster ------

if [ ! -x "$py" ] || ! "$py" -c 'import openai' 2>/dev/null; then
  fail "$py with the openai package is missing (run scripts/setup.sh)"
  finish
fi

docker network create --label "aerie-ct.run=$run_id" "$net" >/dev/null || { fail "docker network create $net"; finish; }

results=$(mktemp)
"$py" tests/container/cluster_test.py --run-id "$run_id" --network "$net" \
  --models "$models" --results "$results"
rc=$?
p=$(grep -c '^PASS' "$results")
f=$(grep -c '^FAIL' "$results")
rm -f "$results"
passed=$((passed + p))
failed=$((failed + f))
if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
  fail "cluster_test.py exited with status $rc"
fi
finish
