//! Per-row dot products between one weight row and R activation rows.
//!
//! The weight block is decoded once and used for all R rows (the verify-batch
//! reuse that makes scoring 8 tree nodes cost far less than 8 decodes). Each
//! row keeps its own accumulator, summed in block order, so a row's result is
//! identical whether it is computed alone or in a tile: batch invariance.

use super::blocks::{read_f16, ActBlock, BlockFormat, QK};
use std::sync::OnceLock;

pub(crate) fn has_avx2() -> bool {
    static FLAG: OnceLock<bool> = OnceLock::new();
    *FLAG.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::env::var_os("AERIE_NO_SIMD").is_none()
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Dots one quantized weight row with R quantized activation rows.
#[inline]
pub(crate) fn dot_q_rows<const R: usize>(fmt: BlockFormat, w: &[u8], acts: &[&[ActBlock]; R]) -> [f32; R] {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above); slices are
        // bounds-checked by the callers' shape validation (w holds exactly
        // acts[r].len() blocks).
        return unsafe { avx2::dot_q_rows::<R>(fmt, w, acts) };
    }
    scalar_dot_q_rows::<R>(fmt, w, acts)
}

/// Dots one f32 weight row with R f32 activation rows.
#[inline]
pub(crate) fn dot_f32_rows<const R: usize>(w: &[f32], xs: &[&[f32]; R]) -> [f32; R] {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && w.len() % 8 == 0 {
        // SAFETY: AVX2/FMA present; every xs[r] has w.len() elements (checked by callers).
        return unsafe { avx2::dot_f32_rows::<R>(w, xs) };
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        let mut acc = [0.0f32; 8];
        for (i, (&a, &b)) in w.iter().zip(xs[r].iter()).enumerate() {
            acc[i % 8] += a * b;
        }
        out[r] = acc.iter().sum();
    }
    out
}

pub(crate) fn scalar_dot_q_rows<const R: usize>(fmt: BlockFormat, w: &[u8], acts: &[&[ActBlock]; R]) -> [f32; R] {
    let bb = fmt.block_bytes();
    let nb = w.len() / bb;
    let mut acc = [0.0f32; R];
    let mut summs = [0.0f32; R];
    let mut qw = [0i32; QK];
    for b in 0..nb {
        let blk = &w[b * bb..(b + 1) * bb];
        let (d, m) = match fmt {
            BlockFormat::Q4_0 => {
                for j in 0..16 {
                    qw[j] = (blk[2 + j] & 0xF) as i32 - 8;
                    qw[j + 16] = (blk[2 + j] >> 4) as i32 - 8;
                }
                (read_f16(blk, 0), 0.0)
            }
            BlockFormat::Q4_1 => {
                for j in 0..16 {
                    qw[j] = (blk[4 + j] & 0xF) as i32;
                    qw[j + 16] = (blk[4 + j] >> 4) as i32;
                }
                (read_f16(blk, 0), read_f16(blk, 2))
            }
            BlockFormat::Q8_0 => {
                for j in 0..QK {
                    qw[j] = blk[2 + j] as i8 as i32;
                }
                (read_f16(blk, 0), 0.0)
            }
        };
        for r in 0..R {
            let a = &acts[r][b];
            let s: i32 = qw.iter().zip(a.qs.iter()).map(|(&x, &y)| x * y as i32).sum();
            acc[r] += d * a.d * s as f32;
            summs[r] += m * a.s;
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = acc[r] + summs[r];
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn nibbles_32(p: *const u8) -> __m256i {
        let tmp = _mm_loadu_si128(p as *const __m128i);
        let bytes = _mm256_insertf128_si256::<1>(_mm256_castsi128_si256(tmp), _mm_srli_epi16::<4>(tmp));
        _mm256_and_si256(_mm256_set1_epi8(0xF), bytes)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn mul_sum_us8_pairs_float(ax: __m256i, sy: __m256i) -> __m256 {
        let dot = _mm256_maddubs_epi16(ax, sy);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(x: __m256) -> f32 {
        let mut r = _mm256_extractf128_ps::<1>(x);
        r = _mm_add_ps(r, _mm256_castps256_ps128(x));
        r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        r = _mm_add_ss(r, _mm_movehdup_ps(r));
        _mm_cvtss_f32(r)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q_rows<const R: usize>(fmt: BlockFormat, w: &[u8], acts: &[&[ActBlock]; R]) -> [f32; R] {
        let bb = fmt.block_bytes();
        let nb = w.len() / bb;
        let mut acc = [_mm256_setzero_ps(); R];
        let mut summs = [0.0f32; R];
        let wp = w.as_ptr();
        for b in 0..nb {
            let blk = wp.add(b * bb);
            let d = read_f16(std::slice::from_raw_parts(blk, 4), 0);
            match fmt {
                BlockFormat::Q4_1 => {
                    let m = read_f16(std::slice::from_raw_parts(blk, 4), 2);
                    // Unsigned nibbles (0..15) times signed activations.
                    let qx = nibbles_32(blk.add(4));
                    for r in 0..R {
                        let a = acts[r].get_unchecked(b);
                        summs[r] += m * a.s;
                        let qy = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                        let xy = mul_sum_us8_pairs_float(qx, qy);
                        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), xy, acc[r]);
                    }
                }
                BlockFormat::Q4_0 | BlockFormat::Q8_0 => {
                    let qx = if fmt == BlockFormat::Q4_0 {
                        _mm256_sub_epi8(nibbles_32(blk.add(2)), _mm256_set1_epi8(8))
                    } else {
                        _mm256_loadu_si256(blk.add(2) as *const __m256i)
                    };
                    // Signed x signed through the sign trick: |x| * sign(y, x).
                    let ax = _mm256_sign_epi8(qx, qx);
                    for r in 0..R {
                        let a = acts[r].get_unchecked(b);
                        let qy = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                        let sy = _mm256_sign_epi8(qy, qx);
                        let xy = mul_sum_us8_pairs_float(ax, sy);
                        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), xy, acc[r]);
                    }
                }
            }
        }
        let mut out = [0.0f32; R];
        for r in 0..R {
            out[r] = hsum(acc[r]) + summs[r];
        }
        out
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_f32_rows<const R: usize>(w: &[f32], xs: &[&[f32]; R]) -> [f32; R] {
        let n = w.len();
        let mut acc = [_mm256_setzero_ps(); R];
        let mut i = 0;
        while i < n {
            let wv = _mm256_loadu_ps(w.as_ptr().add(i));
            for r in 0..R {
                let xv = _mm256_loadu_ps(xs[r].as_ptr().add(i));
                acc[r] = _mm256_fmadd_ps(wv, xv, acc[r]);
            }
            i += 8;
        }
        let mut out = [0.0f32; R];
        for r in 0..R {
            out[r] = hsum(acc[r]);
        }
        out
    }
}
