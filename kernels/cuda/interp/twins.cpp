// Host twins of the interpreter's heaviest kernels, linear_bf16 (and its f16
// entry, linear_f16) and attention_paged: plain loops that compute exactly the kernel's
// arithmetic, in the kernel's order, with each warp's 32 lanes held in an
// array and warp_sum's butterfly replayed lane by lane. They give the same
// bits as the interpreted kernel (kernels/tests/cuda_interp.rs checks that on
// random shapes) without a fiber switch per lane per shuffle, which makes a
// real model's forward affordable in CI, the way the interpreter stands in
// a reference GEMM for cuBLAS. AERIE_CUDA_INTERPRET_TWINS=0 turns them off.
#include "cuda_interp.h"
#include "common.cuh"

#include <cstring>

namespace {

// warp_sum of 32 lane values, as the shuffles compute it: in round `off`,
// lane l adds lane l ^ off's value to its own.
float butterfly(float* v) {
    float t[32];
    for (int off = 16; off > 0; off >>= 1) {
        for (int l = 0; l < 32; ++l) t[l] = v[l] + v[l ^ off];
        std::memcpy(v, t, sizeof t);
    }
    return v[0];
}

template <class W>
void twin_linear(const float* x, const unsigned short* w, const float* bias, float* y, int rows, int n, int k) {
    float part[32];
    for (int c = 0; c < n; ++c) {
        const unsigned short* wr = w + (size_t)c * k;
        float b = bias ? bias[c] : 0.f;
        for (int r = 0; r < rows; ++r) {
            const float* xr = x + (size_t)r * k;
            // Lane l sums k-indices l, l + 32, ... in order: the 32 lanes
            // advance together over contiguous chunks (which vectorizes).
            for (int lane = 0; lane < 32; ++lane) part[lane] = 0.f;
            int full = k / 32 * 32;
            for (int base = 0; base < full; base += 32)
                for (int lane = 0; lane < 32; ++lane) part[lane] += xr[base + lane] * W::load(wr[base + lane]);
            for (int lane = 0; full + lane < k; ++lane) part[lane] += xr[full + lane] * W::load(wr[full + lane]);
            y[(size_t)r * n + c] = butterfly(part) + b;
        }
    }
}

void twin_linear_bf16(const float* x, const unsigned short* w, const float* bias, float* y, int rows, int n, int k) {
    twin_linear<WeightBf16>(x, w, bias, y, rows, n, k);
}

void twin_linear_f16(const float* x, const unsigned short* w, const float* bias, float* y, int rows, int n, int k) {
    twin_linear<WeightF16>(x, w, bias, y, rows, n, k);
}

void twin_attention_paged(const float* q, const unsigned short* k_cache, const unsigned short* v_cache, float* out,
                          const int* row_seq, const int* dense_len, const int* tree_base,
                          const unsigned long long* tree_mask, const int* page_table, int max_pages, int page_size,
                          int num_pages, int rows, int n_heads, int n_kv_heads, int head_dim, float scale) {
    const int per = 8;  // ATTN_MAX_PER_LANE
    for (int r = 0; r < rows; ++r) {
        for (int h = 0; h < n_heads; ++h) {
            int kvh = h / (n_heads / n_kv_heads), seq = row_seq[r];
            const float* qr = q + ((size_t)r * n_heads + h) * head_dim;
            float qv[32][8], acc[32][8], dot[32];
            for (int lane = 0; lane < 32; ++lane)
                for (int i = 0; i < per; ++i) {
                    int d = lane + 32 * i;
                    qv[lane][i] = d < head_dim ? qr[d] * scale : 0.f;
                    acc[lane][i] = 0.f;
                }
            float m = AERIE_NEG_INF, l = 0.f;
            auto key = [&](int pos) {
                int page_idx = pos / page_size;
                if (page_idx >= max_pages) return;
                int page = page_table[seq * max_pages + page_idx];
                if (page < 0 || page >= num_pages) return;
                size_t base = (((size_t)page * page_size + pos % page_size) * n_kv_heads + kvh) * head_dim;
                for (int lane = 0; lane < 32; ++lane) {
                    float s = 0.f;
                    for (int i = 0; i < per; ++i) {
                        int d = lane + 32 * i;
                        if (d < head_dim) s += qv[lane][i] * bf16_to_f32(k_cache[base + d]);
                    }
                    dot[lane] = s;
                }
                float s = butterfly(dot);
                float m_new = fmaxf(m, s);
                float corr = expf(m - m_new), p = expf(s - m_new);
                l = l * corr + p;
                for (int lane = 0; lane < 32; ++lane)
                    for (int i = 0; i < per; ++i) {
                        int d = lane + 32 * i;
                        if (d < head_dim) acc[lane][i] = acc[lane][i] * corr + p * bf16_to_f32(v_cache[base + d]);
                    }
                m = m_new;
            };
            for (int pos = 0; pos < dense_len[r]; ++pos) key(pos);
            unsigned long long mask = tree_mask[r];
            for (int j = 0; j < 64; ++j)
                if ((mask >> j) & 1ull) key(tree_base[r] + j);
            float inv = l > 0.f ? 1.0f / l : 0.f;
            float* o = out + ((size_t)r * n_heads + h) * head_dim;
            for (int lane = 0; lane < 32; ++lane)
                for (int i = 0; i < per; ++i) {
                    int d = lane + 32 * i;
                    if (d < head_dim) o[d] = acc[lane][i] * inv;
                }
        }
    }
}

}  // namespace

// The twin of kernel `name`, or null.
extern "C" void (*aerie_interp_twin(const char* name))(void**) {
    if (std::strcmp(name, "linear_bf16") == 0)
        return +[](void** p) { aerie_interp::call_with_params(twin_linear_bf16, p); };
    if (std::strcmp(name, "linear_f16") == 0)
        return +[](void** p) { aerie_interp::call_with_params(twin_linear_f16, p); };
    if (std::strcmp(name, "attention_paged") == 0)
        return +[](void** p) { aerie_interp::call_with_params(twin_attention_paged, p); };
    return nullptr;
}
