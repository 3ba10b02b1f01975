// CUDA's execution model on the CPU: Aerie's interpreter mode.
//
// The kernels under kernels/cuda/ are compiled twice: by NVRTC/nvcc for the
// GPU, and by the host C++ compiler with this header force-included
// (`-include cuda_interp.h`) for AERIE_CUDA_INTERPRET=1. Nothing in a kernel
// source knows which; the same text runs in both.
//
// How a launch runs (runtime.cpp):
// - the blocks of the grid run one after another, in blockIdx order;
// - the threads of a block are cooperative fibers (ucontext) on one OS
//   thread, switched only at __syncthreads and at warp collectives, so a
//   kernel that races in shared memory or forgets a barrier reads stale
//   values here too, deterministically;
// - `__shared__` variables are function-level statics: one copy, shared by
//   the threads of the block that is running, which is exactly CUDA's scope
//   because blocks never overlap and launches are serialized;
// - warp shuffles and votes exchange values through a per-warp slot array
//   and a barrier over the warp's live lanes.
// It is for tests, not speed: an out-of-bounds index in a kernel is an
// out-of-bounds access on the host, which AddressSanitizer reports.
#pragma once

#define AERIE_CUDA_INTERPRET 1

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace aerie_interp {

// The index variables of the thread that is running.
struct ThreadIndex {
    uint3 thread;
    uint3 block;
    dim3 block_dim;
    dim3 grid_dim;
};
extern thread_local ThreadIndex* current;

void syncthreads();
// Exchanges one 64-bit word among the lanes of the caller's warp: each lane
// writes `mine`, waits for the warp's live lanes, and reads lane `src`'s word
// (its own when `src` is outside the warp).
uint64_t warp_exchange(uint64_t mine, int src);
// Every lane of the warp learns every lane's predicate; bit i is lane i's.
unsigned int warp_ballot(bool pred);
// The dynamic shared memory of the running launch (`shared_bytes` of it).
void* dynamic_shared();

inline int lane_id() {
    unsigned int linear = current->thread.x +
                          current->block_dim.x * (current->thread.y + current->block_dim.y * current->thread.z);
    return (int)(linear & 31u);
}

template <class T>
inline uint64_t to_word(T v) {
    static_assert(sizeof(T) <= 8, "warp shuffles move at most 64 bits");
    uint64_t w = 0;
    std::memcpy(&w, &v, sizeof(T));
    return w;
}
template <class T>
inline T from_word(uint64_t w) {
    T v;
    std::memcpy(&v, &w, sizeof(T));
    return v;
}

// Calls kernel `k` with its arguments read from CUDA's kernelParams array
// (p[i] points at the i-th argument's value), as cuLaunchKernel does.
template <class... A, size_t... I>
inline void call_with_params(void (*k)(A...), void** p, std::index_sequence<I...>) {
    k(*static_cast<typename std::remove_reference<A>::type*>(p[I])...);
}
template <class... A>
inline void call_with_params(void (*k)(A...), void** p) {
    call_with_params(k, p, std::index_sequence_for<A...>{});
}

// The byte size of each of kernel `k`'s parameters, so the host can check
// the arguments of a launch before the kernel reads them.
template <class... A>
inline unsigned param_sizes(void (*)(A...), const unsigned char** sizes) {
    static const unsigned char table[sizeof...(A) + 1] = {(unsigned char)sizeof(A)..., 0};
    *sizes = table;
    return (unsigned)sizeof...(A);
}

}  // namespace aerie_interp

#define threadIdx (aerie_interp::current->thread)
#define blockIdx (aerie_interp::current->block)
#define blockDim (aerie_interp::current->block_dim)
#define gridDim (aerie_interp::current->grid_dim)
#define warpSize 32

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static

inline void __syncthreads() { aerie_interp::syncthreads(); }
inline void __syncwarp(unsigned int = 0xffffffffu) { aerie_interp::warp_exchange(0, 0); }

template <class T>
inline T __shfl_sync(unsigned int, T v, int src, int width = 32) {
    int lane = aerie_interp::lane_id();
    int base = lane & ~(width - 1);
    return aerie_interp::from_word<T>(aerie_interp::warp_exchange(aerie_interp::to_word(v), base + (src & (width - 1))));
}
template <class T>
inline T __shfl_down_sync(unsigned int, T v, unsigned int delta, int width = 32) {
    int lane = aerie_interp::lane_id();
    int in_seg = lane & (width - 1);
    int src = in_seg + (int)delta < width ? lane + (int)delta : lane;
    return aerie_interp::from_word<T>(aerie_interp::warp_exchange(aerie_interp::to_word(v), src));
}
template <class T>
inline T __shfl_up_sync(unsigned int, T v, unsigned int delta, int width = 32) {
    int lane = aerie_interp::lane_id();
    int in_seg = lane & (width - 1);
    int src = in_seg >= (int)delta ? lane - (int)delta : lane;
    return aerie_interp::from_word<T>(aerie_interp::warp_exchange(aerie_interp::to_word(v), src));
}
template <class T>
inline T __shfl_xor_sync(unsigned int, T v, int mask, int width = 32) {
    int lane = aerie_interp::lane_id();
    int src = lane ^ mask;
    if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
    return aerie_interp::from_word<T>(aerie_interp::warp_exchange(aerie_interp::to_word(v), src));
}
inline unsigned int __ballot_sync(unsigned int mask, int pred) { return aerie_interp::warp_ballot(pred != 0) & mask; }
inline int __any_sync(unsigned int mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned int mask, int pred) {
    return __ballot_sync(mask, pred) == (aerie_interp::warp_ballot(true) & mask);
}

// Atomics: the block's fibers never run at the same time and blocks run one
// after another, so a plain read-modify-write is atomic here.
template <class T>
inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <class T>
inline T atomicMax(T* p, T v) { T old = *p; if (v > old) *p = v; return old; }
template <class T>
inline T atomicMin(T* p, T v) { T old = *p; if (v < old) *p = v; return old; }
template <class T>
inline T atomicExch(T* p, T v) { T old = *p; *p = v; return old; }
template <class T>
inline T atomicCAS(T* p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }

// Bit casts and the math intrinsics the kernels use.
inline float __int_as_float(int v) { return aerie_interp::from_word<float>((uint64_t)(uint32_t)v); }
inline float __uint_as_float(unsigned int v) { return aerie_interp::from_word<float>((uint64_t)v); }
inline int __float_as_int(float v) { return (int)(uint32_t)aerie_interp::to_word(v); }
inline unsigned int __float_as_uint(float v) { return (uint32_t)aerie_interp::to_word(v); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
// expf, logf, sqrtf, fmaxf, fminf, fabsf, sincosf come from the C library
// with CUDA's signatures.
