// Greedy sampling: the index of each row's largest logit, the first on ties
// (as the CPU path's argmax), and its value. One block per row (blockDim.x a
// multiple of 32); comparisons only, so the result is exact and independent
// of the block size. NaNs are never chosen; a row with no finite maximum
// gives index 0, as on the CPU.
#include "common.cuh"

__device__ __forceinline__ void better(float& v, int& i, float ov, int oi) {
    if (oi >= 0 && (i < 0 || ov > v || (ov == v && oi < i))) { v = ov; i = oi; }
}

extern "C" __global__ void argmax_rows(const float* __restrict__ logits, int* __restrict__ ids,
                                       float* __restrict__ values, int rows, int vocab) {
    int row = blockIdx.x;
    if (row >= rows) return;
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    const float* x = logits + (size_t)row * vocab;
    float v = AERIE_NEG_INF;
    int i = -1;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        if (x[j] > v) { v = x[j]; i = j; }
    for (int off = 16; off > 0; off >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, v, off);
        int oi = __shfl_xor_sync(0xffffffffu, i, off);
        better(v, i, ov, oi);
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { best_v[warp] = v; best_i[warp] = i; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w) better(v, i, best_v[w], best_i[w]);
        ids[row] = i < 0 ? 0 : i;
        values[row] = i < 0 ? AERIE_NEG_INF : v;
    }
}
