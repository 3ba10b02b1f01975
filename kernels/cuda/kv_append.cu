// Writes the keys and values of new tokens into the paged KV cache.
// k and v are [tokens, kv_width] f32 (kv_width = n_kv_heads * head_dim);
// the caches are [num_slots, kv_width] bf16, a slot being
// page * page_size + offset, resolved by the host from the page table.
// One block per token. A slot outside the cache is skipped (the host refuses
// those first), never written out of bounds.
#include "common.cuh"

extern "C" __global__ void kv_append(const float* __restrict__ k, const float* __restrict__ v,
                                     unsigned short* __restrict__ k_cache, unsigned short* __restrict__ v_cache,
                                     const int* __restrict__ slots, int tokens, int kv_width, int num_slots) {
    int t = blockIdx.x;
    if (t >= tokens) return;
    int slot = slots[t];
    if (slot < 0 || slot >= num_slots) return;
    for (int i = threadIdx.x; i < kv_width; i += blockDim.x) {
        k_cache[(size_t)slot * kv_width + i] = f32_to_bf16(k[(size_t)t * kv_width + i]);
        v_cache[(size_t)slot * kv_width + i] = f32_to_bf16(v[(size_t)t * kv_width + i]);
    }
}
