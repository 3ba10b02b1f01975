// The residual add: x += y over n elements, grid-stride.
#include "common.cuh"

extern "C" __global__ void add_inplace(float* __restrict__ x, const float* __restrict__ y, long long n) {
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x)
        x[e] += y[e];
}
