// Rotary position embedding of q and k, in place.
// q is [tokens, n_heads, head_dim], k is [tokens, n_kv_heads, head_dim];
// `inv_freq` holds head_dim/2 inverse frequencies with any scaling (llama3's)
// already applied by the host. `neox` != 0 rotates the pairs (i, i + d/2),
// Hugging Face's rotate_half; 0 rotates (2i, 2i + 1), GGUF's layout.
// Grid (tokens, n_heads + n_kv_heads); the block's threads stride the pairs.
#include "common.cuh"

extern "C" __global__ void rope(float* __restrict__ q, float* __restrict__ k, const int* __restrict__ positions,
                                const float* __restrict__ inv_freq, int tokens, int n_heads, int n_kv_heads,
                                int head_dim, int neox) {
    int t = blockIdx.x, h = blockIdx.y;
    if (t >= tokens || h >= n_heads + n_kv_heads) return;
    float* v = h < n_heads ? q + ((size_t)t * n_heads + h) * head_dim
                           : k + ((size_t)t * n_kv_heads + (h - n_heads)) * head_dim;
    int half = head_dim / 2;
    float pos = (float)positions[t];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float s, c;
        sincosf(pos * inv_freq[i], &s, &c);
        int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        float x0 = v[a], x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x0 * s + x1 * c;
    }
}
