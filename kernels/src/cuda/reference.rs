//! Plain Rust references of the CUDA kernels, one function per kernel with
//! the kernel's name and layout. They say what a kernel computes, not how:
//! sums run left to right in f64 where the kernels use f32 trees, so tests
//! compare against them with a tolerance (exact where the kernel is exact).

use half::bf16;

/// `embedding_bf16`: rows of a bf16 `[vocab, hidden]` table as f32; an id
/// outside the vocabulary gives a row of zeros.
pub fn embedding_bf16(table: &[bf16], ids: &[i32], hidden: usize) -> Vec<f32> {
    let vocab = table.len() / hidden;
    let mut out = vec![0.0f32; ids.len() * hidden];
    for (o, &id) in out.chunks_mut(hidden).zip(ids) {
        if id >= 0 && (id as usize) < vocab {
            let row = &table[id as usize * hidden..][..hidden];
            for (o, w) in o.iter_mut().zip(row) {
                *o = w.to_f32();
            }
        }
    }
    out
}

/// `rms_norm`: each row of `x` scaled by `1 / sqrt(mean(x²) + eps)`, times
/// the weight.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let hidden = weight.len();
    let mut out = vec![0.0f32; x.len()];
    for (o, xr) in out.chunks_mut(hidden).zip(x.chunks(hidden)) {
        let ss: f64 = xr.iter().map(|&v| v as f64 * v as f64).sum();
        let scale = 1.0 / (ss / hidden as f64 + eps as f64).sqrt();
        for ((o, &v), w) in o.iter_mut().zip(xr).zip(weight) {
            *o = (v as f64 * scale * *w as f64) as f32;
        }
    }
    out
}

/// `rope`: q `[tokens, n_heads, head_dim]` and k `[tokens, n_kv_heads,
/// head_dim]` rotated in place by `positions[t] * inv_freq[i]`; `neox` pairs
/// (i, i + d/2), otherwise (2i, 2i + 1).
pub fn rope(q: &mut [f32], k: &mut [f32], positions: &[i32], inv_freq: &[f32], head_dim: usize, neox: bool) {
    let half = head_dim / 2;
    let tokens = positions.len();
    for buf in [q, k] {
        let per_token = buf.len() / tokens.max(1);
        for (t, row) in buf.chunks_mut(per_token).enumerate() {
            for head in row.chunks_mut(head_dim) {
                for (i, &f) in inv_freq.iter().enumerate().take(half) {
                    let angle = positions[t] as f64 * f as f64;
                    let (s, c) = angle.sin_cos();
                    let (a, b) = if neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
                    let (x0, x1) = (head[a] as f64, head[b] as f64);
                    head[a] = (x0 * c - x1 * s) as f32;
                    head[b] = (x0 * s + x1 * c) as f32;
                }
            }
        }
    }
}

/// `silu_mul`: `silu(gate) * up` of a fused `[rows, 2 * inter]` gate/up.
pub fn silu_mul(gate_up: &[f32], inter: usize) -> Vec<f32> {
    gate_up
        .chunks(2 * inter)
        .flat_map(|r| {
            let (g, u) = r.split_at(inter);
            g.iter().zip(u).map(|(&g, &u)| (g as f64 / (1.0 + (-g as f64).exp()) * u as f64) as f32)
        })
        .collect()
}

/// `add_inplace`: `x += y`.
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `copy_rows`: row `r` of `dst` (stride `dst_stride`) gets the first
/// `width` values of source row `src_rows[r]` (or `r`); indices outside the
/// source's `src_count` rows are skipped.
pub fn copy_rows(src: &[f32], src_stride: usize, src_rows: Option<&[i32]>, src_count: usize, dst: &mut [f32], dst_stride: usize, rows: usize, width: usize) {
    for r in 0..rows {
        let s = src_rows.map_or(r as i64, |x| x[r] as i64);
        if s < 0 || s as usize >= src_count {
            continue;
        }
        let s = s as usize;
        dst[r * dst_stride..r * dst_stride + width].copy_from_slice(&src[s * src_stride..s * src_stride + width]);
    }
}

/// `f32_to_bf16`: each value rounded to bf16 (nearest even), as raw bits.
pub fn f32_to_bf16(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect()
}

