// Kernels that exercise the interpreter's execution model itself (they are
// not part of the GPU build): warp shuffles and votes, block barriers with
// threads that return early, dynamic shared memory, and a deadlock.
#include "common.cuh"

// out[t] = value read by thread t from each shuffle form, 4 words per thread.
extern "C" __global__ void selftest_shuffles(int* out) {
    int t = threadIdx.x, lane = t & 31;
    int v = 1000 * (t >> 5) + lane;
    out[4 * t + 0] = __shfl_down_sync(0xffffffffu, v, 3);
    out[4 * t + 1] = __shfl_xor_sync(0xffffffffu, v, 5);
    out[4 * t + 2] = __shfl_sync(0xffffffffu, v, 7);
    out[4 * t + 3] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
}

// Each block sums its threads' ids through shared memory after half of its
// threads have returned; out[block] = the sum over the surviving half.
extern "C" __global__ void selftest_early_exit(int* out) {
    __shared__ int acc[1024];
    int t = threadIdx.x;
    if (t >= (int)blockDim.x / 2) return;
    acc[t] = t + (int)blockIdx.x;
    __syncthreads();
    if (t == 0) {
        int s = 0;
        for (int i = 0; i < (int)blockDim.x / 2; ++i) s += acc[i];
        out[blockIdx.x] = s;
    }
}

// Dynamic shared memory: reverse a block of ints through it.
extern "C" __global__ void selftest_dynamic_shared(const int* in, int* out) {
    AERIE_DYNAMIC_SHARED(int, buf);
    int t = threadIdx.x, n = blockDim.x;
    buf[t] = in[blockIdx.x * n + t];
    __syncthreads();
    out[blockIdx.x * n + t] = buf[n - 1 - t];
}

// A barrier only even threads reach: a deadlock on the GPU, an error here.
extern "C" __global__ void selftest_divergent_barrier(int* out) {
    if (threadIdx.x % 2 == 0) {
        __syncthreads();
        out[threadIdx.x] = 1;
    } else {
        for (;;) {
            __syncwarp();
        }
    }
}

// Writes one element past `n`: AddressSanitizer must report it.
extern "C" __global__ void selftest_out_of_bounds(float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) x[i] = 1.0f;
}
