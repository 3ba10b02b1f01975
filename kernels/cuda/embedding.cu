// Embedding gather: out[t, :] = table[ids[t], :] as f32, table in bf16
// (`embedding_bf16`) or f16 (`embedding_f16`), [vocab, hidden]. One block per token. An id outside the vocabulary (the
// host refuses those first) writes zeros instead of reading out of bounds.
#include "common.cuh"

template <class W>
__device__ __forceinline__ void embedding_body(const unsigned short* __restrict__ table, const int* __restrict__ ids,
                                               float* __restrict__ out, int tokens, int hidden, int vocab) {
    int t = blockIdx.x;
    if (t >= tokens) return;
    int id = ids[t];
    float* o = out + (size_t)t * hidden;
    if (id < 0 || id >= vocab) {
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = 0.f;
        return;
    }
    const unsigned short* row = table + (size_t)id * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = W::load(row[i]);
}

extern "C" __global__ void embedding_bf16(const unsigned short* __restrict__ table, const int* __restrict__ ids,
                                          float* __restrict__ out, int tokens, int hidden, int vocab) {
    embedding_body<WeightBf16>(table, ids, out, tokens, hidden, vocab);
}

extern "C" __global__ void embedding_f16(const unsigned short* __restrict__ table, const int* __restrict__ ids,
                                         float* __restrict__ out, int tokens, int hidden, int vocab) {
    embedding_body<WeightF16>(table, ids, out, tokens, hidden, vocab);
}
