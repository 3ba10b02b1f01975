#!/usr/bin/env bash
# The CUDA interpreter under AddressSanitizer: every GPU kernel runs once on
# exactly-sized heap buffers (must be clean), and a kernel that writes one
# element past its buffer must be reported. Prints "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
src=kernels/cuda/interp
bin=target/cuda-interp-asan
mkdir -p target
passed=0 failed=0
if ! g++ -std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
    -I kernels/cuda -I "$src" -o "$bin" "$src/asan_driver.cpp" "$src/runtime.cpp"; then
  echo "0 passed, 1 failed"; exit 1
fi
# ASan warns once that it does not fully support swapcontext; the fibers
# switch stacks only through it, which it tracks.
if ASAN_OPTIONS=detect_leaks=1 "$bin" > target/cuda-interp-asan.log 2>&1; then
  k=$(grep -c '^ok' target/cuda-interp-asan.log); echo "ok   all kernels clean under ASan ($k launches)"; passed=$((passed + 1))
else
  echo "FAIL kernels under ASan:"; cat target/cuda-interp-asan.log; failed=$((failed + 1))
fi
# Every GPU kernel must be among the launches above.
missing=$(grep -ho 'extern "C" __global__ void [a-z0-9_]*' kernels/cuda/*.cu | awk '{print $5}' \
  | while read -r k; do grep -qx "ok   $k" target/cuda-interp-asan.log || echo "$k"; done)
if [ -n "$missing" ]; then echo "FAIL kernels not run under ASan: $missing"; failed=$((failed + 1)); fi
if ASAN_OPTIONS=detect_leaks=0 "$bin" oob > target/cuda-interp-asan-oob.log 2>&1; then
  echo "FAIL an out-of-bounds write in a kernel was not reported"; failed=$((failed + 1))
elif grep -q 'heap-buffer-overflow' target/cuda-interp-asan-oob.log && grep -q 'selftest_out_of_bounds' target/cuda-interp-asan-oob.log; then
  echo "ok   an out-of-bounds write in a kernel is reported (heap-buffer-overflow in selftest_out_of_bounds)"; passed=$((passed + 1))
else
  echo "FAIL the out-of-bounds run failed without ASan's report:"; cat target/cuda-interp-asan-oob.log; failed=$((failed + 1))
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
