// Q4_1 weight x f32 activation matrix-vector product: one warp per output
// feature. Block layout as in ggml: f16 d, f16 m, 16 bytes of nibbles.
__device__ __forceinline__ float half_bits_to_float(unsigned short h) {
    unsigned int sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
    if (exp == 0) { float v = man * 5.9604644775390625e-8f; return sign ? -v : v; }
    if (exp == 31) return __int_as_float(sign | 0x7f800000u | (man << 13));
    return __int_as_float(sign | ((exp + 112) << 23) | (man << 13));
}

extern "C" __global__ void matvec_q4_1(const unsigned char* __restrict__ w,
                                       const float* __restrict__ x,
                                       float* __restrict__ y,
                                       int rows, int cols) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    int nb = cols / 32;
    const unsigned char* wr = w + (size_t)row * nb * 20;
    float acc = 0.f;
    for (int b = lane; b < nb; b += 32) {
        const unsigned char* blk = wr + b * 20;
        float d = half_bits_to_float(blk[0] | (blk[1] << 8));
        float m = half_bits_to_float(blk[2] | (blk[3] << 8));
        const float* xb = x + b * 32;
        for (int j = 0; j < 16; ++j) {
            unsigned char q = blk[4 + j];
            acc += ((q & 0xF) * d + m) * xb[j] + ((q >> 4) * d + m) * xb[j + 16];
        }
    }
    for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffff, acc, off);
    if (lane == 0) y[row] = acc;
}
