//! Element-wise math with ggml's CPU rounding, so that Aerie's logits match
//! llama.cpp's to the last bit where it matters (greedy near-ties).
//!
//! - [`expf`] is ggml's AVX2 exp approximation (a degree-5 polynomial after
//!   a 2^n range reduction, within about 1 ulp of the true exp). It is not
//!   libm's `expf`, and the two differ in the last bit often enough to move
//!   a softmax.
//! - [`round_f16`] rounds to the nearest f16 (ties to even), as ggml's F16
//!   KV cache and its f16 conversions of attention inputs do.
//!
//! Everything here is plain scalar code written so that LLVM vectorizes it
//! inside a `target_feature` function (branch-free selects, `mul_add` for
//! ggml's fused multiply-adds).

#[inline(always)]
fn c(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// ggml's `ggml_v_expf`, one lane. Every `mul_add` is one of its FMAs.
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    let r = c(0x4b40_0000); // 1.5 * 2^23: rounds z to an integer in its low bits
    let z = x.mul_add(c(0x3fb8_aa3b), r); // x * log2(e) + r
    let n = z - r;
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x)); // x - n * ln 2, in two parts
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1.0f32.to_bits())); // 2^n
    let u = b * b;
    let j = c(0x3c07_2010)
        .mul_add(b, c(0x3d2b_9f17))
        .mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb)))
        .mul_add(u, c(0x3f7f_fff6) * b);
    let normal = j.mul_add(k, k);
    // |n| > 126: 2^n is split in two factors so it can reach subnormals and
    // infinity; |n| > 192 saturates.
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    let wide = s2.mul_add(j, s2) * s1;
    let huge = s1 * s1;
    let an = n.abs();
    if an > 192.0 {
        huge
    } else if an > 126.0 {
        wide
    } else {
        normal
    }
}

/// Rounds to the nearest f16 value, ties to even, returned as f32 (f16
/// infinities for values beyond the f16 range).
#[inline(always)]
pub fn round_f16(x: f32) -> f32 {
    let bits = x.to_bits();
    let sign = bits & 0x8000_0000;
    let a = f32::from_bits(bits & 0x7fff_ffff);
    // Normal f16 range: keep 10 fraction bits, rounding half to even on the
    // integer bits (a carry into the exponent is the right answer).
    let keep = ((bits & 0x7fff_ffff) + 0x0fff + ((bits >> 13) & 1)) & 0x7fff_e000;
    let normal = f32::from_bits(keep);
    // Below 2^-14 the f16 step is a fixed 2^-24: adding and removing 0.5
    // rounds to that step in f32.
    let sub = (a + 0.5) - 0.5;
    let r = if a < c(0x3880_0000) { sub } else { normal }; // 2^-14
    let r = if r >= 65520.0 { f32::INFINITY } else { r };
    let r = if a.is_nan() { a } else { r };
    f32::from_bits(r.to_bits() | sign)
}

/// Rounds every element to f16 precision in place.
pub fn round_f16_slice(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        // SAFETY: AVX2/FMA present.
        unsafe { round_f16_avx2(x) };
        return;
    }
    x.iter_mut().for_each(|v| *v = round_f16(*v));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn round_f16_avx2(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = round_f16(*v));
}

/// Rotates every `cos.len() * 2`-wide head of `x` by RoPE, pair `i` by
/// `(cos[i], sin[i])`: pairs are `(2i, 2i+1)` when `interleaved`, else
/// `(i, i + half)`. Uses the fused multiply-adds GCC compiles ggml's
/// rotation into (`x0·c − x1·s` as `fma(x0, c, −x1·s)`).
pub fn rope_rotate(x: &mut [f32], cos: &[f32], sin: &[f32], interleaved: bool) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        // SAFETY: AVX2/FMA present.
        unsafe { rope_rotate_avx2(x, cos, sin, interleaved) };
        return;
    }
    rope_rotate_body(x, cos, sin, interleaved)
}

#[inline(always)]
fn rope_rotate_body(x: &mut [f32], cos: &[f32], sin: &[f32], interleaved: bool) {
    let half = cos.len();
    for head in x.chunks_mut(2 * half) {
        for i in 0..half {
            let (a, b) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0.mul_add(cos[i], -(x1 * sin[i]));
            head[b] = x0.mul_add(sin[i], x1 * cos[i]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rope_rotate_avx2(x: &mut [f32], cos: &[f32], sin: &[f32], interleaved: bool) {
    rope_rotate_body(x, cos, sin, interleaved)
}

/// `gate = silu(gate) * up`, with ggml's SiLU: `x / (1 + exp(-x))` on its
/// exp approximation.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        // SAFETY: AVX2/FMA present.
        unsafe { silu_mul_avx2(gate, up) };
        return;
    }
    silu_mul_body(gate, up)
}

#[inline(always)]
fn silu_mul_body(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let v = *g;
        *g = v / (1.0 + expf(0.0 - v)) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(gate: &mut [f32], up: &[f32]) {
    silu_mul_body(gate, up)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expf_is_within_two_ulps_of_libm() {
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (expf(x), x.exp());
            worst = worst.max(a.to_bits().abs_diff(b.to_bits()));
            x += 0.0137;
        }
        assert!(worst <= 2, "worst ulp distance {worst}");
        assert_eq!(expf(0.0), 1.0);
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(-200.0), 0.0);
        assert!(expf(100.0).is_infinite());
    }

    #[test]
    fn round_f16_matches_the_half_crate() {
        let mut rng = 0x1234_5678u64;
        for i in 0..200_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Magnitudes from 2^-30 to 2^20, both signs, plus exact ties.
            let x = if i % 7 == 0 {
                half::f16::from_bits((rng >> 3) as u16 & 0x7bff).to_f32() * (1.0 + 1.0 / 2048.0)
            } else {
                let e = (rng % 50) as i32 - 30;
                f32::from_bits(((rng >> 20) as u32 & 0x807f_ffff) | (((127 + e) as u32) << 23))
            };
            let want = half::f16::from_f32(x).to_f32();
            assert_eq!(round_f16(x).to_bits(), want.to_bits(), "x = {x:e}");
        }
    }
}
