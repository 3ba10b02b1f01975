//! Attention for one new token and one KV head: the query heads that share
//! the KV head (grouped-query attention) score every visible key, take a
//! softmax, and sum the values. The key list is explicit, so the same kernel
//! serves causal decoding and token trees.
//!
//! Numerics: llama.cpp's CPU attention without flash attention, rounding for
//! rounding, because greedy parity with llama.cpp is decided by last-bit
//! differences at near-ties:
//! - keys and values are f16 (the caller stores them rounded, see
//!   [`super::ggml_math::round_f16_slice`]), and the query is rounded to f16;
//! - `q·k` sums like `ggml_vec_dot_f16`: four 8-lane accumulators over
//!   32-wide steps, then ggml's pairwise reduction;
//! - the softmax uses ggml's exp approximation, sums 8-wide blocks in f32
//!   and the block sums in f64, and scales by the f32 reciprocal;
//! - the probabilities are rounded to f16, and `Σ p·v` keeps the same 32
//!   partial sums per output as `ggml_vec_dot_f16` over the keys.
//!
//! With `f16` off (an f32 KV cache, for tensor-parallel comparisons) the
//! query and probabilities stay f32; the summation orders are unchanged.
//!
//! Those are the orders of a one-token step. For a prompt batch llama.cpp's
//! matmuls go through llamafile's tinyBLAS instead, which keeps one 8-lane
//! accumulator per output and reduces it half, then pairs: [`SumOrder`]
//! selects between the two.
//!
//! Products of two f16 values are exact in f32, so only the order of the
//! additions matters, and that order is fixed by a key's *rank* in the
//! visible list (not its cache row). A tree node therefore sees exactly the
//! order its path would see decoded token by token: results are
//! batch-invariant, which keeps speculative greedy output lossless.

use super::ggml_math::{expf, round_f16};

/// Shapes and addressing of one attention call.
pub struct AttnArgs<'a> {
    /// `group × head_dim` query rows.
    pub q: &'a [f32],
    /// Key and value caches (f16 values held as f32): row `j` of this KV
    /// head starts at `j * row_stride + offset` and holds `head_dim` floats.
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub row_stride: usize,
    pub offset: usize,
    pub head_dim: usize,
    pub keys: &'a [u32],
    pub scale: f32,
    pub order: SumOrder,
    /// Round the query and the probabilities to f16, as llama.cpp does
    /// (with an f16 KV cache); off, the whole call stays in f32.
    pub f16: bool,
}

/// Which of llama.cpp's two summation orders the sums follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SumOrder {
    /// One-token steps (`ggml_vec_dot_f16`: 32 partial sums).
    Step,
    /// Prompt batches (tinyBLAS: 8 partial sums).
    Prompt,
}

/// ggml_vec_dot_f16's accumulator count × lane count: the stride of its
/// partial sums.
const SLOTS: usize = 32;
/// tinyBLAS's lane count.
const LANES: usize = 8;

