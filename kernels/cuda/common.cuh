// Helpers shared by the kernels in this folder. Every reduction here runs in
// an order fixed by the block size alone, never by how many rows a launch
// carries, so each row's result is batch invariant.
#pragma once

// -inf without math.h, which NVRTC does not have.
#define AERIE_NEG_INF __uint_as_float(0xff800000u)

// Dynamic shared memory (the launch's `shared_bytes`), as `type name[]`. The
// interpreter has no `extern __shared__` arrays, so kernels declare it
// through this macro.
#ifdef AERIE_CUDA_INTERPRET
#define AERIE_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(aerie_interp::dynamic_shared())
#else
#define AERIE_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

// bf16 is kept as its raw 16 bits, so these sources need no CUDA header
// (NVRTC finds none on a host without a toolkit) and run unchanged in the
// interpreter. The conversions are exact bit operations on either side.
__device__ __forceinline__ float bf16_to_f32(unsigned short b) {
    return __uint_as_float(((unsigned int)b) << 16);
}

// Round to nearest even; NaN stays NaN.
__device__ __forceinline__ unsigned short f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// Butterfly sum over a full warp: every lane ends with the same total, summed
// in the same order.
__device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024): each warp
// reduces its lanes, then every warp reduces the per-warp sums, so all
// threads return the same value. `scratch` is 32 floats of shared memory;
// the closing barrier lets the caller reuse it at once.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : 0.f;
    t = warp_sum(t);
    __syncthreads();
    return t;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : AERIE_NEG_INF;
    t = warp_max(t);
    __syncthreads();
    return t;
}