/// A library GEMM's semantics: `y[r, j] = Σ_i x[r, i] · w[j, i]` over bf16
/// inputs (raw bits), products summed in f32. The order here is `i`
/// ascending; cuBLAS picks its own, so results agree to f32 rounding, not
/// bit for bit.
pub fn gemm_bf16(x: &[u16], w: &[u16], y: &mut [f32], rows: usize, n: usize, k: usize) {
    let f = |b: u16| f32::from_bits((b as u32) << 16);
    let xf: Vec<f32> = x[..rows * k].iter().map(|&b| f(b)).collect();
    let mut wrow = vec![0.0f32; k];
    for j in 0..n {
        for (d, &b) in wrow.iter_mut().zip(&w[j * k..(j + 1) * k]) {
            *d = f(b);
        }
        for r in 0..rows {
            y[r * n + j] = xf[r * k..(r + 1) * k].iter().zip(&wrow).map(|(a, b)| a * b).sum();
        }
    }
}

/// `topk_rows`: each row's `k` largest logits (value descending, index
/// ascending on ties; NaNs never) with their softmax probabilities; `-1`
/// and 0 where a row has fewer than `k` candidates.
pub fn topk_rows(logits: &[f32], vocab: usize, k: usize) -> Vec<Vec<(i32, f32)>> {
    logits
        .chunks(vocab)
        .map(|r| {
            let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let s: f64 = r.iter().map(|&x| ((x - m) as f64).exp()).filter(|v| !v.is_nan()).sum();
            let mut idx: Vec<usize> = (0..r.len()).filter(|&i| !r[i].is_nan()).collect();
            idx.sort_by(|&a, &b| r[b].total_cmp(&r[a]).then(a.cmp(&b)));
            let mut out: Vec<(i32, f32)> = idx.iter().take(k).map(|&i| (i as i32, (((r[i] - m) as f64).exp() / s) as f32)).collect();
            out.resize(k, (-1, 0.0));
            out
        })
        .collect()
}

/// `argmax_rows`: each row's first largest value and its index; a row with
/// no such value (all NaN or -inf) gives index 0 and -inf.
pub fn argmax_rows(logits: &[f32], vocab: usize) -> Vec<(i32, f32)> {
    logits
        .chunks(vocab)
        .map(|r| {
            let (i, v) = crate::cpu::ops::argmax(r);
            (i as i32, v)
        })
        .collect()
}

/// `matvec_q4_1`: `y = W x` for Q4_1 rows of `cols / 32` blocks of 20 bytes
/// (f16 scale d, f16 minimum m, 16 bytes of nibbles: low nibbles are
/// elements 0..16 of the block, high nibbles 16..32).
pub fn matvec_q4_1(w: &[u8], x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let nb = cols / 32;
    (0..rows)
        .map(|r| {
            let mut acc = 0.0f64;
            for b in 0..nb {
                let blk = &w[(r * nb + b) * 20..][..20];
                let d = half::f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f64();
                let m = half::f16::from_bits(u16::from_le_bytes([blk[2], blk[3]])).to_f64();
                for j in 0..16 {
                    let q = blk[4 + j];
                    acc += ((q & 0xF) as f64 * d + m) * x[b * 32 + j] as f64;
                    acc += ((q >> 4) as f64 * d + m) * x[b * 32 + j + 16] as f64;
                }
            }
            acc as f32
        })
        .collect()
}

/// `kv_append`: each token's k and v rows, rounded to bf16, written at its
/// slot of the `[num_slots, kv_width]` caches; slots outside are skipped.
pub fn kv_append(k: &[f32], v: &[f32], k_cache: &mut [bf16], v_cache: &mut [bf16], slots: &[i32], kv_width: usize) {
    let num_slots = k_cache.len() / kv_width;
    for (t, &slot) in slots.iter().enumerate() {
        if slot < 0 || slot as usize >= num_slots {
            continue;
        }
        let s = slot as usize * kv_width;
        for i in 0..kv_width {
            k_cache[s + i] = bf16::from_f32(k[t * kv_width + i]);
            v_cache[s + i] = bf16::from_f32(v[t * kv_width + i]);
        }
    }
}

