//! Per-row dot products between one weight row and R activation rows.
//!
//! The weight block is decoded once and used for all R rows (the verify-batch
//! reuse that makes scoring 8 tree nodes cost far less than 8 decodes). Each
//! row keeps its own accumulator, summed in block order, so a row's result is
//! identical whether it is computed alone or in a tile: batch invariance.
//!
//! Two instruction sets, chosen once at run time: AVX2 (byte multiply-add,
//! then a 16-bit multiply-add into i32 lanes) and, where the CPU has
//! AVX512-VNNI, one `vpdpbusd` on 256-bit registers for the same i32 lanes.
//! The lanes hold exact integer sums, so every later float operation sees
//! the same inputs and the two give identical bits: a machine with VNNI
//! computes the same logits as one without, only faster when compute-bound
//! (verify batches, prefill).

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
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether the CPU can do the 8-bit block dot in one instruction
/// (`vpdpbusd` on 256-bit registers: AVX512-VNNI with AVX512VL). Only
/// speed changes: the dot of two blocks is an exact integer either way, so
/// results are bit-identical with and without it. `AERIE_NO_VNNI` turns it
/// off, for A/B runs.
pub(crate) fn has_vnni() -> bool {
    static FLAG: OnceLock<bool> = OnceLock::new();
    *FLAG.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            has_avx2()
                && std::env::var_os("AERIE_NO_VNNI").is_none()
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")
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
    if has_vnni() {
        // SAFETY: AVX2, FMA, F16C, AVX512-VNNI and AVX512VL present
        // (checked above); slice bounds as below.
        return unsafe { avx2::vnni_dot_q_rows::<R>(fmt, w, acts) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above); slices are
        // bounds-checked by the callers' shape validation (w holds exactly
        // acts[r].len() blocks).
        return unsafe { avx2::dot_q_rows::<R>(fmt, w, acts) };
    }
    scalar_dot_q_rows::<R>(fmt, w, acts)
}

