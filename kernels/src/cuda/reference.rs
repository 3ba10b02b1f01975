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

/// `linear_f16`: [`linear_bf16`] with `w` in IEEE half precision.
pub fn linear_f16(x: &[f32], w: &[half::f16], bias: Option<&[f32]>, k: usize) -> Vec<f32> {
    let wb: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
    let n = w.len() / k;
    x.chunks(k)
        .flat_map(|xr| {
            let wb = &wb;
            (0..n).map(move |c| {
                let dot: f64 = xr.iter().zip(&wb[c * k..(c + 1) * k]).map(|(&a, &b)| a as f64 * b as f64).sum();
                (dot + bias.map_or(0.0, |b| b[c] as f64)) as f32
            })
        })
        .collect()
}

/// `embedding_f16`: [`embedding_bf16`] over an f16 table.
pub fn embedding_f16(table: &[half::f16], ids: &[i32], hidden: usize) -> Vec<f32> {
    let vocab = table.len() / hidden;
    let mut out = vec![0.0f32; ids.len() * hidden];
    for (o, &id) in out.chunks_mut(hidden).zip(ids) {
        if id >= 0 && (id as usize) < vocab {
            for (o, w) in o.iter_mut().zip(&table[id as usize * hidden..][..hidden]) {
                *o = w.to_f32();
            }
        }
    }
    out
}

/// One row's sampling settings, as `sample_dist_rows` takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    pub temperature: f32,
    /// 0: off.
    pub top_k: i32,
    /// 1: off.
    pub top_p: f32,
    /// 0: off.
    pub min_p: f32,
}

/// `sample_dist_rows`, as probabilities over the vocabulary: the tokens
/// sorted by (logit descending, id ascending), cut by top-k, then by the
/// first running sum of the top-k probabilities to reach top-p, then to the
/// probabilities of at least `min_p` times the largest, renormalized
/// (the CPU path's `target_probs`, summed in f64). Greedy rows (temperature
/// <= 0 or top-k 1) put 1 on the first maximum. NaNs get 0.
pub fn sample_dist_rows(logits: &[f32], vocab: usize, params: &[SampleParams]) -> Vec<Vec<f64>> {
    logits
        .chunks(vocab)
        .zip(params)
        .map(|(r, p)| {
            let mut q = vec![0.0f64; vocab];
            let mut idx: Vec<usize> = (0..vocab).filter(|&i| !r[i].is_nan()).collect();
            idx.sort_by(|&a, &b| r[b].total_cmp(&r[a]).then(a.cmp(&b)));
            let m = idx.first().map_or(f32::NEG_INFINITY, |&i| r[i]);
            if !(p.temperature > 0.0) || p.top_k == 1 || m == f32::NEG_INFINITY {
                q[idx.first().copied().unwrap_or(0)] = 1.0;
                return q;
            }
            let k = if p.top_k > 0 { (p.top_k as usize).min(idx.len()) } else { idx.len() };
            idx.truncate(k);
            let w: Vec<f64> = idx.iter().map(|&i| (((r[i] - m) / p.temperature) as f64).exp()).collect();
            let zk: f64 = w.iter().sum();
            let mut keep = k;
            if p.top_p < 1.0 {
                let mut cum = 0.0;
                for (i, &v) in w.iter().enumerate() {
                    cum += v / zk;
                    if cum >= p.top_p as f64 {
                        keep = i + 1;
                        break;
                    }
                }
            }
            if p.min_p > 0.0 {
                keep = keep.min(w.iter().take_while(|&&v| v >= p.min_p as f64).count().max(1));
            }
            let z: f64 = w[..keep].iter().sum();
            for (&i, &v) in idx[..keep].iter().zip(&w[..keep]) {
                q[i] = v / z;
            }
            q
        })
        .collect()
}

/// `tree_sample_verify` for one tree, over each node's distribution `q[node]`
/// (from [`sample_dist_rows`]): the accepted path (root first) and the
/// emitted tokens, and the smallest distance of any coin from a boundary it
/// was compared with (decisions that close may go either way on a device,
/// whose sums round differently).
pub fn tree_sample_verify(q: &[Vec<f64>], tokens: &[i32], parents: &[i32], coins: &[f32]) -> (Vec<usize>, Vec<i32>, f64) {
    let mut path = vec![0usize];
    let mut out = Vec::new();
    let mut margin = f64::INFINITY;
    let mut node = 0usize;
    loop {
        let u = coins[path.len() - 1] as f64;
        let mut tried: Vec<i32> = Vec::new();
        let mut acc = 0.0;
        let mut next = None;
        let mut last_positive = None;
        for c in node + 1..tokens.len() {
            if parents[c] != node as i32 || tried.contains(&tokens[c]) {
                continue;
            }
            tried.push(tokens[c]);
            let p = q[node][tokens[c] as usize];
            if p > 0.0 {
                last_positive = Some(c);
            }
            acc += p;
            margin = margin.min((u - acc).abs());
            if u < acc {
                next = Some(c);
                break;
            }
        }
        if next.is_none() && q[node].iter().enumerate().all(|(j, &p)| p == 0.0 || tried.contains(&(j as i32))) {
            next = last_positive;
        }
        if let Some(c) = next {
            out.push(tokens[c]);
            path.push(c);
            node = c;
            continue;
        }
        let rest: Vec<f64> = q[node].iter().enumerate().map(|(j, &p)| if tried.contains(&(j as i32)) { 0.0 } else { p }).collect();
        let target = coins[path.len()] as f64 * rest.iter().sum::<f64>();
        let (mut cum, mut pick) = (0.0, 0);
        for (j, &p) in rest.iter().enumerate() {
            if p > 0.0 {
                cum += p;
                pick = j;
                margin = margin.min((target - cum).abs());
                if target < cum {
                    break;
                }
            }
        }
        out.push(pick as i32);
        return (path, out, margin);
    }
}

/// The order key of common.cuh's `order_key`: increasing with the logit,
/// 0 for a NaN.
pub fn order_key(x: f32) -> u32 {
    if x.is_nan() {
        return 0;
    }
    let u = x.to_bits();
    if u & 0x8000_0000 != 0 {
        !u
    } else {
        u | 0x8000_0000
    }
}

/// The probabilities a `sample_dist_rows` output describes for one row
/// (`cut_key`, `cut_id`, maximum, 1/temperature, kept mass), computed as
/// `tree_sample.cu` prices a token.
pub fn dist_of_cut(row: &[f32], cut_key: u32, cut_id: i32, max: f32, inv_t: f32, mass: f32) -> Vec<f64> {
    row.iter()
        .enumerate()
        .map(|(j, &x)| {
            let k = order_key(x);
            let kept = k > cut_key || (k == cut_key && j as i32 <= cut_id);
            if !kept || x.is_nan() || !(mass > 0.0) {
                return 0.0;
            }
            let w = if inv_t == 0.0 { 1.0 } else { ((x - max) * inv_t).exp() };
            (w / mass) as f64
        })
        .collect()
}
