// Rounds n f32 values to bf16 (nearest even, NaN kept), as raw 16-bit
// values: the activations a library GEMM takes in bf16. Grid-stride.
#include "common.cuh"

extern "C" __global__ void to_bf16(const float* __restrict__ x, unsigned short* __restrict__ y, long long n) {
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x)
        y[e] = f32_to_bf16(x[e]);
}
