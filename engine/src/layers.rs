//! The pieces of a Llama decoder layer, shared by the target model and the
//! draft heads (EAGLE's fc-fed layer, EAGLE-3's 2H-wide attention input).
//!
//! A forward call first builds an [`AttnPlan`]: where each sequence's new
//! tokens sit, which keys each may see, and their rotary tables. Every layer
//! of that call reuses the plan.

use crate::config::RopeStyle;
use crate::kv::KvCache;
use crate::model::AttnMask;
use crate::weights::Linear;
use aerie_kernels::cpu::attention::{self, SumOrder};
use aerie_kernels::cpu::{ggml_math, ops, Matrix};
use rayon::prelude::*;

thread_local! {
    /// Per-thread attention score buffer, reused across calls.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Attention geometry of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// Rotary embedding: one inverse frequency per dimension pair.
///
/// Angles are computed as ggml computes them, in f32: `theta = pos`, then
/// `theta *= base^(-2/d)` from one pair to the next, each pair's angle
/// divided by its frequency factor (llama3 scaling, or 1). The f64 angles
/// of the textbook formula differ by up to ~4e-4 rad at position 200, enough
/// to move llama.cpp near-ties.
#[derive(Debug, Clone)]
pub struct Rope {
    pub style: RopeStyle,
    /// `base^(-2/d)` in f32, ggml's per-pair angle step.
    theta_scale: f32,
    /// Per-pair divisor: the unscaled frequency over `inv_freqs[i]`.
    freq_factors: Vec<f32>,
}

impl Rope {
    /// `inv_freqs` from [`crate::config::ModelConfig::inv_freqs`] (scaling
    /// applied), `base` the model's `rope_theta`. Only the angle step and the
    /// per-pair factors are kept: they are what the angles are made of.
    pub fn new(inv_freqs: &[f64], base: f64, style: RopeStyle) -> Rope {
        let d = 2 * inv_freqs.len();
        let theta_scale = (base as f32).powf(-2.0 / d as f32);
        let freq_factors = (0..inv_freqs.len())
            .map(|i| ((1.0 / base.powf(2.0 * i as f64 / d as f64)) / inv_freqs[i]) as f32)
            .collect();
        Rope { style, theta_scale, freq_factors }
    }
}

/// One sequence's rows in a stacked forward batch.
#[derive(Debug, Clone, Copy)]
pub struct SeqSpan {
    /// Cached tokens before this call.
    pub base: usize,
    /// New tokens.
    pub n: usize,
    /// First row of this sequence in the stacked activations.
    pub offset: usize,
}

/// Everything attention needs that does not change from layer to layer.
pub struct AttnPlan {
    pub spans: Vec<SeqSpan>,
    /// Sequence index of every stacked row.
    tok_seq: Vec<usize>,
    /// Visible key indices of every stacked row.
    visible: Vec<Vec<u32>>,
    /// Summation order of each sequence: a causal batch of two or more
    /// tokens is a prompt, and llama.cpp sums prompts in tinyBLAS's order.
    /// Trees and single tokens take the one-token order, so a tree node and
    /// its path decoded token by token agree bit for bit.
    orders: Vec<SumOrder>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl AttnPlan {
    /// `seqs[i] = (cached tokens, mask)`; `counts[i]` new tokens each;
    /// `positions` holds every new token's absolute position, stacked.
    pub fn new(seqs: &[(usize, &AttnMask)], counts: &[usize], positions: &[u32], rope: &Rope) -> AttnPlan {
        let mut spans = Vec::with_capacity(seqs.len());
        let mut offset = 0;
        for (&(base, _), &n) in seqs.iter().zip(counts) {
            spans.push(SeqSpan { base, n, offset });
            offset += n;
        }
        let mut tok_seq = Vec::with_capacity(offset);
        let mut visible: Vec<Vec<u32>> = Vec::with_capacity(offset);
        for (si, p) in spans.iter().enumerate() {
            tok_seq.extend(std::iter::repeat_n(si, p.n));
            let mask = seqs[si].1;
            for i in 0..p.n {
                visible.push((0..p.base + p.n).filter(|&j| visible_at(mask, p.base, p.n, i, j)).map(|j| j as u32).collect());
            }
        }
        let half = rope.freq_factors.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            let mut theta = p as f32;
            for &ff in &rope.freq_factors {
                let a = theta / ff;
                cos.push(a.cos());
                sin.push(a.sin());
                theta *= rope.theta_scale;
            }
        }
        let orders = seqs
            .iter()
            .zip(counts)
            .map(|((_, m), &n)| if matches!(m, AttnMask::Causal) && n >= 2 { SumOrder::Prompt } else { SumOrder::Step })
            .collect();
        AttnPlan { spans, tok_seq, visible, orders, cos, sin, half }
    }

    /// Stacked rows in the call.
    pub fn rows(&self) -> usize {
        self.tok_seq.len()
    }

    fn apply_rope(&self, x: &mut [f32], heads: usize, hd: usize, style: RopeStyle) {
        let half = self.half;
        for (t, row) in x.chunks_mut(heads * hd).enumerate() {
            let (c, s) = (&self.cos[t * half..(t + 1) * half], &self.sin[t * half..(t + 1) * half]);
            ggml_math::rope_rotate(row, c, s, style == RopeStyle::Interleaved);
        }
    }
}

#[inline]
fn visible_at(mask: &AttnMask, base: usize, n: usize, i: usize, j: usize) -> bool {
    match mask {
        AttnMask::Causal => j < base || j - base <= i,
        AttnMask::Tree(m) => j < base || m[i * n + (j - base)],
        AttnMask::Full(m) => m[i * (base + n) + j],
    }
}

/// The attention sublayer: `xn` (already normed, any width the qkv
/// projection takes) → `out` (`rows × wo.rows`). Keys and values of the new
/// rows are written into layer `li` of each sequence's cache, which must
/// already have grown by its new tokens.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    qkv: &Linear,
    wo: &Matrix,
    shape: AttnShape,
    rope_style: RopeStyle,
    plan: &AttnPlan,
    caches: &mut [&mut KvCache],
    li: usize,
    xn: &[f32],
    out: &mut [f32],
) {
    let t_total = plan.rows();
    let AttnShape { num_heads: nh, num_kv_heads: nkv, head_dim: hd } = shape;
    let (qd, kvd) = (nh * hd, nkv * hd);
    let mut fused = vec![0.0f32; t_total * (qd + 2 * kvd)];
    qkv.forward(xn, t_total, &mut fused);
    let mut q = vec![0.0f32; t_total * qd];
    let mut k = vec![0.0f32; t_total * kvd];
    let mut v = vec![0.0f32; t_total * kvd];
    for (t, row) in fused.chunks(qd + 2 * kvd).enumerate() {
        q[t * qd..(t + 1) * qd].copy_from_slice(&row[..qd]);
        k[t * kvd..(t + 1) * kvd].copy_from_slice(&row[qd..qd + kvd]);
        v[t * kvd..(t + 1) * kvd].copy_from_slice(&row[qd + kvd..]);
    }
    plan.apply_rope(&mut q, nh, hd, rope_style);
    plan.apply_rope(&mut k, nkv, hd, rope_style);
    for (cache, p) in caches.iter_mut().zip(&plan.spans) {
        let dst = p.base * kvd..(p.base + p.n) * kvd;
        let src = p.offset * kvd..(p.offset + p.n) * kvd;
        if cache.f16 {
            // f16 values, as llama.cpp's default F16 KV cache holds.
            ggml_math::round_f16_slice(&mut k[src.clone()]);
            ggml_math::round_f16_slice(&mut v[src.clone()]);
        }
        cache.k[li][dst.clone()].copy_from_slice(&k[src.clone()]);
        cache.v[li][dst].copy_from_slice(&v[src]);
    }
    let mut attn = vec![0.0f32; t_total * qd];
    {
        let caches: Vec<&KvCache> = caches.iter().map(|c| &**c).collect();
        let scale = 1.0 / (hd as f32).sqrt();
        let group = nh / nkv;
        // One task per (token, kv head): each visible key is loaded once for
        // all the query heads that share it.
        let task = |idx: usize, o: &mut [f32]| {
            let (t, kvh) = (idx / nkv, idx % nkv);
            let cache = caches[plan.tok_seq[t]];
            let head0 = kvh * group;
            let args = attention::AttnArgs {
                q: &q[t * qd + head0 * hd..t * qd + (head0 + group) * hd],
                k: &cache.k[li],
                v: &cache.v[li],
                row_stride: kvd,
                offset: kvh * hd,
                head_dim: hd,
                keys: &plan.visible[t],
                scale,
                order: plan.orders[plan.tok_seq[t]],
                f16: cache.f16,
            };
            SCRATCH.with(|s| attention::attend(&args, o, &mut s.borrow_mut()));
        };
        aerie_kernels::cpu::pool::for_each_chunk_mut(&mut attn, group * hd, &task);
    }
    wo.matmul(&attn, t_total, out);
}

/// The gated MLP: `out = down(silu(gate(xn)) * up(xn))`.
pub fn mlp(gate_up: &Linear, down: &Matrix, xn: &[f32], rows: usize, out: &mut [f32]) {
    let ff = gate_up.out_features() / 2;
    let mut gu = vec![0.0f32; rows * 2 * ff];
    gate_up.forward(xn, rows, &mut gu);
    let mut act = vec![0.0f32; rows * ff];
    for (row, a) in gu.chunks(2 * ff).zip(act.chunks_mut(ff)) {
        a.copy_from_slice(&row[..ff]);
        ggml_math::silu_mul(a, &row[ff..]);
    }
    down.matmul(&act, rows, out);
}

/// RMS-normalizes each `w.len()`-wide row of `x` into `out`.
pub fn norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    if x.len() < 16 * h {
        out.chunks_mut(h).zip(x.chunks(h)).for_each(|(o, r)| ops::rms_norm(r, w, eps, o));
    } else {
        out.par_chunks_mut(h).zip(x.par_chunks(h)).for_each(|(o, r)| ops::rms_norm(r, w, eps, o));
    }
}

pub fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
