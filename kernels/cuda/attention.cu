// Attention over a paged KV cache with a tree mask: prefill, decode and the
// verification of whole token trees for many sequences in one launch.
//
// Row r (one query token) sees, in this order:
//   1. every position in [0, dense_len[r]) of its sequence (the cached
//      prefix; for a causal prompt row i, prefix + i + 1; for a decode
//      row, prefix + 1);
//   2. then the positions tree_base[r] + j for each bit j set in
//      tree_mask[r], in increasing j (a tree node's ancestors and itself,
//      numbered so that a parent precedes its children).
// A position maps to a cache slot through the sequence's page table:
// page_table[seq * max_pages + pos / page_size] * page_size + pos % page_size.
// The caches are [num_pages * page_size, n_kv_heads, head_dim] bf16; q and
// out are [rows, n_heads, head_dim] f32; grouped-query heads share a KV head.
//
// Batch invariance: one warp per (row, head) walks its visible keys one after
// another with an online softmax, and each score is a warp_sum of fixed
// order. A tree node's row therefore visits exactly the keys, in exactly the
// order, that the same token decoded alone after its path would visit, and
// gets the same bits; nothing depends on the other rows of the launch.
// head_dim is at most 256. Keys on a page outside the cache are skipped
// (the host refuses such tables first), never read.
#include "common.cuh"

#define ATTN_MAX_PER_LANE 8

__device__ __forceinline__ void attend_key(int pos, int seq, const int* __restrict__ page_table, int max_pages,
                                           int page_size, int num_pages, const unsigned short* __restrict__ k_cache,
                                           const unsigned short* __restrict__ v_cache, int n_kv_heads, int kvh,
                                           int head_dim, const float* qv, float& m, float& l, float* acc) {
    int page_idx = pos / page_size;
    if (page_idx >= max_pages) return;
    int page = page_table[seq * max_pages + page_idx];
    if (page < 0 || page >= num_pages) return;
    size_t base = (((size_t)page * page_size + pos % page_size) * n_kv_heads + kvh) * head_dim;
    int lane = threadIdx.x & 31;
    float dot = 0.f;
    for (int i = 0; i < ATTN_MAX_PER_LANE; ++i) {
        int d = lane + 32 * i;
        if (d < head_dim) dot += qv[i] * bf16_to_f32(k_cache[base + d]);
    }
    float s = warp_sum(dot);
    float m_new = fmaxf(m, s);
    float corr = expf(m - m_new), p = expf(s - m_new);
    l = l * corr + p;
    for (int i = 0; i < ATTN_MAX_PER_LANE; ++i) {
        int d = lane + 32 * i;
        if (d < head_dim) acc[i] = acc[i] * corr + p * bf16_to_f32(v_cache[base + d]);
    }
    m = m_new;
}

extern "C" __global__ void attention_paged(const float* __restrict__ q, const unsigned short* __restrict__ k_cache,
                                           const unsigned short* __restrict__ v_cache, float* __restrict__ out,
                                           const int* __restrict__ row_seq, const int* __restrict__ dense_len,
                                           const int* __restrict__ tree_base,
                                           const unsigned long long* __restrict__ tree_mask,
                                           const int* __restrict__ page_table, int max_pages, int page_size,
                                           int num_pages, int rows, int n_heads, int n_kv_heads, int head_dim,
                                           float scale) {
    int r = blockIdx.x, h = blockIdx.y, lane = threadIdx.x & 31;
    if (r >= rows || h >= n_heads || threadIdx.x >= 32) return;
    int kvh = h / (n_heads / n_kv_heads);
    int seq = row_seq[r];
    const float* qr = q + ((size_t)r * n_heads + h) * head_dim;
    float qv[ATTN_MAX_PER_LANE], acc[ATTN_MAX_PER_LANE];
    for (int i = 0; i < ATTN_MAX_PER_LANE; ++i) {
        int d = lane + 32 * i;
        qv[i] = d < head_dim ? qr[d] * scale : 0.f;
        acc[i] = 0.f;
    }
    float m = AERIE_NEG_INF, l = 0.f;
    for (int pos = 0; pos < dense_len[r]; ++pos)
        attend_key(pos, seq, page_table, max_pages, page_size, num_pages, k_cache, v_cache, n_kv_heads, kvh,
                   head_dim, qv, m, l, acc);
    unsigned long long mask = tree_mask[r];
    for (int j = 0; j < 64; ++j)
        if ((mask >> j) & 1ull)
            attend_key(tree_base[r] + j, seq, page_table, max_pages, page_size, num_pages, k_cache, v_cache,
                       n_kv_heads, kvh, head_dim, qv, m, l, acc);
    float inv = l > 0.f ? 1.0f / l : 0.f;
    float* o = out + ((size_t)r * n_heads + h) * head_dim;
    for (int i = 0; i < ATTN_MAX_PER_LANE; ++i) {
        int d = lane + 32 * i;
        if (d < head_dim) o[d] = acc[i] * inv;
    }
}