/// Dots two quantized weight rows with R activation rows (bit-identical to
/// two `dot_q_rows` calls).
#[inline]
pub(crate) fn dot2_q_rows<const R: usize>(fmt: BlockFormat, w0: &[u8], w1: &[u8], acts: &[&[ActBlock]; R]) -> [[f32; R]; 2] {
    #[cfg(target_arch = "x86_64")]
    if has_vnni() {
        // SAFETY: as for dot_q_rows.
        return unsafe { avx2::vnni_dot2_q_rows::<R>(fmt, w0, w1, acts) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as for dot_q_rows.
        return unsafe { avx2::dot2_q_rows::<R>(fmt, w0, w1, acts) };
    }
    [scalar_dot_q_rows::<R>(fmt, w0, acts), scalar_dot_q_rows::<R>(fmt, w1, acts)]
}

/// An activation tile's block scales, block-major (`d[b][r]`, `s[b][r]`),
/// for tiles of R = 4 or 8 rows: one load brings a block's R scales, so a
/// kernel can form all its scale products with one vector multiply per
/// weight row.
pub(crate) struct TileScales<const R: usize = 4> {
    d: Vec<Lanes<R>>,
    s: Vec<Lanes<R>>,
}

/// R scales, aligned so that a kernel may read them as one vector.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Lanes<const R: usize>([f32; R]);

impl<const R: usize> TileScales<R> {
    pub(crate) fn new(acts: &[&[ActBlock]; R]) -> Self {
        let nb = acts[0].len();
        TileScales {
            d: (0..nb).map(|b| Lanes(std::array::from_fn(|r| acts[r][b].d))).collect(),
            s: (0..nb).map(|b| Lanes(std::array::from_fn(|r| acts[r][b].s))).collect(),
        }
    }
}

/// Whether `dot2_q_tile8` has a kernel of its own on this CPU. It needs
/// AVX-512VL's 32 vector registers for its 16 accumulators; elsewhere a
/// four-row tile is faster.
pub(crate) fn has_tile8() -> bool {
    has_vnni()
}

/// Two quantized weight rows by an eight-row activation tile: as
/// `dot2_q_tile4`, with each weight block decoded once for eight rows.
#[inline]
pub(crate) fn dot2_q_tile8(fmt: BlockFormat, w0: &[u8], w1: &[u8], acts: &[&[ActBlock]; 8], sc: &TileScales<8>) -> [[f32; 8]; 2] {
    assert!(sc.d.len() * fmt.block_bytes() == w0.len() && w0.len() == w1.len(), "tile scales cover the row");
    #[cfg(target_arch = "x86_64")]
    if has_vnni() {
        // SAFETY: as for dot_q_rows; the scales hold one entry per block.
        return unsafe { avx2::vnni_dot2_q_tile8(fmt, w0, w1, acts, sc) };
    }
    dot2_q_rows::<8>(fmt, w0, w1, acts)
}

/// Two quantized weight rows by a four-row activation tile whose scales are
/// `sc`: bit-identical to `dot2_q_rows::<4>`, with fewer instructions per
/// block (the verify-batch and prefill hot loop).
#[inline]
pub(crate) fn dot2_q_tile4(fmt: BlockFormat, w0: &[u8], w1: &[u8], acts: &[&[ActBlock]; 4], sc: &TileScales) -> [[f32; 4]; 2] {
    assert!(sc.d.len() * fmt.block_bytes() == w0.len() && w0.len() == w1.len(), "tile scales cover the row");
    #[cfg(target_arch = "x86_64")]
    if has_vnni() {
        // SAFETY: as for dot_q_rows; the scales hold one entry per block.
        return unsafe { avx2::vnni_dot2_q_tile4(fmt, w0, w1, acts, sc) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as for dot_q_rows; the scales hold one entry per block.
        return unsafe { avx2::dot2_q_tile4(fmt, w0, w1, acts, sc) };
    }
    dot2_q_rows::<4>(fmt, w0, w1, acts)
}

/// Dots one Q8_0 weight row with R f32 activation rows (weights converted in
/// registers, activations unrounded): per block, `d * Σ q·x`.
#[inline]
pub(crate) fn dot_q8_f32_rows<const R: usize>(w: &[u8], xs: &[&[f32]; R]) -> [f32; R] {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 present; xs[r] hold 32 floats per weight block.
        return unsafe { avx2::dot_q8_f32_rows::<R>(w, xs) };
    }
    let mut out = [0.0f32; R];
    for (b, blk) in w.chunks_exact(34).enumerate() {
        let d = read_f16(blk, 0);
        for r in 0..R {
            let x = &xs[r][b * QK..(b + 1) * QK];
            let t: f32 = blk[2..].iter().zip(x).map(|(&q, &v)| q as i8 as f32 * v).sum();
            out[r] += d * t;
        }
    }
    out
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

/// Sum of a vector's eight lanes, in a fixed order.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn hsum(x: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let mut r = _mm256_extractf128_ps::<1>(x);
    r = _mm_add_ps(r, _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// Quantizes 32 values to one activation block (same rounding as the
/// scalar path: half to even).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_block_avx2(x: &[f32], with_sum: bool, out: &mut ActBlock) {
    use std::arch::x86_64::*;
    let p = x.as_ptr();
    let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_andnot_ps(sign, v[0]);
    for vi in &v[1..] {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
    }
    let mut m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    let amax = _mm_cvtss_f32(m4);
    let d = amax / 127.0;
    // 127/amax, not 1/d: the two differ in the last bit for some amax, and
    // that bit decides roundings that land on a half (ggml's SIMD paths).
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let idv = _mm256_set1_ps(id);
    let mut q = [_mm256_setzero_si256(); 4];
    for i in 0..4 {
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(v[i], idv));
        q[i] = _mm256_cvtps_epi32(r);
    }
    let sum_v = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    let mut tmp = [0i32; 8];
    _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, sum_v);
    let sum: i32 = tmp.iter().sum();
    // Pack 4x8 i32 -> 32 i8, then undo the lane interleaving of the packs.
    let a = _mm256_packs_epi32(q[0], q[1]);
    let b = _mm256_packs_epi32(q[2], q[3]);
    let packed = _mm256_packs_epi16(a, b);
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let ordered = _mm256_permutevar8x32_epi32(packed, perm);
    _mm256_storeu_si256(out.qs.as_mut_ptr() as *mut __m256i, ordered);
    out.d = super::ggml_math::round_f16(d);
    out.s = if with_sum { super::ggml_math::round_f16(d * sum as f32) } else { 0.0 };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibbles_32(p: *const u8) -> __m256i {
        let tmp = _mm_loadu_si128(p as *const __m128i);
        let bytes = _mm256_insertf128_si256::<1>(_mm256_castsi128_si256(tmp), _mm_srli_epi16::<4>(tmp));
        _mm256_and_si256(_mm256_set1_epi8(0xF), bytes)
    }

    /// The 8-bit products of a block, unsigned `ax` times signed `sy`,
    /// summed in groups of four into eight i32 lanes, as floats. The sums
    /// are exact integers (no 16-bit step can saturate: |ax| ≤ 128 and
    /// |sy| ≤ 127), so both ways give identical bits.
    trait PairSum {
        unsafe fn sum(ax: __m256i, sy: __m256i) -> __m256;
    }
    /// AVX2: byte multiply-add to i16 pairs, then i16 multiply-add by 1.
    struct Madd;
    /// AVX512-VNNI: one `vpdpbusd`.
    struct Vnni;
    impl PairSum for Madd {
        #[inline(always)]
        unsafe fn sum(ax: __m256i, sy: __m256i) -> __m256 {
            let dot = _mm256_maddubs_epi16(ax, sy);
            _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot))
        }
    }
    impl PairSum for Vnni {
        #[inline(always)]
        unsafe fn sum(ax: __m256i, sy: __m256i) -> __m256 {
            _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy))
        }
    }

    pub(crate) use super::hsum;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_at(p: *const u8) -> f32 {
        let bits = (p as *const u16).read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// Weight-block decoding for one format: the block's scale(s) and its
    /// 32 values as bytes (unsigned nibbles for Q4_1, signed otherwise).
    trait Fmt {
        const BYTES: usize;
        const UNSIGNED: bool;
        unsafe fn scale(p: *const u8) -> (f32, f32);
        unsafe fn values(p: *const u8) -> __m256i;
    }
    struct Q40;
    struct Q41;
    struct Q80;
    impl Fmt for Q40 {
        const BYTES: usize = 18;
        const UNSIGNED: bool = false;
        #[inline(always)]
        unsafe fn scale(p: *const u8) -> (f32, f32) {
            (f16_at(p), 0.0)
        }
        #[inline(always)]
        unsafe fn values(p: *const u8) -> __m256i {
            _mm256_sub_epi8(nibbles_32(p.add(2)), _mm256_set1_epi8(8))
        }
    }
    impl Fmt for Q41 {
        const BYTES: usize = 20;
        const UNSIGNED: bool = true;
        #[inline(always)]
        unsafe fn scale(p: *const u8) -> (f32, f32) {
            (f16_at(p), f16_at(p.add(2)))
        }
        #[inline(always)]
        unsafe fn values(p: *const u8) -> __m256i {
            nibbles_32(p.add(4))
        }
    }
    impl Fmt for Q80 {
        const BYTES: usize = 34;
        const UNSIGNED: bool = false;
        #[inline(always)]
        unsafe fn scale(p: *const u8) -> (f32, f32) {
            (f16_at(p), 0.0)
        }
        #[inline(always)]
        unsafe fn values(p: *const u8) -> __m256i {
            _mm256_loadu_si256(p.add(2) as *const __m256i)
        }
    }

    /// One accumulator per row, summed in block order: the order ggml's AVX2
    /// kernels use. Activation rounding makes the model chaotic at the 1e-7
    /// level, so matching ggml's order keeps Aerie closest to llama.cpp.
    #[inline(always)]
    unsafe fn dot_fmt<F: Fmt, P: PairSum, const R: usize>(w: &[u8], acts: &[&[ActBlock]; R]) -> [f32; R] {
        let nb = w.len() / F::BYTES;
        let mut acc = [_mm256_setzero_ps(); R];
        let mut summs = [0.0f32; R];
        let wp = w.as_ptr();
        let aps: [*const ActBlock; R] = std::array::from_fn(|r| acts[r].as_ptr());
        for b in 0..nb {
            let blk = wp.add(b * F::BYTES);
            let (d, m) = F::scale(blk);
            let qx = F::values(blk);
            let ax = if F::UNSIGNED { qx } else { _mm256_sign_epi8(qx, qx) };
            for r in 0..R {
                let a = &*aps[r].add(b);
                let qy = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                let sy = if F::UNSIGNED { qy } else { _mm256_sign_epi8(qy, qx) };
                let xy = P::sum(ax, sy);
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), xy, acc[r]);
                if F::UNSIGNED {
                    summs[r] += m * a.s;
                }
            }
        }
        let mut out = [0.0f32; R];
        for r in 0..R {
            out[r] = hsum(acc[r]) + summs[r];
        }
        out
    }

    /// Two weight rows at once: each activation block is loaded once for
    /// both. Per (weight row, activation row) the arithmetic and its order
    /// are exactly those of `dot_fmt`, so results are bit-identical to it.
    #[inline(always)]
    unsafe fn dot2_fmt<F: Fmt, P: PairSum, const R: usize>(w0: &[u8], w1: &[u8], acts: &[&[ActBlock]; R]) -> [[f32; R]; 2] {
        let nb = w0.len() / F::BYTES;
        let mut acc = [[_mm256_setzero_ps(); R]; 2];
        let mut summs = [[0.0f32; R]; 2];
        let wp = [w0.as_ptr(), w1.as_ptr()];
        let aps: [*const ActBlock; R] = std::array::from_fn(|r| acts[r].as_ptr());
        for b in 0..nb {
            let blk = [wp[0].add(b * F::BYTES), wp[1].add(b * F::BYTES)];
            let (d0, m0) = F::scale(blk[0]);
            let (d1, m1) = F::scale(blk[1]);
            let qx = [F::values(blk[0]), F::values(blk[1])];
            let ax = if F::UNSIGNED { qx } else { [_mm256_sign_epi8(qx[0], qx[0]), _mm256_sign_epi8(qx[1], qx[1])] };
            for r in 0..R {
                let a = &*aps[r].add(b);
                let qy = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                let (sy0, sy1) = if F::UNSIGNED { (qy, qy) } else { (_mm256_sign_epi8(qy, qx[0]), _mm256_sign_epi8(qy, qx[1])) };
                let xy0 = P::sum(ax[0], sy0);
                let xy1 = P::sum(ax[1], sy1);
                acc[0][r] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * a.d), xy0, acc[0][r]);
                acc[1][r] = _mm256_fmadd_ps(_mm256_set1_ps(d1 * a.d), xy1, acc[1][r]);
                if F::UNSIGNED {
                    summs[0][r] += m0 * a.s;
                    summs[1][r] += m1 * a.s;
                }
            }
        }
        let mut out = [[0.0f32; R]; 2];
        for i in 0..2 {
            for r in 0..R {
                out[i][r] = hsum(acc[i][r]) + summs[i][r];
            }
        }
        out
    }

    /// `dot2_fmt` for a four-row tile with packed scales. The blocks go in
    /// segments: a first pass forms each block's eight `d_w·d_a` products
    /// with one vector multiply (and, for Q4_1, adds the eight `m_w·s_a`
    /// terms into one vector of partial sums) and stores them; the second
    /// pass broadcasts each product straight from memory into its FMA. A
    /// broadcast from memory is a load, not a shuffle, and storing in a
    /// separate loop keeps the compiler from turning it back into shuffles.
    /// `dot2_fmt` spends a scalar multiply and a broadcast per product, and
    /// spills. Every float operation per (weight row, activation row), and
    /// its order, is `dot_fmt`'s, so the bits are identical.
    #[inline(always)]
    unsafe fn dot2x4_fmt<F: Fmt, P: PairSum>(w0: &[u8], w1: &[u8], acts: &[&[ActBlock]; 4], sc: &TileScales) -> [[f32; 4]; 2] {
        const SEG: usize = 32;
        #[repr(align(32))]
        struct Lanes([[f32; 8]; SEG]);
        let nb = w0.len() / F::BYTES;
        let mut acc = [[_mm256_setzero_ps(); 4]; 2];
        let mut summs = _mm256_setzero_ps();
        // Uninitialized: zeroing it cost more than a short row's dots. Pass
        // two reads only the entries pass one of the same segment wrote.
        let mut prod = std::mem::MaybeUninit::<Lanes>::uninit();
        let pp = std::ptr::addr_of_mut!((*prod.as_mut_ptr()).0).cast::<[f32; 8]>();
        let wp = [w0.as_ptr(), w1.as_ptr()];
        let aps: [*const ActBlock; 4] = std::array::from_fn(|r| acts[r].as_ptr());
        // Each `Lanes<4>` entry is 32-byte aligned: its first 16 bytes read as one `__m128`.
        let (dp, sp) = (sc.d.as_ptr(), sc.s.as_ptr());
        for s0 in (0..nb).step_by(SEG) {
            let s1 = (s0 + SEG).min(nb);
            for b in s0..s1 {
                // Both rows' f16 scale words in one conversion: lanes hold
                // d0, m0, d1, m1 (the m lanes are quant bytes, unused, for
                // formats without a minimum).
                let word = |w: *const u8| (w.add(b * F::BYTES) as *const i32).read_unaligned();
                let dm = _mm256_castps128_ps256(_mm_cvtph_ps(_mm_setr_epi32(word(wp[0]), word(wp[1]), 0, 0)));
                // Lanes 0..4: weight row 0 with activation rows 0..4; 4..8: row 1.
                let dw = _mm256_permutevar8x32_ps(dm, _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2));
                _mm256_store_ps(pp.add(b - s0) as *mut f32, _mm256_mul_ps(dw, _mm256_broadcast_ps(&*(dp.add(b) as *const __m128))));
                if F::UNSIGNED {
                    let mw = _mm256_permutevar8x32_ps(dm, _mm256_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3));
                    summs = _mm256_add_ps(summs, _mm256_mul_ps(mw, _mm256_broadcast_ps(&*(sp.add(b) as *const __m128))));
                }
            }
            for b in s0..s1 {
                let qx = [F::values(wp[0].add(b * F::BYTES)), F::values(wp[1].add(b * F::BYTES))];
                let ax = if F::UNSIGNED { qx } else { [_mm256_sign_epi8(qx[0], qx[0]), _mm256_sign_epi8(qx[1], qx[1])] };
                let p = pp.add(b - s0) as *const f32;
                for r in 0..4 {
                    let qy = _mm256_loadu_si256((*aps[r].add(b)).qs.as_ptr() as *const __m256i);
                    let (sy0, sy1) = if F::UNSIGNED { (qy, qy) } else { (_mm256_sign_epi8(qy, qx[0]), _mm256_sign_epi8(qy, qx[1])) };
                    acc[0][r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*p.add(r)), P::sum(ax[0], sy0), acc[0][r]);
                    acc[1][r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*p.add(4 + r)), P::sum(ax[1], sy1), acc[1][r]);
                }
            }
        }
        let mut tail = [0.0f32; 8];
        _mm256_storeu_ps(tail.as_mut_ptr(), summs);
        let mut out = [[0.0f32; 4]; 2];
        for i in 0..2 {
            for r in 0..4 {
                out[i][r] = hsum(acc[i][r]) + tail[i * 4 + r];
            }
        }
        out
    }

    #[inline(always)]
    unsafe fn dot2x4_any<P: PairSum>(fmt: BlockFormat, w0: &[u8], w1: &[u8], acts: &[&[ActBlock]; 4], sc: &TileScales) -> [[f32; 4]; 2] {
        match fmt {
            BlockFormat::Q4_0 => dot2x4_fmt::<Q40, P>(w0, w1, acts, sc),
            BlockFormat::Q4_1 => dot2x4_fmt::<Q41, P>(w0, w1, acts, sc),
            BlockFormat::Q8_0 => dot2x4_fmt::<Q80, P>(w0, w1, acts, sc),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot2_q_tile4(fmt: BlockFormat, w0: &[u8], w1: &[u8], acts: &[&[ActBlock]; 4], sc: &TileScales) -> [[f32; 4]; 2] {
        dot2x4_any::<Madd>(fmt, w0, w1, acts, sc)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub(super) unsafe fn vnni_dot2_q_tile4(fmt: BlockFormat, w0: &[u8], w1: &[u8], acts: &[&[ActBlock]; 4], sc: &TileScales) -> [[f32; 4]; 2] {
        dot2x4_any::<Vnni>(fmt, w0, w1, acts, sc)
    }

    /// `dot2x4_fmt` for an eight-row tile: the same operations per (weight
    /// row, activation row) pair in the same order, so the same bits. Each
    /// weight block is decoded once for eight rows instead of four, and a
    /// block's scale products take two vector multiplies for sixteen pairs.
    /// Sixteen accumulators: only for targets with 32 vector registers.
    #[inline(always)]
    unsafe fn dot2x8_fmt<F: Fmt, P: PairSum>(w0: &[u8], w1: &[u8], acts: &[&[ActBlock]; 8], sc: &TileScales<8>) -> [[f32; 8]; 2] {
        const SEG: usize = 32;
        #[repr(align(32))]
        struct Lanes([[f32; 16]; SEG]);
        let nb = w0.len() / F::BYTES;
        let mut acc = [[_mm256_setzero_ps(); 8]; 2];
        let mut summs = [_mm256_setzero_ps(); 2];
        let mut prod = std::mem::MaybeUninit::<Lanes>::uninit();
        let pp = std::ptr::addr_of_mut!((*prod.as_mut_ptr()).0).cast::<[f32; 16]>();
        let wp = [w0.as_ptr(), w1.as_ptr()];
        let aps: [*const ActBlock; 8] = std::array::from_fn(|r| acts[r].as_ptr());
        for s0 in (0..nb).step_by(SEG) {
            let s1 = (s0 + SEG).min(nb);
            for b in s0..s1 {
                // Lanes d0, m0, d1, m1, as in `dot2x4_fmt`.
                let word = |w: *const u8| (w.add(b * F::BYTES) as *const i32).read_unaligned();
                let dm = _mm256_castps128_ps256(_mm_cvtph_ps(_mm_setr_epi32(word(wp[0]), word(wp[1]), 0, 0)));
                let lane = |i: i32| _mm256_permutevar8x32_ps(dm, _mm256_set1_epi32(i));
                // `Lanes<8>` is 32-byte aligned: an aligned load.
                let ad = _mm256_load_ps(sc.d[b].0.as_ptr());
                let p = pp.add(b - s0) as *mut f32;
                _mm256_store_ps(p, _mm256_mul_ps(lane(0), ad));
                _mm256_store_ps(p.add(8), _mm256_mul_ps(lane(2), ad));
                if F::UNSIGNED {
                    let asum = _mm256_load_ps(sc.s[b].0.as_ptr());
                    summs[0] = _mm256_add_ps(summs[0], _mm256_mul_ps(lane(1), asum));
                    summs[1] = _mm256_add_ps(summs[1], _mm256_mul_ps(lane(3), asum));
                }
            }
            for b in s0..s1 {
                let qx = [F::values(wp[0].add(b * F::BYTES)), F::values(wp[1].add(b * F::BYTES))];
                let ax = if F::UNSIGNED { qx } else { [_mm256_sign_epi8(qx[0], qx[0]), _mm256_sign_epi8(qx[1], qx[1])] };
                let p = pp.add(b - s0) as *const f32;
                for r in 0..8 {
                    let qy = _mm256_loadu_si256((*aps[r].add(b)).qs.as_ptr() as *const __m256i);
                    let (sy0, sy1) = if F::UNSIGNED { (qy, qy) } else { (_mm256_sign_epi8(qy, qx[0]), _mm256_sign_epi8(qy, qx[1])) };
                    acc[0][r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*p.add(r)), P::sum(ax[0], sy0), acc[0][r]);
                    acc[1][r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*p.add(8 + r)), P::sum(ax[1], sy1), acc[1][r]);
                }
            }
        }
        let mut tail = [[0.0f32; 8]; 2];
        _mm256_storeu_ps(tail[0].as_mut_ptr(), summs[0]);
        _mm256_storeu_ps(tail[1].as_mut_ptr(), summs[1]);
        let mut out = [[0.0f32; 8]; 2];
        for i in 0..2 {
            for r in 0..8 {
                out[i][r] = hsum(acc[i][r]) + tail[i][r];
            }
        }
        out
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub(super) unsafe fn vnni_dot2_q_tile8(fmt: BlockFormat, w0: &[u8], w1: &[u8], acts: &[&[ActBlock]; 8], sc: &TileScales<8>) -> [[f32; 8]; 2] {
        match fmt {
            BlockFormat::Q4_0 => dot2x8_fmt::<Q40, Vnni>(w0, w1, acts, sc),
            BlockFormat::Q4_1 => dot2x8_fmt::<Q41, Vnni>(w0, w1, acts, sc),
            BlockFormat::Q8_0 => dot2x8_fmt::<Q80, Vnni>(w0, w1, acts, sc),
        }
    }

    /// Picks the format's kernel, with `P` for the block dot.
    #[inline(always)]
    unsafe fn dot2_any<P: PairSum, const R: usize>(fmt: BlockFormat, w0: &[u8], w1: &[u8], acts: &[&[ActBlock]; R]) -> [[f32; R]; 2] {
        match fmt {
            BlockFormat::Q4_0 => dot2_fmt::<Q40, P, R>(w0, w1, acts),
            BlockFormat::Q4_1 => dot2_fmt::<Q41, P, R>(w0, w1, acts),
            BlockFormat::Q8_0 => dot2_fmt::<Q80, P, R>(w0, w1, acts),
        }
    }

    #[inline(always)]
    unsafe fn dot_any<P: PairSum, const R: usize>(fmt: BlockFormat, w: &[u8], acts: &[&[ActBlock]; R]) -> [f32; R] {
        match fmt {
            BlockFormat::Q4_0 => dot_fmt::<Q40, P, R>(w, acts),
            BlockFormat::Q4_1 => dot_fmt::<Q41, P, R>(w, acts),
            BlockFormat::Q8_0 => dot_fmt::<Q80, P, R>(w, acts),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot2_q_rows<const R: usize>(fmt: BlockFormat, w0: &[u8], w1: &[u8], acts: &[&[ActBlock]; R]) -> [[f32; R]; 2] {
        dot2_any::<Madd, R>(fmt, w0, w1, acts)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q_rows<const R: usize>(fmt: BlockFormat, w: &[u8], acts: &[&[ActBlock]; R]) -> [f32; R] {
        dot_any::<Madd, R>(fmt, w, acts)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub(super) unsafe fn vnni_dot2_q_rows<const R: usize>(fmt: BlockFormat, w0: &[u8], w1: &[u8], acts: &[&[ActBlock]; R]) -> [[f32; R]; 2] {
        dot2_any::<Vnni, R>(fmt, w0, w1, acts)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub(super) unsafe fn vnni_dot_q_rows<const R: usize>(fmt: BlockFormat, w: &[u8], acts: &[&[ActBlock]; R]) -> [f32; R] {
        dot_any::<Vnni, R>(fmt, w, acts)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q8_f32_rows<const R: usize>(w: &[u8], xs: &[&[f32]; R]) -> [f32; R] {
        let nb = w.len() / 34;
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let blk = w.as_ptr().add(b * 34);
            let d = _mm256_set1_ps(f16_at(blk));
            let q = blk.add(2);
            let wv: [__m256; 4] = std::array::from_fn(|i| {
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(q.add(i * 8) as *const __m128i)))
            });
            for r in 0..R {
                let x = xs[r].as_ptr().add(b * 32);
                let mut t = _mm256_mul_ps(wv[0], _mm256_loadu_ps(x));
                t = _mm256_fmadd_ps(wv[1], _mm256_loadu_ps(x.add(8)), t);
                t = _mm256_fmadd_ps(wv[2], _mm256_loadu_ps(x.add(16)), t);
                t = _mm256_fmadd_ps(wv[3], _mm256_loadu_ps(x.add(24)), t);
                acc[r] = _mm256_fmadd_ps(d, t, acc[r]);
            }
        }
        let mut out = [0.0f32; R];
        for r in 0..R {
            out[r] = hsum(acc[r]);
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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Random blocks of `fmt` with sane f16 scales and every byte pattern
    /// in the values, extremes included (Q8_0 -128, activations ±127).
    fn random_row(fmt: BlockFormat, blocks: usize, seed: &mut u64) -> Vec<u8> {
        let mut next = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        };
        let mut out = Vec::new();
        for b in 0..blocks {
            let scale = half::f16::from_f32(0.01 + (next() % 1000) as f32 * 1e-4).to_bits().to_le_bytes();
            out.extend_from_slice(&scale);
            if fmt == BlockFormat::Q4_1 {
                out.extend_from_slice(&half::f16::from_f32(-0.05).to_bits().to_le_bytes());
            }
            let n = fmt.block_bytes() - out.len() % fmt.block_bytes();
            for i in 0..n {
                // The first block holds the extreme values.
                out.push(if b == 0 { [0x80, 0x7f, 0xff, 0x00][i % 4] } else { next() as u8 });
            }
        }
        out
    }

    /// Random activation rows (`rows` × `blocks`), the first block holding ±127.
    fn random_acts(rows: usize, blocks: usize, seed: &mut u64) -> Vec<Vec<ActBlock>> {
        (0..rows)
            .map(|r| {
                let raw = random_row(BlockFormat::Q8_0, blocks, seed);
                raw.chunks(34)
                    .enumerate()
                    .map(|(b, c)| {
                        let mut qs = [0i8; QK];
                        for (q, &v) in qs.iter_mut().zip(&c[2..]) {
                            // Activations are rounded to [-127, 127].
                            *q = if r == 0 && b == 0 { 127 * (1 - 2 * (v & 1) as i8) } else { (v as i8).max(-127) };
                        }
                        let d = 0.003 * (b + 1) as f32 + 1e-4 * r as f32;
                        ActBlock { d, s: 0.1 * r as f32 - 0.05 + 0.01 * b as f32, qs }
                    })
                    .collect()
            })
            .collect()
    }

    /// Calls `check` with random tiles of R activation rows (1, 18 and 48
    /// blocks) and random pairs of weight rows of every format, with the
    /// tile's packed scales.
    #[allow(clippy::type_complexity)]
    fn for_each_tile_case<const R: usize>(mut seed: u64, mut check: impl FnMut(BlockFormat, usize, &[u8], &[u8], &[&[ActBlock]; R], &TileScales<R>)) {
        for blocks in [1, 18, 48] {
            let acts = random_acts(R, blocks, &mut seed);
            let tile: [&[ActBlock]; R] = std::array::from_fn(|r| acts[r].as_slice());
            let sc = TileScales::new(&tile);
            for fmt in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q8_0] {
                let (w0, w1) = (random_row(fmt, blocks, &mut seed), random_row(fmt, blocks, &mut seed));
                check(fmt, blocks, &w0, &w1, &tile, &sc);
            }
        }
    }

    /// The packed-scale tile kernel gives the same bits as the row kernel
    /// it replaces, for every format (it must: a row's logits may not
    /// depend on whether it was scored in a tile).
    #[test]
    fn tile4_kernel_is_bit_identical_to_row_kernel() {
        if !has_avx2() {
            eprintln!("no AVX2 on this CPU: the tile kernel falls back to the row kernel");
            return;
        }
        for_each_tile_case::<4>(0x2545_f491_4f6c_dd1d, |fmt, blocks, w0, w1, a4, sc| {
            // SAFETY: AVX2, FMA and F16C checked by has_avx2; every row
            // holds `blocks` blocks and the scales one entry per block.
            let (t, r) = unsafe { (avx2::dot2_q_tile4(fmt, w0, w1, a4, sc), avx2::dot2_q_rows::<4>(fmt, w0, w1, a4)) };
            assert_eq!(t.map(|x| x.map(f32::to_bits)), r.map(|x| x.map(f32::to_bits)), "{fmt:?}, {blocks} blocks");
            assert!(r.iter().flatten().all(|v| v.is_finite() && *v != 0.0), "{fmt:?}: degenerate test data");
            if has_vnni() {
                // SAFETY: as above, plus VNNI checked by has_vnni.
                let v = unsafe { avx2::vnni_dot2_q_tile4(fmt, w0, w1, a4, sc) };
                assert_eq!(v.map(|x| x.map(f32::to_bits)), r.map(|x| x.map(f32::to_bits)), "{fmt:?} VNNI");
            }
        });
    }

    /// The eight-row tile kernel gives the bits of the row kernel on each
    /// half of the tile. Skipped (and said so) where it has no kernel.
    #[test]
    fn tile8_kernel_is_bit_identical_to_row_kernel() {
        if !has_tile8() {
            eprintln!("no AVX512-VNNI on this CPU (or AERIE_NO_VNNI set): no eight-row tile kernel to test");
            return;
        }
        for_each_tile_case::<8>(0x6a09_e667_f3bc_c908, |fmt, blocks, w0, w1, a8, sc| {
            let t = dot2_q_tile8(fmt, w0, w1, a8, sc);
            for half in 0..2 {
                let a4: [&[ActBlock]; 4] = std::array::from_fn(|r| a8[4 * half + r]);
                // SAFETY: AVX2, FMA and F16C are implied by VNNI (has_vnni
                // checks them); every row holds `blocks` blocks.
                let r = unsafe { avx2::dot2_q_rows::<4>(fmt, w0, w1, &a4) };
                for i in 0..2 {
                    let got: Vec<u32> = t[i][4 * half..4 * half + 4].iter().map(|x| x.to_bits()).collect();
                    let want: Vec<u32> = r[i].iter().map(|x| x.to_bits()).collect();
                    assert_eq!(got, want, "{fmt:?}, {blocks} blocks, weight row {i}, rows {}..{}", 4 * half, 4 * half + 4);
                }
                assert!(r.iter().flatten().all(|v| v.is_finite() && *v != 0.0), "{fmt:?}: degenerate test data");
            }
        });
    }

    /// The VNNI block dot gives the same bits as the AVX2 one, for every
    /// format, paired (4 activation rows) and single (1 row). Skipped (and
    /// said so) on CPUs without VNNI.
    #[test]
    fn vnni_and_avx2_dots_are_bit_identical() {
        if !has_vnni() {
            eprintln!("no AVX512-VNNI on this CPU (or AERIE_NO_VNNI set): nothing to compare");
            return;
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let blocks = 18;
        let acts = random_acts(4, blocks, &mut seed);
        for fmt in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q8_0] {
            let (w0, w1) = (random_row(fmt, blocks, &mut seed), random_row(fmt, blocks, &mut seed));
            let a4: [&[ActBlock]; 4] = std::array::from_fn(|r| acts[r].as_slice());
            let a1: [&[ActBlock]; 1] = [acts[0].as_slice()];
            // SAFETY: AVX2, FMA, F16C and VNNI checked by has_vnni; every
            // row holds `blocks` blocks.
            unsafe {
                let (v, a) = (avx2::vnni_dot2_q_rows::<4>(fmt, &w0, &w1, &a4), avx2::dot2_q_rows::<4>(fmt, &w0, &w1, &a4));
                assert_eq!(v.map(|r| r.map(f32::to_bits)), a.map(|r| r.map(f32::to_bits)), "{fmt:?} paired");
                let (v, a) = (avx2::vnni_dot_q_rows::<1>(fmt, &w1, &a1), avx2::dot_q_rows::<1>(fmt, &w1, &a1));
                assert_eq!(v[0].to_bits(), a[0].to_bits(), "{fmt:?} single");
                // And both equal the scalar reference to float rounding.
                let s = scalar_dot_q_rows::<4>(fmt, &w0, &a4);
                let v = avx2::vnni_dot_q_rows::<4>(fmt, &w0, &a4);
                for r in 0..4 {
                    assert!((v[r] - s[r]).abs() <= 1e-3 * (1.0 + s[r].abs()), "{fmt:?} row {r}: {} vs {}", v[r], s[r]);
                }
            }
        }
    }
}
