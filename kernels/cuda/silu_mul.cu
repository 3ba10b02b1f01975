// SwiGLU's gate: out[r, i] = silu(gate_up[r, i]) * gate_up[r, inter + i],
// gate_up being the fused [rows, 2 * inter] output of the gate and up
// projections. Element-wise, grid-stride.
#include "common.cuh"

extern "C" __global__ void silu_mul(const float* __restrict__ gate_up, float* __restrict__ out, int rows, int inter) {
    long long n = (long long)rows * inter;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
        long long r = e / inter, i = e % inter;
        float g = gate_up[r * 2 * inter + i], u = gate_up[r * 2 * inter + inter + i];
        out[e] = g / (1.0f + expf(-g)) * u;
    }
}