/// `kv_move`: row `src[i]` copied to `dst[i]` of both caches, one pair after
/// another.
pub fn kv_move(k_cache: &mut [bf16], v_cache: &mut [bf16], src: &[i32], dst: &[i32], kv_width: usize) {
    let num_slots = k_cache.len() / kv_width;
    for (&s, &d) in src.iter().zip(dst) {
        let ok = |x: i32| x >= 0 && (x as usize) < num_slots;
        if ok(s) && ok(d) {
            let (s, d) = (s as usize * kv_width, d as usize * kv_width);
            k_cache.copy_within(s..s + kv_width, d);
            v_cache.copy_within(s..s + kv_width, d);
        }
    }
}

/// What one row of `attention_paged` sees: the positions `[0, dense_len)`
/// of sequence `seq`, then `tree_base + j` for each bit `j` of `tree_mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnRow {
    pub seq: i32,
    pub dense_len: i32,
    pub tree_base: i32,
    pub tree_mask: u64,
}

impl AttnRow {
    /// The positions this row attends to, in the kernel's order.
    pub fn visible(&self) -> impl Iterator<Item = i32> + '_ {
        (0..self.dense_len).chain((0..64).filter(|j| self.tree_mask >> j & 1 == 1).map(|j| self.tree_base + j))
    }
}

/// Geometry of a paged KV cache and of the attention heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagedGeometry {
    pub page_size: usize,
    pub max_pages: usize,
    pub num_pages: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// `attention_paged`: softmax(q·k × scale) · v over each row's visible
/// positions, in f64. Positions on pages outside the cache are skipped; a
/// row that sees nothing gives zeros.
pub fn attention_paged(
    q: &[f32],
    k_cache: &[bf16],
    v_cache: &[bf16],
    rows: &[AttnRow],
    page_table: &[i32],
    g: PagedGeometry,
    scale: f32,
) -> Vec<f32> {
    let hd = g.head_dim;
    let group = g.n_heads / g.n_kv_heads;
    let mut out = vec![0.0f32; rows.len() * g.n_heads * hd];
    for (r, row) in rows.iter().enumerate() {
        let slots: Vec<usize> = row
            .visible()
            .filter_map(|pos| {
                let page_idx = pos as usize / g.page_size;
                if page_idx >= g.max_pages {
                    return None;
                }
                let page = page_table[row.seq as usize * g.max_pages + page_idx];
                (page >= 0 && (page as usize) < g.num_pages).then(|| page as usize * g.page_size + pos as usize % g.page_size)
            })
            .collect();
        for h in 0..g.n_heads {
            let kvh = h / group;
            let qr = &q[(r * g.n_heads + h) * hd..][..hd];
            let at = |slot: usize| (slot * g.n_kv_heads + kvh) * hd;
            let scores: Vec<f64> = slots
                .iter()
                .map(|&s| qr.iter().zip(&k_cache[at(s)..at(s) + hd]).map(|(&a, b)| a as f64 * scale as f64 * b.to_f64()).sum())
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            let mut acc = vec![0.0f64; hd];
            for (w, &s) in weights.iter().zip(&slots) {
                for (a, v) in acc.iter_mut().zip(&v_cache[at(s)..at(s) + hd]) {
                    *a += w / total * v.to_f64();
                }
            }
            for (o, a) in out[(r * g.n_heads + h) * hd..][..hd].iter_mut().zip(acc) {
                *o = a as f32;
            }
        }
    }
    out
}

/// `linear_bf16`: `y = x · wᵀ (+ b)` with `w` a bf16 `[n, k]` matrix.
pub fn linear_bf16(x: &[f32], w: &[bf16], bias: Option<&[f32]>, k: usize) -> Vec<f32> {
    let n = w.len() / k;
    x.chunks(k)
        .flat_map(|xr| {
            (0..n).map(move |c| {
                let dot: f64 = xr.iter().zip(&w[c * k..(c + 1) * k]).map(|(&a, b)| a as f64 * b.to_f64()).sum();
                (dot + bias.map_or(0.0, |b| b[c] as f64)) as f32
            })
        })
        .collect()
}
