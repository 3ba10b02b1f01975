// A projection, batch invariant: y[r, c] = sum_k x[r, k] * w[c, k] (+ b[c]),
// x [rows, k] f32, w [n, k] bf16 (`linear_bf16`) or f16 (`linear_f16`) (a
// Hugging Face Linear's layout), b f32 or null, y [rows, n] f32.
//
// Each warp owns one output column and LINEAR_ROWS rows, so a weight row is
// read once per LINEAR_ROWS rows. The reduction of one output is fixed: lane
// l sums k-indices l, l + 32, l + 64, ... in order, then the butterfly
// warp_sum combines the lanes. That order depends on k alone, never on the
// number of rows or on where a row sits in the launch, which is the property
// a shape-dependent split-K (cuBLAS's heuristics) does not give: a token's
// logits are the same bits in a batch of 1 or 64.
// Grid (ceil(n / warps per block), ceil(rows / LINEAR_ROWS)).
#include "common.cuh"

#define LINEAR_ROWS 8

template <class W>
__device__ __forceinline__ void linear_body(const float* __restrict__ x, const unsigned short* __restrict__ w,
                                            const float* __restrict__ bias, float* __restrict__ y, int rows, int n, int k) {
    int warps = blockDim.x >> 5;
    int c = blockIdx.x * warps + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    int r0 = blockIdx.y * LINEAR_ROWS;
    if (c >= n || r0 >= rows) return;
    int nr = rows - r0 < LINEAR_ROWS ? rows - r0 : LINEAR_ROWS;
    const unsigned short* wr = w + (size_t)c * k;
    const float* xr = x + (size_t)r0 * k;
    float acc[LINEAR_ROWS];
    for (int r = 0; r < LINEAR_ROWS; ++r) acc[r] = 0.f;
    for (int kk = lane; kk < k; kk += 32) {
        float wv = W::load(wr[kk]);
        for (int r = 0; r < LINEAR_ROWS; ++r)
            if (r < nr) acc[r] += xr[(size_t)r * k + kk] * wv;
    }
    float b = bias ? bias[c] : 0.f;
    for (int r = 0; r < nr; ++r) {  // nr is the same for every lane of the warp
        float s = warp_sum(acc[r]);
        if (lane == 0) y[(size_t)(r0 + r) * n + c] = s + b;
    }
}

extern "C" __global__ void linear_bf16(const float* __restrict__ x, const unsigned short* __restrict__ w,
                                       const float* __restrict__ bias, float* __restrict__ y, int rows, int n, int k) {
    linear_body<WeightBf16>(x, w, bias, y, rows, n, k);
}

extern "C" __global__ void linear_f16(const float* __restrict__ x, const unsigned short* __restrict__ w,
                                      const float* __restrict__ bias, float* __restrict__ y, int rows, int n, int k) {
    linear_body<WeightF16>(x, w, bias, y, rows, n, k);
}
