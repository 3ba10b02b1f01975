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

// IEEE half (f16) bits to f32, exactly: normals and subnormals, infinities
// and NaNs (payload kept).
__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    unsigned int sign = ((unsigned int)h & 0x8000u) << 16;
    unsigned int e = ((unsigned int)h >> 10) & 0x1fu, m = (unsigned int)h & 0x3ffu;
    if (e == 0) {
        float v = (float)m * 5.9604644775390625e-8f;  // m · 2^-24
        return sign ? -v : v;
    }
    if (e == 31) return __uint_as_float(sign | 0x7f800000u | (m << 13));
    return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}

// A weight element of either 16-bit format, chosen at compile time: the
// kernels that read weights are templates over these, with one entry point
// per format (`_bf16`, `_f16`).
struct WeightBf16 {
    static __device__ __forceinline__ float load(unsigned short b) { return bf16_to_f32(b); }
};
struct WeightF16 {
    static __device__ __forceinline__ float load(unsigned short b) { return f16_to_f32(b); }
};

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

// Thread threadIdx.x's contiguous chunk [lo, hi) of n items: chunks follow
// thread order, so block_exclusive_scan over per-chunk values gives each
// chunk's prefix in item order.
__device__ __forceinline__ void block_chunk(int n, int& lo, int& hi) {
    int chunk = (n + blockDim.x - 1) / blockDim.x;
    lo = threadIdx.x * chunk;
    hi = lo + chunk < n ? lo + chunk : n;
}

// Exclusive prefix sum of one value per thread, in thread order: thread 0
// adds them up one after another, so the sums are the same bits every run.
// `scratch` holds blockDim.x values; `total` (if not null) gets the sum.
// Writes made before the call are seen by every thread after it. Each
// thread reads back only its own slot, so the next call may follow at once.
template <class T>
__device__ __forceinline__ T block_exclusive_scan(T v, T* scratch, T* total) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        T run = 0;
        for (int t = 0; t < (int)blockDim.x; ++t) {
            T c = scratch[t];
            scratch[t] = run;
            run += c;
        }
        if (total) *total = run;
    }
    __syncthreads();
    return scratch[threadIdx.x];
}

// ---- Sampling (sample_dist.cu, tree_sample.cu) ----
//
// A row's sampling distribution is the prefix of its tokens in the order
// (logit descending, id ascending) that temperature, top-k, top-p and min-p
// keep, weighted by exp((logit - max) / temperature). The prefix is stored
// as its last entry: an order key and an id (see `sample_kept`).

// The logit's place in that order as an unsigned key: larger logits give
// larger keys, and a NaN gets 0, below every number, so it is never kept
// ahead of one and weighs nothing.
__device__ __forceinline__ unsigned int order_key(float x) {
    if (x != x) return 0u;
    unsigned int u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_value(unsigned int k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Whether an entry (key, id) lies in the prefix that ends at (cut_key, cut_id).
__device__ __forceinline__ bool sample_kept(unsigned int key, int id, unsigned int cut_key, int cut_id) {
    return key > cut_key || (key == cut_key && id <= cut_id);
}

// An entry's unnormalized weight. `inv_t` is 0 for a greedy row, whose one
// kept entry then weighs 1.
__device__ __forceinline__ float sample_weight(float x, float row_max, float inv_t) {
    if (x != x) return 0.f;
    if (inv_t == 0.f) return 1.f;
    return expf((x - row_max) * inv_t);
}
