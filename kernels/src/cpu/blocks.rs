//! ggml block formats (32 values per block) and activation quantization.
//!
//! Weights: Q4_0 (`d`, 16 nibble bytes), Q4_1 (`d`, `m`, 16 nibble bytes) and
//! Q8_0 (`d`, 32 signed bytes), scales stored as f16. Nibble order is ggml's:
//! byte j holds value j in its low half and value j+16 in its high half.
//!
//! Activations are quantized per row to 8 bits before a quantized matmul, the
//! way ggml does it (Q8_0 for Q4_0/Q8_0 weights, Q8_1 with a block sum for
//! Q4_1 weights). Scales are rounded through f16 exactly as ggml stores them,
//! which keeps Aerie's logits within float noise of llama.cpp's.

use half::f16;
use super::ggml_math::round_f16;

/// Values per quantization block.
pub const QK: usize = 32;

/// The storage formats a [`crate::cpu::Matrix`] can hold natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl BlockFormat {
    /// Bytes one block of 32 values occupies.
    pub const fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
            BlockFormat::Q8_0 => 34,
        }
    }

    /// Whether the activation side needs the Q8_1 block sum.
    pub const fn needs_act_sum(self) -> bool {
        matches!(self, BlockFormat::Q4_1)
    }
}

/// One quantized block of an activation row: scale, scaled sum (Q8_1 only;
/// zero otherwise) and 32 signed values.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(8))]
pub struct ActBlock {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK],
}

impl Default for ActBlock {
    fn default() -> Self {
        ActBlock { d: 0.0, s: 0.0, qs: [0; QK] }
    }
}

#[inline]
pub(crate) fn read_f16(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Quantizes one row (length a multiple of 32) into `out`, one block per 32
/// values. `with_sum` selects Q8_1 (block sum kept) over Q8_0.
pub fn quantize_row(x: &[f32], with_sum: bool, out: &mut [ActBlock]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        for (chunk, blk) in x.chunks_exact(QK).zip(out.iter_mut()) {
            // SAFETY: AVX2 present; chunk holds exactly 32 values.
            unsafe { super::simd::quantize_block_avx2(chunk, with_sum, blk) };
        }
        return;
    }
    for (chunk, blk) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = chunk.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        // 127/amax as in ggml's activation quantizers (see simd.rs).
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in blk.qs.iter_mut().zip(chunk) {
            // Round half to even, as ggml's SIMD path does.
            let r = (v * id).round_ties_even() as i32;
            *q = r as i8;
            sum += r;
        }
        blk.d = round_f16(d);
        blk.s = if with_sum { round_f16(d * sum as f32) } else { 0.0 };
    }
}

/// Dequantizes row `row` of a block-quantized matrix with `cols` columns.
pub fn dequantize_row(fmt: BlockFormat, data: &[u8], cols: usize, row: usize, out: &mut [f32]) {
    let nb = cols / QK;
    let bb = fmt.block_bytes();
    let base = row * nb * bb;
    for b in 0..nb {
        let blk = &data[base + b * bb..base + (b + 1) * bb];
        let o = &mut out[b * QK..(b + 1) * QK];
        match fmt {
            BlockFormat::Q4_0 => {
                let d = read_f16(blk, 0);
                for j in 0..16 {
                    let q = blk[2 + j];
                    o[j] = ((q & 0xF) as i32 - 8) as f32 * d;
                    o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
            BlockFormat::Q4_1 => {
                let d = read_f16(blk, 0);
                let m = read_f16(blk, 2);
                for j in 0..16 {
                    let q = blk[4 + j];
                    o[j] = (q & 0xF) as f32 * d + m;
                    o[j + 16] = (q >> 4) as f32 * d + m;
                }
            }
            BlockFormat::Q8_0 => {
                let d = read_f16(blk, 0);
                for j in 0..QK {
                    o[j] = blk[2 + j] as i8 as f32 * d;
                }
            }
        }
    }
}

/// Quantizes an f32 matrix into a block format (used by tests and by tools
/// that write GGUF files; the fast path reads GGUF blocks as they are).
pub fn quantize_matrix(fmt: BlockFormat, x: &[f32], cols: usize) -> Vec<u8> {
    assert_eq!(cols % QK, 0);
    let mut out = Vec::with_capacity(x.len() / QK * fmt.block_bytes());
    for chunk in x.chunks_exact(QK) {
        match fmt {
            BlockFormat::Q8_0 => {
                let amax = chunk.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
                out.extend(chunk.iter().map(|&v| (v * id).round() as i8 as u8));
            }
            BlockFormat::Q4_0 => {
                let (mut amax, mut maxv) = (0.0f32, 0.0f32);
                for &v in chunk {
                    if v.abs() > amax {
                        amax = v.abs();
                        maxv = v;
                    }
                }
                let d = maxv / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
                for j in 0..16 {
                    let a = ((chunk[j] * id + 8.5) as i32).min(15) as u8;
                    let b = ((chunk[j + 16] * id + 8.5) as i32).min(15) as u8;
                    out.push(a | (b << 4));
                }
            }
            BlockFormat::Q4_1 => {
                let mn = chunk.iter().cloned().fold(f32::INFINITY, f32::min);
                let mx = chunk.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let d = (mx - mn) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
                out.extend_from_slice(&f16::from_f32(mn).to_bits().to_le_bytes());
                for j in 0..16 {
                    let a = (((chunk[j] - mn) * id + 0.5) as i32).min(15) as u8;
                    let b = (((chunk[j + 16] - mn) * id + 0.5) as i32).min(15) as u8;
                    out.push(a | (b << 4));
                }
            }
        }
    }
    out
}
