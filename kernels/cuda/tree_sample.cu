// Exact rejection sampling of draft trees against the target's sampling
// distribution (the CPU path's `sample_verify`, SGLang's target-only tree
// sampling with both thresholds at 1), so that a sampled verify step returns
// only the accepted path and tokens to the host.
//
// One block per tree. From the root, with one coin u per visited node, the
// node's children are tried in index order (a repeated token is tried once),
// adding up the target probability q of their tokens; the first child at
// which the sum passes u is accepted and the walk moves to it. If none is,
// the token is drawn from q with the tried tokens removed, with the next
// coin, by inverse CDF in id order, and the walk ends. Should rounding leave
// no mass outside the tried tokens, the last tried token with mass is
// accepted instead, as on the CPU. A plain sampled decode is the same call on
// a tree of one node.
//
// q comes from `sample_dist_rows`: per row, the kept prefix (cut_key,
// cut_id), the maximum, 1/temperature and the kept mass. Rows are the trees'
// nodes, tree after tree (`tree_start`, trees + 1 offsets); `parents` holds
// each node's parent within its tree (-1 for the root; parents precede
// children); `coins` holds each tree's coins (`coin_start`, trees + 1
// offsets), at least its depth + 2. Output per tree, at its node offset: the
// path (node indices, root first), the tokens (accepted drafts, then the
// drawn one), and in out_len the path's length, which is also the number of
// tokens. A tree may have at most TREE_SAMPLE_MAX_TRIED distinct child tokens
// per node; the host checks this.
#include "common.cuh"

#define TREE_SAMPLE_MAX_THREADS 1024
#define TREE_SAMPLE_MAX_TRIED 256

__device__ __forceinline__ float ts_prob(const float* x, int tok, unsigned int ck, int ci, float m, float inv_t, float z) {
    float v = x[tok];
    if (!sample_kept(order_key(v), tok, ck, ci) || !(z > 0.f)) return 0.f;
    return sample_weight(v, m, inv_t) / z;
}

// Token j's weight in the residual: its kept weight, or 0 once tried.
__device__ __forceinline__ float ts_residual(const float* x, int j, unsigned int ck, int ci, float m, float inv_t,
                                             const int* tried, int n_tried) {
    float v = x[j];
    if (!sample_kept(order_key(v), j, ck, ci)) return 0.f;
    for (int i = 0; i < n_tried; ++i)
        if (tried[i] == j) return 0.f;
    return sample_weight(v, m, inv_t);
}

extern "C" __global__ void tree_sample_verify(const float* __restrict__ logits, const unsigned int* __restrict__ cut_key,
                                              const int* __restrict__ cut_id, const float* __restrict__ row_max,
                                              const float* __restrict__ inv_temp, const float* __restrict__ mass,
                                              const int* __restrict__ tokens, const int* __restrict__ parents,
                                              const int* __restrict__ tree_start, const float* __restrict__ coins,
                                              const int* __restrict__ coin_start, int* __restrict__ out_path,
                                              int* __restrict__ out_tokens, int* __restrict__ out_len, int trees, int vocab) {
    int tree = blockIdx.x;
    if (tree >= trees) return;
    __shared__ float fs[32];
    __shared__ float sums[TREE_SAMPLE_MAX_THREADS];
    __shared__ int tried[TREE_SAMPLE_MAX_TRIED];
    __shared__ int n_tried, node, len, accepted, last_positive, pick;
    int n0 = tree_start[tree], n = tree_start[tree + 1] - n0;
    int c0 = coin_start[tree], nc = coin_start[tree + 1] - c0;
    if (threadIdx.x == 0) {
        node = 0;
        len = 1;
        out_path[n0] = 0;
    }
    int lo, hi;
    block_chunk(vocab, lo, hi);
    for (;;) {
        __syncthreads();
        int row = n0 + node;
        const float* x = logits + (size_t)row * vocab;
        unsigned int ck = cut_key[row];
        int ci = cut_id[row];
        float m = row_max[row], inv_t = inv_temp[row], z = mass[row];
        if (threadIdx.x == 0) {
            int depth = len - 1;
            float u = depth < nc ? coins[c0 + depth] : 0.f;
            float acc = 0.f;
            n_tried = 0;
            accepted = -1;
            last_positive = -1;
            for (int c = node + 1; c < n; ++c) {
                if (parents[n0 + c] != node) continue;
                int tok = tokens[n0 + c];
                if (tok < 0 || tok >= vocab) continue;
                bool seen = false;
                for (int i = 0; i < n_tried; ++i) seen = seen || tried[i] == tok;
                if (seen || n_tried == TREE_SAMPLE_MAX_TRIED) continue;
                tried[n_tried++] = tok;
                float q = ts_prob(x, tok, ck, ci, m, inv_t, z);
                if (q > 0.f) last_positive = c;
                acc += q;
                if (u < acc) {
                    accepted = c;
                    break;
                }
            }
        }
        __syncthreads();
        if (accepted < 0) {
            // Is there mass outside the tried tokens?
            float rest = 0.f;
            for (int j = lo; j < hi; ++j) rest += ts_residual(x, j, ck, ci, m, inv_t, tried, n_tried) > 0.f ? 1.f : 0.f;
            rest = block_sum(rest, fs);
            if (rest == 0.f && threadIdx.x == 0) accepted = last_positive;
            __syncthreads();
            if (rest > 0.f || accepted < 0) {
                // Inverse CDF over the residual, chunk by chunk in id order.
                float s = 0.f;
                int last = -1;
                for (int j = lo; j < hi; ++j) {
                    float w = ts_residual(x, j, ck, ci, m, inv_t, tried, n_tried);
                    if (w > 0.f) { s += w; last = j; }
                }
                if (threadIdx.x == 0) pick = -1;
                float before = block_exclusive_scan(s, sums, &fs[0]);
                float total = fs[0];
                int depth = len - 1;
                float u = depth + 1 < nc ? coins[c0 + depth + 1] : 0.f;
                float target = u * total;
                if (s > 0.f && before <= target && target < before + s) {
                    float cum = before;
                    int got = last;
                    for (int j = lo; j < hi; ++j) {
                        float w = ts_residual(x, j, ck, ci, m, inv_t, tried, n_tried);
                        if (w > 0.f) {
                            cum += w;
                            if (target < cum) { got = j; break; }
                        }
                    }
                    pick = got;
                }
                __syncthreads();
                // Rounding put the target past every chunk: the last entry with mass.
                if (pick < 0) {
                    float lp = block_max((float)last, fs);
                    if (threadIdx.x == 0) pick = lp < 0.f ? 0 : (int)lp;
                }
                __syncthreads();
                if (threadIdx.x == 0) {
                    out_tokens[n0 + len - 1] = pick;
                    out_len[tree] = len;
                }
                return;
            }
        }
        // `accepted` is a child: move to it.
        if (threadIdx.x == 0) {
            out_path[n0 + len] = accepted;
            out_tokens[n0 + len - 1] = tokens[n0 + accepted];
            len += 1;
            node = accepted;
        }
    }
}
