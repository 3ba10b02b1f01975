// RMSNorm of each row: out = x / sqrt(mean(x^2) + eps) * weight. The weight
// stays f32 (a few KiB; bf16 checkpoints widen exactly, GGUF's f32 norms lose
// nothing).
// One block per row; the sum of squares is reduced by block_sum, whose order
// depends only on `hidden` and the block size: batch invariant.
#include "common.cuh"

extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ weight,
                                    float* __restrict__ out, int rows, int hidden, float eps) {
    int row = blockIdx.x;
    if (row >= rows) return;
    __shared__ float scratch[32];
    const float* xr = x + (size_t)row * hidden;
    float* outr = out + (size_t)row * hidden;
    float ss = 0.f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, scratch);
    float scale = 1.0f / sqrtf(ss / (float)hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) outr[i] = xr[i] * scale * weight[i];
}
