//! Attention for one new token and one KV head: the query heads that share
//! the KV head (grouped-query attention) score every visible key, take a
//! softmax, and sum the values. The key list is explicit, so the same kernel
//! serves causal decoding and token trees.
//!
//! Strategy: keys are visited in list order for every head (a fixed order,
//! hence batch-invariant results); the AVX2 version keeps a head's 64-wide
//! output in registers while it streams the values.

use super::ops;

/// Shapes and addressing of one attention call.
pub struct AttnArgs<'a> {
    /// `group × head_dim` query rows.
    pub q: &'a [f32],
    /// Key and value caches: row `j` of this KV head starts at
    /// `j * row_stride + offset` and holds `head_dim` floats.
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub row_stride: usize,
    pub offset: usize,
    pub head_dim: usize,
    pub keys: &'a [u32],
    pub scale: f32,
}

/// Writes `group × head_dim` outputs; `scores` is scratch space.
pub fn attend(a: &AttnArgs, out: &mut [f32], scores: &mut Vec<f32>) {
    let hd = a.head_dim;
    let group = a.q.len() / hd;
    let nk = a.keys.len();
    scores.clear();
    scores.resize(group * nk, 0.0);
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() && hd % 8 == 0 {
        // SAFETY: AVX2 present; every key row lies inside k/v (the caller's
        // keys index cached rows), head_dim is a multiple of 8.
        unsafe { avx2::attend(a, out, scores, group) };
        return;
    }
    for (ki, &j) in a.keys.iter().enumerate() {
        let base = j as usize * a.row_stride + a.offset;
        let kr = &a.k[base..base + hd];
        for g in 0..group {
            scores[g * nk + ki] = ops::dot(&a.q[g * hd..(g + 1) * hd], kr) * a.scale;
        }
    }
    out.fill(0.0);
    for g in 0..group {
        let sc = &mut scores[g * nk..(g + 1) * nk];
        ops::softmax(sc);
        let o = &mut out[g * hd..(g + 1) * hd];
        for (&w, &j) in sc.iter().zip(a.keys) {
            let base = j as usize * a.row_stride + a.offset;
            ops::axpy(w, &a.v[base..base + hd], o);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    use crate::cpu::simd::hsum;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attend(a: &AttnArgs, out: &mut [f32], scores: &mut [f32], group: usize) {
        let hd = a.head_dim;
        let nk = a.keys.len();
        let (kp, vp, qp) = (a.k.as_ptr(), a.v.as_ptr(), a.q.as_ptr());
        for (ki, &j) in a.keys.iter().enumerate() {
            let kr = kp.add(j as usize * a.row_stride + a.offset);
            for g in 0..group {
                let qr = qp.add(g * hd);
                let mut acc = _mm256_setzero_ps();
                let mut i = 0;
                while i < hd {
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(qr.add(i)), _mm256_loadu_ps(kr.add(i)), acc);
                    i += 8;
                }
                *scores.get_unchecked_mut(g * nk + ki) = hsum(acc) * a.scale;
            }
        }
        for g in 0..group {
            let sc = &mut scores[g * nk..(g + 1) * nk];
            ops::softmax(sc);
            let o = out.as_mut_ptr().add(g * hd);
            // Output chunks of 32 floats in registers while values stream by.
            let mut c = 0;
            while c < hd {
                let w = (hd - c).min(32) / 8;
                let mut acc = [_mm256_setzero_ps(); 4];
                for (&p, &j) in sc.iter().zip(a.keys) {
                    let vr = vp.add(j as usize * a.row_stride + a.offset + c);
                    let pv = _mm256_set1_ps(p);
                    for (t, slot) in acc.iter_mut().enumerate().take(w) {
                        *slot = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr.add(t * 8)), *slot);
                    }
                }
                for (t, slot) in acc.iter().enumerate().take(w) {
                    _mm256_storeu_ps(o.add(c + t * 8), *slot);
                }
                c += w * 8;
            }
        }
    }
}
