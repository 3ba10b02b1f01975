// Copies `rows` rows of `width` f32 values between row-strided buffers:
//   dst[r * dst_stride + i] = src[s * src_stride + i],  s = src_rows ? src_rows[r] : r.
// With an index list it gathers rows (the rows that need logits); with
// strides wider than `width` it writes one part of each row, which is how
// two matrices are set side by side (EAGLE-3's `[embedding, state]`
// attention input) without a copy per row. Offsets into a row are given by
// the pointers themselves. A source index outside [0, src_count) is
// skipped, never read. Grid-stride over all elements.
#include "common.cuh"

extern "C" __global__ void copy_rows(const float* __restrict__ src, int src_stride, const int* __restrict__ src_rows,
                                     int src_count, float* __restrict__ dst, int dst_stride, int rows, int width) {
    long long n = (long long)rows * width;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
        int r = (int)(e / width), i = (int)(e % width);
        int s = src_rows ? src_rows[r] : r;
        if (s < 0 || s >= src_count) continue;
        dst[(long long)r * dst_stride + i] = src[(long long)s * src_stride + i];
    }
}
