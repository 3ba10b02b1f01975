// Runs every GPU kernel once in the interpreter under AddressSanitizer, on
// heap buffers of exactly the size each launch may touch, so that an index
// one past the end in any kernel is a reported heap-buffer-overflow.
// `asan_driver oob` runs a kernel that does write one past the end: the
// sanitizer must stop it (tests/cuda/interp_asan.sh checks both).
#include "cuda_interp.h"

#include "../add.cu"
#include "../argmax.cu"
#include "../attention.cu"
#include "../copy_rows.cu"
#include "../embedding.cu"
#include "../kv_append.cu"
#include "../kv_move.cu"
#include "../linear.cu"
#include "../matvec_q4_1.cu"
#include "../rms_norm.cu"
#include "../rope.cu"
#include "../sample_dist.cu"
#include "../silu_mul.cu"
#include "../to_bf16.cu"
#include "../topk_rows.cu"
#include "../tree_sample.cu"
#include "selftest.cu"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" int aerie_interp_launch(void (*body)(void**), void** params, const unsigned int grid[3],
                                   const unsigned int block[3], unsigned int shared_bytes);

template <class T>
static T* buffer(size_t n, unsigned seed) {
    T* p = static_cast<T*>(std::malloc(n * sizeof(T)));
    unsigned s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; ++i) {
        s = s * 1103515245u + 12345u;
        float f = (float)((s >> 8) & 0xffff) / 65536.0f - 0.5f;
        if constexpr (sizeof(T) == 2) p[i] = (T)(f32_to_bf16(f));
        else std::memcpy(&p[i], &f, sizeof(T) < 4 ? sizeof(T) : 4);
    }
    return p;
}

static int failures = 0, passes = 0;

static void run(const char* name, void (*body)(void**), std::vector<void*> args, unsigned grid_x, unsigned grid_y,
                unsigned block_x, unsigned shared = 0) {
    unsigned g[3] = {grid_x, grid_y, 1}, b[3] = {block_x, 1, 1};
    int rc = aerie_interp_launch(body, args.data(), g, b, shared);
    std::printf("%s %s\n", rc == 0 ? "ok  " : "FAIL", name);
    (rc == 0 ? passes : failures)++;
}

