// Embedding gather: out[t, :] = table[ids[t], :] as f32, table in bf16
// [vocab, hidden]. One block per token. An id outside the vocabulary (the
// host refuses those first) writes zeros instead of reading out of bounds.
#include "common.cuh"

extern "C" __global__ void embedding_bf16(const unsigned short* __restrict__ table, const int* __restrict__ ids,
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
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = bf16_to_f32(row[i]);
}
