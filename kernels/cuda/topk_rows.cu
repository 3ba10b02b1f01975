// The k most likely tokens of each row of logits, with their softmax
// probabilities: what a draft tree step needs of a head's output, so that
// only k (id, probability) pairs per row leave the device, not the row.
//
// One block per row (blockDim.x a multiple of 32). The row's maximum and
// the sum of exp(x - max) are block reductions in an order fixed by the
// block size; then k rounds each pick the best entry strictly below the
// previous pick in the order (value descending, index ascending), so ties
// go to the lower index as on the CPU, no list of picks is needed, and the
// picks are exact comparisons. Rows are independent (batch invariant).
// NaNs are never picked and take no probability mass; a round that finds nothing writes index -1 with
// probability 0. Output: ids[row * k + r], probs[row * k + r].
#include "common.cuh"

__device__ __forceinline__ void topk_better(float& v, int& i, float ov, int oi) {
    if (oi >= 0 && (i < 0 || ov > v || (ov == v && oi < i))) { v = ov; i = oi; }
}

extern "C" __global__ void topk_rows(const float* __restrict__ logits, int* __restrict__ ids, float* __restrict__ probs,
                                     int rows, int vocab, int k) {
    int row = blockIdx.x;
    if (row >= rows) return;
    __shared__ float scratch[32];
    __shared__ float pick_v[32];
    __shared__ int pick_i[32];
    __shared__ float last_v;
    __shared__ int last_i;
    const float* x = logits + (size_t)row * vocab;
    float m = AERIE_NEG_INF;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, x[j]);
    m = block_max(m, scratch);
    float s = 0.f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        float e = expf(x[j] - m);
        if (e == e) s += e;  // a NaN logit takes no mass
    }
    s = block_sum(s, scratch);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (threadIdx.x == 0) { last_v = __uint_as_float(0x7f800000u); last_i = -1; }
    __syncthreads();
    for (int r = 0; r < k; ++r) {
        float lv = last_v;
        int li = last_i;
        float v = AERIE_NEG_INF;
        int i = -1;
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
            float xj = x[j];
            bool below = xj < lv || (xj == lv && j > li);
            if (below && (i < 0 || xj > v)) { v = xj; i = j; }
        }
        for (int off = 16; off > 0; off >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, v, off);
            int oi = __shfl_xor_sync(0xffffffffu, i, off);
            topk_better(v, i, ov, oi);
        }
        if (lane == 0) { pick_v[warp] = v; pick_i[warp] = i; }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < (int)(blockDim.x >> 5); ++w) topk_better(v, i, pick_v[w], pick_i[w]);
            ids[(size_t)row * k + r] = i;
            probs[(size_t)row * k + r] = i < 0 || s <= 0.f ? 0.f : expf(v - m) / s;
            // Nothing left below: every later round finds nothing too.
            if (i >= 0) { last_v = v; last_i = i; } else { last_v = AERIE_NEG_INF; last_i = vocab; }
        }
        __syncthreads();
    }
}
