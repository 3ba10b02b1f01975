// Compaction of an accepted path, the GPU twin of the CPU cache's
// keep_rows: row src[i] of both caches is copied to dst[i], for i in order,
// as if one pair after another, so a pair may read a slot that an earlier
// pair's source held without seeing a later pair's write. (Keeping accepted
// tree nodes i_0 < i_1 < ... at slots base + j, with i_j >= j, never lets a
// later pair overwrite an earlier pair's source.) One block does all pairs,
// its threads striding each row; pairs are few (at most the accepted length).
#include "common.cuh"

extern "C" __global__ void kv_move(unsigned short* __restrict__ k_cache, unsigned short* __restrict__ v_cache,
                                   const int* __restrict__ src, const int* __restrict__ dst, int pairs, int kv_width,
                                   int num_slots) {
    for (int p = 0; p < pairs; ++p) {
        int s = src[p], d = dst[p];
        if (s >= 0 && s < num_slots && d >= 0 && d < num_slots && s != d) {
            for (int i = threadIdx.x; i < kv_width; i += blockDim.x) {
                k_cache[(size_t)d * kv_width + i] = k_cache[(size_t)s * kv_width + i];
                v_cache[(size_t)d * kv_width + i] = v_cache[(size_t)s * kv_width + i];
            }
        }
        __syncthreads();
    }
}
