// The sampling distribution of each row of logits, as the CPU path's
// `target_probs` defines it: temperature, then top-k, top-p and min-p, each
// keeping a prefix of the tokens in the order (logit descending, id
// ascending); the shortest of the three prefixes is kept. Nothing is sorted:
// the last kept entry (an order key and an id, see common.cuh) is found by
// bisection over the 32-bit keys, each step a counting or summing pass over
// the row, and ties on that key are resolved in id order. The row's maximum,
// 1/temperature and the kept weight's sum are written beside it, so
// `tree_sample.cu` can price any token in O(1).
//
// top-k: the k-th entry. top-p: the first entry at which the running sum of
// the top-k weights reaches top_p of their total. min-p: the last entry whose
// weight is at least min_p (the maximum weighs 1). A row with temperature
// <= 0 or top_k == 1, or with no number above -inf, is greedy: its first
// maximum alone is kept, with weight 1.
//
// One block per row (blockDim.x a multiple of 32, at most 1024); sums run in
// an order fixed by the block size, so rows are batch invariant. Sums differ
// from the CPU's sequential ones by rounding, so an entry whose running sum
// lands within rounding of top_p may be kept on one side and not the other.
#include "common.cuh"

#define SAMPLE_MAX_THREADS 1024

__device__ __forceinline__ unsigned int sd_warp_max_u(unsigned int v) {
    for (int off = 16; off > 0; off >>= 1) {
        unsigned int o = __shfl_xor_sync(0xffffffffu, v, off);
        v = o > v ? o : v;
    }
    return v;
}