/// Writes `group × head_dim` outputs; `scratch` is reused space.
pub fn attend(a: &AttnArgs, out: &mut [f32], scratch: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        // SAFETY: AVX2/FMA present; the body only indexes checked slices.
        unsafe { attend_avx2(a, out, scratch) };
        return;
    }
    attend_body::<false>(a, out, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2(a: &AttnArgs, out: &mut [f32], scratch: &mut Vec<f32>) {
    attend_body::<true>(a, out, scratch)
}

/// `AVX2`: take the intrinsic dots (the caller has AVX2/FMA enabled); the
/// scalar dots compute the same sums in the same order.
#[inline(always)]
fn attend_body<const AVX2: bool>(a: &AttnArgs, out: &mut [f32], scratch: &mut Vec<f32>) {
    let hd = a.head_dim;
    let group = a.q.len() / hd;
    let nk = a.keys.len();
    scratch.clear();
    scratch.resize(group * hd + group * nk + SLOTS * hd, 0.0);
    let (qh, rest) = scratch.split_at_mut(group * hd);
    let (scores, slots) = rest.split_at_mut(group * nk);
    for (o, &x) in qh.iter_mut().zip(a.q) {
        *o = if a.f16 { round_f16(x) } else { x };
    }
    let row = |j: u32| j as usize * a.row_stride + a.offset;
    // tinyBLAS needs whole 8-lane steps; ggml falls back to its vector dot.
    let prompt = a.order == SumOrder::Prompt && hd % LANES == 0;
    for (ki, &j) in a.keys.iter().enumerate() {
        let kr = &a.k[row(j)..row(j) + hd];
        for g in 0..group {
            let q = &qh[g * hd..(g + 1) * hd];
            let dot = dot::<AVX2>(prompt, q, kr);
            scores[g * nk + ki] = dot * a.scale;
        }
    }
    let nslots = if a.order == SumOrder::Prompt { LANES } else { SLOTS };
    for g in 0..group {
        let p = &mut scores[g * nk..(g + 1) * nk];
        softmax_probs(p, a.f16);
        slots.fill(0.0);
        for (ki, (&w, &j)) in p.iter().zip(a.keys).enumerate() {
            let s = &mut slots[(ki % nslots) * hd..(ki % nslots + 1) * hd];
            for (acc, &v) in s.iter_mut().zip(&a.v[row(j)..row(j) + hd]) {
                *acc += w * v;
            }
        }
        // The per-output reductions, written element-wise over the output
        // so that they vectorize across it.
        let o = &mut out[g * hd..(g + 1) * hd];
        let s = |k: usize, d: usize| slots[k * hd + d];
        if nslots == LANES {
            for (d, od) in o.iter_mut().enumerate() {
                let h = [s(4, d) + s(0, d), s(5, d) + s(1, d), s(6, d) + s(2, d), s(7, d) + s(3, d)];
                *od = (h[0] + h[2]) + (h[1] + h[3]);
            }
        } else {
            for (d, od) in o.iter_mut().enumerate() {
                let x: [f32; 8] = std::array::from_fn(|l| (s(l, d) + s(16 + l, d)) + (s(8 + l, d) + s(24 + l, d)));
                let t = [x[0] + x[4], x[1] + x[5], x[2] + x[6], x[3] + x[7]];
                *od = (t[0] + t[1]) + (t[2] + t[3]);
            }
        }
    }
}

#[inline(always)]
fn dot<const AVX2: bool>(prompt: bool, q: &[f32], k: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if AVX2 && q.len() % SLOTS == 0 {
        // SAFETY: AVX2 callers only (see attend_body); rows are hd long.
        return unsafe { if prompt { simd::dot_lanes(q, k) } else { simd::dot_slots(q, k) } };
    }
    if prompt {
        dot_lanes_order(q, k)
    } else {
        dot_f16_order(q, k)
    }
}

/// The two dots with intrinsics, for rows whose length is a multiple of 32.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_slots(x: &[f32], y: &[f32]) -> f32 {
        let (px, py) = (x.as_ptr(), y.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        for c in (0..x.len()).step_by(32) {
            for (a, slot) in acc.iter_mut().enumerate() {
                let o = c + 8 * a;
                *slot = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(o)), _mm256_loadu_ps(py.add(o)), *slot);
            }
        }
        let x0 = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
        let t0 = _mm_add_ps(_mm256_castps256_ps128(x0), _mm256_extractf128_ps::<1>(x0));
        let t1 = _mm_hadd_ps(t0, t0);
        _mm_cvtss_f32(_mm_hadd_ps(t1, t1))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_lanes(x: &[f32], y: &[f32]) -> f32 {
        let (px, py) = (x.as_ptr(), y.as_ptr());
        let mut acc = _mm256_setzero_ps();
        for c in (0..x.len()).step_by(8) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(c)), _mm256_loadu_ps(py.add(c)), acc);
        }
        // tinyBLAS's hsum is the crate's own: halves, then movehl, then movehdup.
        crate::cpu::simd::hsum(acc)
    }
}

/// `ggml_vec_dot_f16` on two f16-valued rows: slot `i % 32` collects
/// element `i` (steps of 32), the slots reduce in ggml's order, and a tail
/// shorter than 32 adds in f64 element by element.
#[inline(always)]
fn dot_f16_order(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len();
    let np = n - n % SLOTS;
    let mut lanes = [0.0f32; SLOTS];
    for c in (0..np).step_by(SLOTS) {
        for (s, l) in lanes.iter_mut().enumerate() {
            *l += x[c + s] * y[c + s];
        }
    }
    let mut sum = reduce_slots(&lanes) as f64;
    for i in np..n {
        sum += (x[i] * y[i]) as f64;
    }
    sum as f32
}

/// tinyBLAS's dot (`n` a multiple of 8): lane `i % 8` collects element `i`.
#[inline(always)]
fn dot_lanes_order(x: &[f32], y: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    for c in (0..x.len()).step_by(LANES) {
        for (l, acc) in lanes.iter_mut().enumerate() {
            *acc += x[c + l] * y[c + l];
        }
    }
    reduce_lanes(&lanes)
}

/// The 8-lane horizontal sum of tinyBLAS and of ggml's softmax: the 128-bit
/// halves, then lanes 0+2 and 1+3, then those two.
#[inline(always)]
fn reduce_lanes(b: &[f32]) -> f32 {
    let h = [b[4] + b[0], b[5] + b[1], b[6] + b[2], b[7] + b[3]];
    (h[0] + h[2]) + (h[1] + h[3])
}

/// ggml's `GGML_F32x8_REDUCE` of four 8-lane accumulators (slot = 8 ×
/// accumulator + lane): accumulators 0+2 and 1+3, then those two, then the
/// 128-bit halves, then two horizontal adds.
#[inline(always)]
fn reduce_slots(s: &[f32; SLOTS]) -> f32 {
    let mut x = [0.0f32; 8];
    for l in 0..8 {
        x[l] = (s[l] + s[16 + l]) + (s[8 + l] + s[24 + l]);
    }
    let t = [x[0] + x[4], x[1] + x[5], x[2] + x[6], x[3] + x[7]];
    (t[0] + t[1]) + (t[2] + t[3])
}