int main(int argc, char** argv) {
    if (argc > 1 && std::strcmp(argv[1], "oob") == 0) {
        int n = 100;
        float* x = buffer<float>(n, 1);
        run("selftest_out_of_bounds", +[](void** p) { aerie_interp::call_with_params(selftest_out_of_bounds, p); },
            {&x, &n}, 1, 1, 128);
        std::free(x);
        return 0;  // unreachable when the sanitizer works
    }
    // Ragged shapes: sizes that are not multiples of the block or warp size.
    int rows = 5, hidden = 577, vocab = 1001, inter = 1537, tokens = 3, nh = 5, nkv = 3, hd = 64, neox = 1;
    float eps = 1e-5f;
    long long n = (long long)rows * hidden;

    float* x = buffer<float>(rows * hidden, 2);
    float* y = buffer<float>(rows * hidden, 3);
    float* w = buffer<float>(hidden, 4);
    float* out = buffer<float>(rows * hidden, 5);
    run("rms_norm", +[](void** p) { aerie_interp::call_with_params(rms_norm, p); },
        {&x, &w, &out, &rows, &hidden, &eps}, rows, 1, 256);
    run("add_inplace", +[](void** p) { aerie_interp::call_with_params(add_inplace, p); }, {&x, &y, &n}, 3, 1, 96);

    unsigned short* table = buffer<unsigned short>((size_t)vocab * hidden, 6);
    int* ids = static_cast<int*>(std::malloc(4 * sizeof(int)));
    ids[0] = 0; ids[1] = vocab - 1; ids[2] = vocab; ids[3] = -1;
    int nids = 4;
    float* emb = buffer<float>(4 * hidden, 7);
    run("embedding_bf16", +[](void** p) { aerie_interp::call_with_params(embedding_bf16, p); },
        {&table, &ids, &emb, &nids, &hidden, &vocab}, 4, 1, 128);
    run("embedding_f16", +[](void** p) { aerie_interp::call_with_params(embedding_f16, p); },
        {&table, &ids, &emb, &nids, &hidden, &vocab}, 4, 1, 128);

    float* logits = buffer<float>((size_t)rows * vocab, 8);
    int* best = static_cast<int*>(std::malloc(rows * sizeof(int)));
    float* best_v = buffer<float>(rows, 9);
    run("argmax_rows", +[](void** p) { aerie_interp::call_with_params(argmax_rows, p); },
        {&logits, &best, &best_v, &rows, &vocab}, rows, 1, 256);

    // Two row sets side by side, then a gather with an index past the end
    // (skipped, never read).
    int width = hidden, wide = 2 * hidden, src_count = rows, nsel = 3;
    float* cat = buffer<float>((size_t)rows * wide, 22);
    float* right = cat + hidden;
    const int* no_rows = nullptr;
    run("copy_rows", +[](void** p) { aerie_interp::call_with_params(copy_rows, p); },
        {&x, &width, &no_rows, &src_count, &right, &wide, &rows, &width}, 3, 1, 128);
    int* sel = static_cast<int*>(std::malloc(nsel * sizeof(int)));
    sel[0] = rows - 1; sel[1] = rows; sel[2] = 0;
    float* gathered = buffer<float>((size_t)nsel * hidden, 23);
    run("copy_rows gather", +[](void** p) { aerie_interp::call_with_params(copy_rows, p); },
        {&x, &width, &sel, &src_count, &gathered, &width, &nsel, &width}, 2, 1, 64);

    unsigned short* xb = buffer<unsigned short>((size_t)rows * hidden, 24);
    run("to_bf16", +[](void** p) { aerie_interp::call_with_params(to_bf16, p); }, {&x, &xb, &n}, 3, 1, 96);

    int topk = 7;
    int* tk_ids = static_cast<int*>(std::malloc((size_t)rows * topk * sizeof(int)));
    float* tk_p = buffer<float>((size_t)rows * topk, 25);
    run("topk_rows", +[](void** p) { aerie_interp::call_with_params(topk_rows, p); },
        {&logits, &tk_ids, &tk_p, &rows, &vocab, &topk}, rows, 1, 128);

    // Sampling: one row per setting (plain, top-k and top-p, min-p, greedy),
    // then a 3-node tree and a 1-node tree over those rows.
    int srows = 4;
    float* s_logits = buffer<float>((size_t)srows * vocab, 28);
    float* s_temp = static_cast<float*>(std::malloc(srows * sizeof(float)));
    int* s_topk = static_cast<int*>(std::malloc(srows * sizeof(int)));
    float* s_topp = static_cast<float*>(std::malloc(srows * sizeof(float)));
    float* s_minp = static_cast<float*>(std::malloc(srows * sizeof(float)));
    float st[4] = {0.7f, 1.0f, 0.8f, 0.0f}, sp_[4] = {1.0f, 0.9f, 1.0f, 1.0f}, sm[4] = {0.0f, 0.0f, 0.1f, 0.0f};
    int sk[4] = {0, 5, 0, 0};
    for (int i = 0; i < srows; ++i) { s_temp[i] = st[i]; s_topk[i] = sk[i]; s_topp[i] = sp_[i]; s_minp[i] = sm[i]; }
    unsigned* s_ck = static_cast<unsigned*>(std::malloc(srows * sizeof(unsigned)));
    int* s_ci = static_cast<int*>(std::malloc(srows * sizeof(int)));
    float* s_m = buffer<float>(srows, 29);
    float* s_it = buffer<float>(srows, 30);
    float* s_z = buffer<float>(srows, 31);
    run("sample_dist_rows", +[](void** p) { aerie_interp::call_with_params(sample_dist_rows, p); },
        {&s_logits, &s_temp, &s_topk, &s_topp, &s_minp, &s_ck, &s_ci, &s_m, &s_it, &s_z, &srows, &vocab}, srows, 1, 64);
    int ntrees = 2;
    int* t_tok = static_cast<int*>(std::malloc(srows * sizeof(int)));
    int* t_par = static_cast<int*>(std::malloc(srows * sizeof(int)));
    int* t_start = static_cast<int*>(std::malloc((ntrees + 1) * sizeof(int)));
    int* t_cstart = static_cast<int*>(std::malloc((ntrees + 1) * sizeof(int)));
    float* t_coins = static_cast<float*>(std::malloc(6 * sizeof(float)));
    for (int i = 0; i < 6; ++i) t_coins[i] = 0.9f;
    t_tok[0] = 1; t_tok[1] = 2; t_tok[2] = 3; t_tok[3] = 4;
    t_par[0] = -1; t_par[1] = 0; t_par[2] = 1; t_par[3] = -1;
    t_start[0] = 0; t_start[1] = 3; t_start[2] = 4;
    t_cstart[0] = 0; t_cstart[1] = 4; t_cstart[2] = 6;
    int* t_path = static_cast<int*>(std::malloc(srows * sizeof(int)));
    int* t_out = static_cast<int*>(std::malloc(srows * sizeof(int)));
    int* t_len = static_cast<int*>(std::malloc(ntrees * sizeof(int)));
    run("tree_sample_verify", +[](void** p) { aerie_interp::call_with_params(tree_sample_verify, p); },
        {&s_logits, &s_ck, &s_ci, &s_m, &s_it, &s_z, &t_tok, &t_par, &t_start, &t_coins, &t_cstart, &t_path, &t_out,
         &t_len, &ntrees, &vocab}, ntrees, 1, 64);

    float* gate_up = buffer<float>((size_t)rows * 2 * inter, 10);
    float* act = buffer<float>((size_t)rows * inter, 11);
    run("silu_mul", +[](void** p) { aerie_interp::call_with_params(silu_mul, p); },
        {&gate_up, &act, &rows, &inter}, 4, 1, 128);

    float* q = buffer<float>(tokens * nh * hd, 12);
    float* k = buffer<float>(tokens * nkv * hd, 13);
    int* pos = static_cast<int*>(std::malloc(tokens * sizeof(int)));
    for (int t = 0; t < tokens; ++t) pos[t] = 100 * t + 7;
    float* inv = buffer<float>(hd / 2, 14);
    run("rope", +[](void** p) { aerie_interp::call_with_params(rope, p); },
        {&q, &k, &pos, &inv, &tokens, &nh, &nkv, &hd, &neox}, tokens, nh + nkv, 32);

    int mrows = 9, mcols = 96;
    unsigned char* qw = buffer<unsigned char>((size_t)mrows * (mcols / 32) * 20, 15);
    float* mx = buffer<float>(mcols, 16);
    float* my = buffer<float>(mrows, 17);
    run("matvec_q4_1", +[](void** p) { aerie_interp::call_with_params(matvec_q4_1, p); },
        {&qw, &mx, &my, &mrows, &mcols}, (mrows + 3) / 4, 1, 128);

    // Paged attention: 3 pages of 16 slots, two sequences of 2 pages each
    // (one page shared), a prefix that ends mid-page, a 5-node tree.
    int page_size = 16, max_pages = 2, num_pages = 3, ah = 4, akv = 2, ahd = 48, arows = 6;
    int kvw = akv * ahd, nslots = num_pages * page_size;
    float ascale = 0.15f;
    unsigned short* kc = buffer<unsigned short>((size_t)nslots * kvw, 18);
    unsigned short* vc = buffer<unsigned short>((size_t)nslots * kvw, 19);
    int* table_p = static_cast<int*>(std::malloc(4 * sizeof(int)));
    table_p[0] = 2; table_p[1] = 0; table_p[2] = 1; table_p[3] = 0;
    int* rseq = static_cast<int*>(std::malloc(arows * sizeof(int)));
    int* rdense = static_cast<int*>(std::malloc(arows * sizeof(int)));
    int* rbase = static_cast<int*>(std::malloc(arows * sizeof(int)));
    unsigned long long* rmask = static_cast<unsigned long long*>(std::malloc(arows * sizeof(unsigned long long)));
    for (int i = 0; i < 5; ++i) { rseq[i] = 0; rdense[i] = 20; rbase[i] = 20; }
    rmask[0] = 1; rmask[1] = 3; rmask[2] = 5; rmask[3] = 11; rmask[4] = 21;
    rseq[5] = 1; rdense[5] = 32; rbase[5] = 0; rmask[5] = 0;
    float* aq = buffer<float>((size_t)arows * ah * ahd, 20);
    float* aout = buffer<float>((size_t)arows * ah * ahd, 21);
    run("attention_paged", +[](void** p) { aerie_interp::call_with_params(attention_paged, p); },
        {&aq, &kc, &vc, &aout, &rseq, &rdense, &rbase, &rmask, &table_p, &max_pages, &page_size, &num_pages, &arows,
         &ah, &akv, &ahd, &ascale},
        arows, ah, 32);
    int ntok = 3;
    float* nk = buffer<float>((size_t)ntok * kvw, 22);
    float* nv = buffer<float>((size_t)ntok * kvw, 23);
    int* aslots = static_cast<int*>(std::malloc(ntok * sizeof(int)));
    aslots[0] = 0; aslots[1] = nslots - 1; aslots[2] = nslots;
    run("kv_append", +[](void** p) { aerie_interp::call_with_params(kv_append, p); },
        {&nk, &nv, &kc, &vc, &aslots, &ntok, &kvw, &nslots}, ntok, 1, 64);
    int npairs = 3;
    int* msrc = static_cast<int*>(std::malloc(npairs * sizeof(int)));
    int* mdst = static_cast<int*>(std::malloc(npairs * sizeof(int)));
    msrc[0] = 5; msrc[1] = 7; msrc[2] = nslots - 1; mdst[0] = 4; mdst[1] = 5; mdst[2] = 6;
    run("kv_move", +[](void** p) { aerie_interp::call_with_params(kv_move, p); },
        {&kc, &vc, &msrc, &mdst, &npairs, &kvw, &nslots}, 1, 1, 64);

    int lrows = 11, ln = 37, lk = 70;
    float* lx = buffer<float>((size_t)lrows * lk, 24);
    unsigned short* lw = buffer<unsigned short>((size_t)ln * lk, 25);
    float* lb = buffer<float>(ln, 26);
    float* ly = buffer<float>((size_t)lrows * ln, 27);
    run("linear_bf16", +[](void** p) { aerie_interp::call_with_params(linear_bf16, p); },
        {&lx, &lw, &lb, &ly, &lrows, &ln, &lk}, (ln + 3) / 4, (lrows + 7) / 8, 128);
    run("linear_f16", +[](void** p) { aerie_interp::call_with_params(linear_f16, p); },
        {&lx, &lw, &lb, &ly, &lrows, &ln, &lk}, (ln + 3) / 4, (lrows + 7) / 8, 128);

    int* shuf = static_cast<int*>(std::malloc(4 * 96 * sizeof(int)));
    run("selftest_shuffles", +[](void** p) { aerie_interp::call_with_params(selftest_shuffles, p); }, {&shuf}, 1, 1, 96);
    int* sh_in = static_cast<int*>(std::calloc(128, sizeof(int)));
    int* sh_out = static_cast<int*>(std::malloc(128 * sizeof(int)));
    run("selftest_dynamic_shared", +[](void** p) { aerie_interp::call_with_params(selftest_dynamic_shared, p); },
        {&sh_in, &sh_out}, 2, 1, 64, 64 * sizeof(int));

    for (void* p : std::vector<void*>{x, y, w, out, table, ids, emb, logits, best, best_v, gate_up, act, q, k, pos,
                                      inv, qw, mx, my, shuf, sh_in, sh_out, kc, vc, table_p, rseq, rdense, rbase, rmask,
                                      aq, aout, nk, nv, aslots, msrc, mdst, lx, lw, lb, ly, cat, sel, gathered, xb, tk_ids, tk_p, s_logits, s_temp, s_topk, s_topp, s_minp, s_ck, s_ci, s_m,
                                      s_it, s_z, t_tok, t_par, t_start, t_cstart, t_coins, t_path, t_out, t_len})
        std::free(p);
    std::printf("%d passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}