// Unsigned maximum over the block; every thread returns it.
__device__ __forceinline__ unsigned int sd_block_max_u(unsigned int v, unsigned int* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = sd_warp_max_u(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    unsigned int t = lane < warps ? scratch[lane] : 0u;
    t = sd_warp_max_u(t);
    __syncthreads();
    return t;
}

// The id of the n-th (1-based) entry, in id order, whose key is `key` and
// which lies in the prefix ending at (in_key, in_id); -1 if there are fewer.
// Each thread owns a contiguous chunk of ids; the chunks' counts are scanned
// in order in shared memory.
__device__ int sd_nth_tied(const float* x, int vocab, unsigned int key, unsigned int in_key, int in_id, int n, int* scan,
                           int* found) {
    int lo, hi;
    block_chunk(vocab, lo, hi);
    int count = 0;
    for (int j = lo; j < hi; ++j) {
        unsigned int k = order_key(x[j]);
        if (k == key && sample_kept(k, j, in_key, in_id)) ++count;
    }
    if (threadIdx.x == 0) *found = -1;
    int before = block_exclusive_scan(count, scan, (int*)nullptr);
    if (before < n && n <= before + count) {
        int seen = before;
        for (int j = lo; j < hi; ++j) {
            unsigned int k = order_key(x[j]);
            if (k == key && sample_kept(k, j, in_key, in_id) && ++seen == n) {
                *found = j;
                break;
            }
        }
    }
    __syncthreads();
    int r = *found;
    __syncthreads();
    return r;
}

// (a_key, a_id) ends a shorter prefix than (b_key, b_id).
__device__ __forceinline__ bool sd_earlier(unsigned int ak, int ai, unsigned int bk, int bi) {
    return ak > bk || (ak == bk && ai < bi);
}

extern "C" __global__ void sample_dist_rows(const float* __restrict__ logits, const float* __restrict__ temperature,
                                            const int* __restrict__ top_k, const float* __restrict__ top_p,
                                            const float* __restrict__ min_p, unsigned int* __restrict__ cut_key,
                                            int* __restrict__ cut_id, float* __restrict__ row_max,
                                            float* __restrict__ inv_temp, float* __restrict__ mass, int rows, int vocab) {
    int row = blockIdx.x;
    if (row >= rows) return;
    __shared__ float fs[32];
    __shared__ unsigned int us[32];
    __shared__ int scan[SAMPLE_MAX_THREADS];
    __shared__ int found;
    const float* x = logits + (size_t)row * vocab;

    unsigned int kmax = 0u;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        unsigned int k = order_key(x[j]);
        kmax = k > kmax ? k : kmax;
    }
    kmax = sd_block_max_u(kmax, us);
    // The first maximum: the largest of (vocab - id) among entries at kmax.
    unsigned int first = 0u;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        if (order_key(x[j]) == kmax) {
            unsigned int r = (unsigned int)(vocab - j);
            first = r > first ? r : first;
        }
    int first_id = vocab - (int)sd_block_max_u(first, us);
    float m = key_value(kmax);
    float t = temperature[row];
    int k_top = top_k[row];
    // kmax at or below -inf's key: no number above -inf in the row.
    bool greedy = !(t > 0.f) || k_top == 1 || kmax <= order_key(AERIE_NEG_INF);
    if (greedy) {
        if (threadIdx.x == 0) {
            cut_key[row] = kmax;
            cut_id[row] = first_id;
            row_max[row] = m;
            inv_temp[row] = 0.f;
            mass[row] = 1.f;
        }
        return;
    }
    float inv_t = 1.f / t;

    // top-k: the largest key at least k entries reach, then the tie.
    unsigned int kk = 0u;
    int ik = vocab - 1;
    if (k_top > 0 && k_top < vocab) {
        unsigned int lo = 0u, hi = kmax;
        while (lo < hi) {
            unsigned int mid = lo + ((hi - lo) >> 1) + 1u;
            float c = 0.f;
            for (int j = threadIdx.x; j < vocab; j += blockDim.x) c += order_key(x[j]) >= mid ? 1.f : 0.f;
            c = block_sum(c, fs);
            if (c >= (float)k_top) lo = mid; else hi = mid - 1u;
        }
        kk = lo;
        float above = 0.f;
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) above += order_key(x[j]) > kk ? 1.f : 0.f;
        above = block_sum(above, fs);
        ik = sd_nth_tied(x, vocab, kk, 0u, vocab - 1, k_top - (int)above, scan, &found);
    }
    float zk = 0.f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        if (sample_kept(order_key(x[j]), j, kk, ik)) zk += sample_weight(x[j], m, inv_t);
    zk = block_sum(zk, fs);
    unsigned int ck = kk;
    int ci = ik;

    // top-p: the largest key whose entries from the top reach top_p · zk.
    float p = top_p[row];
    if (p < 1.f) {
        float target = p * zk;
        unsigned int lo = kk, hi = kmax;
        while (lo < hi) {
            unsigned int mid = lo + ((hi - lo) >> 1) + 1u;
            float s = 0.f;
            for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
                unsigned int k = order_key(x[j]);
                if (k >= mid && sample_kept(k, j, kk, ik)) s += sample_weight(x[j], m, inv_t);
            }
            s = block_sum(s, fs);
            if (s >= target) lo = mid; else hi = mid - 1u;
        }
        float above = 0.f, ties = 0.f;
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
            unsigned int k = order_key(x[j]);
            if (!sample_kept(k, j, kk, ik)) continue;
            if (k > lo) above += sample_weight(x[j], m, inv_t);
            else if (k == lo) ties += 1.f;
        }
        above = block_sum(above, fs);
        ties = block_sum(ties, fs);
        // Tied entries weigh the same: take as many as reach the target.
        float w = sample_weight(key_value(lo), m, inv_t);
        float need = w > 0.f ? ceilf((target - above) / w) : 1.f;
        int n = (int)fminf(fmaxf(need, 1.f), fmaxf(ties, 1.f));
        int id = sd_nth_tied(x, vocab, lo, kk, ik, n, scan, &found);
        if (id >= 0 && sd_earlier(lo, id, ck, ci)) { ck = lo; ci = id; }
    }

    // min-p: entries weighing at least min_p, a prefix since the weight
    // grows with the logit; all ties on its last key are in it.
    float mp = min_p[row];
    if (mp > 0.f) {
        // The smallest key kept, as the largest of ~key.
        unsigned int inv_low = 0u;
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
            unsigned int k = order_key(x[j]);
            if (sample_kept(k, j, kk, ik) && sample_weight(x[j], m, inv_t) >= mp) inv_low = ~k > inv_low ? ~k : inv_low;
        }
        unsigned int mk = ~sd_block_max_u(inv_low, us);
        unsigned int last = 0u;  // largest id + 1 on that key
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
            unsigned int k = order_key(x[j]);
            if (k == mk && sample_kept(k, j, kk, ik)) last = (unsigned int)(j + 1) > last ? (unsigned int)(j + 1) : last;
        }
        int mi = (int)sd_block_max_u(last, us) - 1;
        if (mi >= 0 && sd_earlier(mk, mi, ck, ci)) { ck = mk; ci = mi; }
    }

    float z = 0.f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        if (sample_kept(order_key(x[j]), j, ck, ci)) z += sample_weight(x[j], m, inv_t);
    z = block_sum(z, fs);
    if (threadIdx.x == 0) {
        cut_key[row] = ck;
        cut_id[row] = ci;
        row_max[row] = m;
        inv_temp[row] = inv_t;
        mass[row] = z;
    }
}