/// ggml's soft_max row, then the f16 rounding that the next matmul applies
/// to its input: exp by [`expf`], 8-wide block sums (halves, then pairs)
/// added in f64, one f32 reciprocal.
#[inline(always)]
fn softmax_probs(x: &mut [f32], f16: bool) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in x.iter_mut() {
        *v = expf(*v - max);
    }
    let mut sum = 0.0f64;
    for blk in x.chunks(8) {
        let mut b = [0.0f32; LANES];
        b[..blk.len()].copy_from_slice(blk);
        sum += reduce_lanes(&b) as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v = if f16 { round_f16(*v * inv) } else { *v * inv };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The order of the sums follows a key's rank among the visible keys,
    /// not its cache row: the same keys at other rows (a tree node's
    /// ancestors) give the same bits.
    #[test]
    fn order_follows_rank_not_cache_row() {
        let (hd, group) = (64usize, 3usize);
        let vals = |seed: u64, n: usize, amp: f32| -> Vec<f32> {
            let mut r = seed;
            (0..n)
                .map(|_| {
                    r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    round_f16((((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * amp)
                })
                .collect()
        };
        let q = vals(1, group * hd, 3.0);
        let (k, v) = (vals(2, 400 * hd, 3.0), vals(3, 400 * hd, 1.0));
        // Keys 0..200 at rows 0..200, or the same keys spread over rows
        // 0..390 (enough keys that every partial sum rounds).
        let rows: Vec<u32> = (0..200u32).map(|j| if j < 10 { j } else { 2 * j - 10 }).collect();
        let mut k2 = vec![0.0f32; 400 * hd];
        let mut v2 = vec![0.0f32; 400 * hd];
        for (j, &r) in rows.iter().enumerate() {
            k2[r as usize * hd..(r as usize + 1) * hd].copy_from_slice(&k[j * hd..(j + 1) * hd]);
            v2[r as usize * hd..(r as usize + 1) * hd].copy_from_slice(&v[j * hd..(j + 1) * hd]);
        }
        let contiguous: Vec<u32> = (0..200).collect();
        for order in [SumOrder::Step, SumOrder::Prompt] {
            let run = |k: &[f32], v: &[f32], keys: &[u32]| {
                let a = AttnArgs { q: &q, k, v, row_stride: hd, offset: 0, head_dim: hd, keys, scale: 0.125, order, f16: true };
                let mut out = vec![0.0f32; group * hd];
                attend(&a, &mut out, &mut Vec::new());
                out
            };
            let base = run(&k, &v, &contiguous);
            assert_eq!(base, run(&k2, &v2, &rows), "{order:?}: moving keys to other cache rows changed the bits");
        }
    }

    /// Against a plain f64 attention on the same f16-rounded inputs: the
    /// kernel's own roundings (f16 probabilities) stay within 1e-3 of the
    /// output's magnitude, and its SIMD and scalar builds agree exactly.
    #[test]
    fn matches_f64_attention_within_f16_rounding() {
        let (hd, group, nkeys) = (64usize, 3usize, 77usize);
        let mut rng = 7u64;
        let mut next = || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let q: Vec<f32> = (0..group * hd).map(|_| next() * 3.0).collect();
        let k: Vec<f32> = (0..nkeys * hd).map(|_| round_f16(next() * 3.0)).collect();
        let v: Vec<f32> = (0..nkeys * hd).map(|_| round_f16(next())).collect();
        let keys: Vec<u32> = (0..nkeys as u32).filter(|j| j % 5 != 3).collect();
        for order in [SumOrder::Step, SumOrder::Prompt] {
            let a = AttnArgs { q: &q, k: &k, v: &v, row_stride: hd, offset: 0, head_dim: hd, keys: &keys, scale: 0.125, order, f16: true };
            let mut out = vec![0.0f32; group * hd];
            attend(&a, &mut out, &mut Vec::new());
            let mut scalar = vec![0.0f32; group * hd];
            attend_body::<false>(&a, &mut scalar, &mut Vec::new());
            assert_eq!(out, scalar, "SIMD and scalar builds of the kernel must agree bit for bit");
            for g in 0..group {
                let qg: Vec<f64> = q[g * hd..(g + 1) * hd].iter().map(|&x| round_f16(x) as f64).collect();
                let s: Vec<f64> = keys.iter().map(|&j| (0..hd).map(|d| qg[d] * k[j as usize * hd + d] as f64).sum::<f64>() * 0.125).collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    let want: f64 = keys.iter().zip(&e).map(|(&j, w)| w / z * v[j as usize * hd + d] as f64).sum();
                    // f16 probabilities are each within 2^-11 relative, so the
                    // error is bounded against the sum of magnitudes.
                    let mag: f64 = keys.iter().zip(&e).map(|(&j, w)| w / z * (v[j as usize * hd + d] as f64).abs()).sum();
                    let got = out[g * hd + d] as f64;
                    assert!((got - want).abs() <= 1e-3 * mag, "{order:?} g{g} d{d}: {got} vs {want} (magnitude {mag})");
                }
            }
        }
    }
}
