//! `Y = X · Wᵀ` for a weight matrix `W` (rows = output features) held either
//! as ggml quantized blocks or as f32.
//!
//! Strategy: the output features are split into chunks, one pool task each.
//! Inside a chunk, the weight rows go in blocks of about `L1_WEIGHT_BYTES`,
//! and every activation tile passes over a block before the next is read,
//! so a verify batch of k rows reads the weights from memory once, not k
//! times. Activation rows are taken eight at a time where the CPU has the
//! eight-row kernel (AVX512-VNNI, whose 32 vector registers hold its 16
//! accumulators), then four at a time; each pair of weight rows is decoded
//! once per tile and dotted with every row of it. Parameters: `TILE_ROWS` = 4
//! (8 with VNNI) activation rows per tile; `L1_WEIGHT_BYTES` = 16 KiB; chunks
//! of at least `MIN_CHUNK` output features, about four per thread.

use super::blocks::{dequantize_row, quantize_row, ActBlock, BlockFormat, QK};
use super::simd::{dot2_q_rows, dot2_q_tile4, dot2_q_tile8, dot_f32_rows, dot_q8_f32_rows, dot_q_rows, has_tile8, TileScales};
use super::pool;

const TILE_ROWS: usize = 4;
const MIN_CHUNK: usize = 32;
/// Weight bytes a chunk hands to its tiles at a time: half of a 32 KiB L1
/// data cache, leaving room for the activation tiles.
const L1_WEIGHT_BYTES: usize = 16 * 1024;

/// Storage of a weight matrix.
#[derive(Debug, Clone)]
pub enum WeightData {
    /// ggml blocks, row-major, `cols / 32` blocks per row.
    Quant { fmt: BlockFormat, bytes: Vec<u8> },
    /// Plain row-major f32.
    F32(Vec<f32>),
}

/// A shape or size problem found when building a [`Matrix`].
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("matrix has {cols} columns, not a multiple of the 32-value block size")]
    Unaligned { cols: usize },
    #[error("matrix data has {got} bytes/elements, expected {want} for {rows}x{cols}")]
    Size { got: usize, want: usize, rows: usize, cols: usize },
}

/// A weight matrix of `rows` output features by `cols` input features.
#[derive(Debug, Clone)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: WeightData,
}

/// Output-feature chunk size and count for `n` features.
fn chunking(n: usize) -> (usize, usize) {
    let chunk = (n / (pool::threads() * 4)).max(MIN_CHUNK).min(n);
    (chunk, n.div_ceil(chunk))
}

/// Runs an `[f32; R]`-returning row kernel for a tile of `width` (1..=4)
/// activation rows starting at `r0`, writing the results into `res`.
macro_rules! tile_width {
    ($width:expr, $res:expr, $rows:expr, $r0:expr, $dot:ident($w:expr)) => {
        match $width {
            4 => *$res = $dot::<4>($w, &std::array::from_fn(|t| $rows[$r0 + t])),
            3 => $res[..3].copy_from_slice(&$dot::<3>($w, &std::array::from_fn(|t| $rows[$r0 + t]))),
            2 => $res[..2].copy_from_slice(&$dot::<2>($w, &std::array::from_fn(|t| $rows[$r0 + t]))),
            _ => $res[0] = $dot::<1>($w, &[$rows[$r0]])[0],
        }
    };
}

struct SyncPtr(*mut f32);
// SAFETY: tasks write disjoint (row, column) elements of the output.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl Matrix {
    pub fn quant(fmt: BlockFormat, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<Self, MatrixError> {
        if cols % QK != 0 {
            return Err(MatrixError::Unaligned { cols });
        }
        let want = rows * cols / QK * fmt.block_bytes();
        if bytes.len() != want {
            return Err(MatrixError::Size { got: bytes.len(), want, rows, cols });
        }
        Ok(Matrix { rows, cols, data: WeightData::Quant { fmt, bytes } })
    }

    pub fn f32(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, MatrixError> {
        if data.len() != rows * cols {
            return Err(MatrixError::Size { got: data.len(), want: rows * cols, rows, cols });
        }
        Ok(Matrix { rows, cols, data: WeightData::F32(data) })
    }

    /// Stacks matrices with the same columns and storage format into one
    /// (rows concatenated), so one call computes all their outputs. Returns
    /// the parts unchanged when they cannot be stacked.
    pub fn concat_rows(parts: Vec<Matrix>) -> Result<Matrix, Vec<Matrix>> {
        let same = parts.windows(2).all(|w| {
            w[0].cols == w[1].cols
                && match (&w[0].data, &w[1].data) {
                    (WeightData::Quant { fmt: a, .. }, WeightData::Quant { fmt: b, .. }) => a == b,
                    (WeightData::F32(_), WeightData::F32(_)) => true,
                    _ => false,
                }
        });
        if parts.is_empty() || !same {
            return Err(parts);
        }
        let cols = parts[0].cols;
        let rows = parts.iter().map(|m| m.rows).sum();
        let data = match &parts[0].data {
            WeightData::Quant { fmt, .. } => {
                let fmt = *fmt;
                let mut bytes = Vec::new();
                for p in parts {
                    if let WeightData::Quant { bytes: b, .. } = p.data {
                        bytes.extend_from_slice(&b);
                    }
                }
                WeightData::Quant { fmt, bytes }
            }
            WeightData::F32(_) => {
                let mut v = Vec::new();
                for p in parts {
                    if let WeightData::F32(b) = p.data {
                        v.extend_from_slice(&b);
                    }
                }
                WeightData::F32(v)
            }
        };
        Ok(Matrix { rows, cols, data })
    }

    /// Output features `rows` (a tensor-parallel shard of a column-parallel
    /// projection), in the same storage.
    pub fn slice_rows(&self, rows: std::ops::Range<usize>) -> Matrix {
        let data = match &self.data {
            WeightData::Quant { fmt, bytes } => {
                let rb = self.cols / QK * fmt.block_bytes();
                WeightData::Quant { fmt: *fmt, bytes: bytes[rows.start * rb..rows.end * rb].to_vec() }
            }
            WeightData::F32(v) => WeightData::F32(v[rows.start * self.cols..rows.end * self.cols].to_vec()),
        };
        Matrix { rows: rows.len(), cols: self.cols, data }
    }

    /// Input features `cols` (a shard of a row-parallel projection), in the
    /// same storage. Block-stored matrices slice whole blocks: `cols` must
    /// start and end on a multiple of 32.
    pub fn slice_cols(&self, cols: std::ops::Range<usize>) -> Result<Matrix, MatrixError> {
        let data = match &self.data {
            WeightData::Quant { fmt, bytes } => {
                if cols.start % QK != 0 || cols.end % QK != 0 {
                    return Err(MatrixError::Unaligned { cols: cols.start });
                }
                let (bb, nb) = (fmt.block_bytes(), self.cols / QK);
                let (b0, b1) = (cols.start / QK, cols.end / QK);
                WeightData::Quant { fmt: *fmt, bytes: bytes.chunks(nb * bb).flat_map(|row| &row[b0 * bb..b1 * bb]).copied().collect() }
            }
            WeightData::F32(v) => WeightData::F32(v.chunks(self.cols).flat_map(|row| &row[cols.clone()]).copied().collect()),
        };
        Ok(Matrix { rows: self.rows, cols: cols.len(), data })
    }

    /// The same matrix stored as `fmt` blocks. Quantized matrices, and f32
    /// ones whose width is not a multiple of 32, come back unchanged.
    pub fn quantized(self, fmt: BlockFormat) -> Matrix {
        match &self.data {
            WeightData::F32(v) if self.cols % QK == 0 => {
                let bytes = crate::cpu::blocks::quantize_matrix(fmt, v, self.cols);
                Matrix { rows: self.rows, cols: self.cols, data: WeightData::Quant { fmt, bytes } }
            }
            _ => self,
        }
    }

    /// Bytes of weight storage.
    pub fn storage_bytes(&self) -> usize {
        match &self.data {
            WeightData::Quant { bytes, .. } => bytes.len(),
            WeightData::F32(v) => v.len() * 4,
        }
    }

    /// Returns an f32 copy (dequantizing if needed).
    pub fn to_f32(&self) -> Matrix {
        let mut out = vec![0.0f32; self.rows * self.cols];
        for r in 0..self.rows {
            self.row_f32(r, &mut out[r * self.cols..(r + 1) * self.cols]);
        }
        Matrix { rows: self.rows, cols: self.cols, data: WeightData::F32(out) }
    }

    /// All weights as row-major f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self.to_f32().data {
            WeightData::F32(v) => v,
            WeightData::Quant { .. } => unreachable!("to_f32 dequantizes"),
        }
    }

    /// Writes row `r` as f32 into `out` (an embedding lookup).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        match &self.data {
            WeightData::Quant { fmt, bytes } => dequantize_row(*fmt, bytes, self.cols, r, out),
            WeightData::F32(v) => out.copy_from_slice(&v[r * self.cols..(r + 1) * self.cols]),
        }
    }

    /// Like [`Matrix::matmul`] but with f32 activations: quantized weight rows
    /// are dequantized on the fly (one row at a time, in registers and L1)
    /// instead of rounding the activations to 8 bits. Slower when compute
    /// bound, and free when memory bound (decode); the draft heads' hot
    /// lm_head uses it. (The target's output head rounds its activations,
    /// as llama.cpp does, so that its logits match llama.cpp's.)
    pub fn matmul_f32_act(&self, x: &[f32], m: usize, out: &mut [f32]) {
        let WeightData::Quant { fmt, bytes } = &self.data else {
            return self.matmul(x, m, out);
        };
        assert_eq!(x.len(), m * self.cols, "activation shape");
        let n = self.rows;
        assert_eq!(out.len(), m * n, "output shape");
        if m == 0 || n == 0 {
            return;
        }
        let k = self.cols;
        let (chunk, nchunks) = chunking(n);
        let optr = SyncPtr(out.as_mut_ptr());
        let rows: Vec<&[f32]> = x.chunks(k).collect();
        pool::run(nchunks, &|c| {
            let (c0, c1) = (c * chunk, ((c + 1) * chunk).min(n));
            let mut w = vec![0.0f32; k];
            let mut j_cached = usize::MAX;
            let rb = k / QK * fmt.block_bytes();
            tile_loop(m, c0, c1, n, &optr, |r0, j, width, res: &mut [f32; TILE_ROWS]| {
                if *fmt == BlockFormat::Q8_0 {
                    tile_width!(width, res, rows, r0, dot_q8_f32_rows(&bytes[j * rb..(j + 1) * rb]));
                    return;
                }
                // Other formats: dequantize the weight row once per tile pass.
                if j != j_cached {
                    dequantize_row(*fmt, bytes, k, j, &mut w);
                    j_cached = j;
                }
                tile_width!(width, res, rows, r0, dot_f32_rows(&w));
            });
        });
    }

    /// `out[m × rows] = x[m × cols] · selfᵀ`.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_rows(x, m, out, 0, self.rows);
    }

    /// Like [`Matrix::matmul`] but only for output features `lo..hi`;
    /// `out` is `m × (hi - lo)`.
    pub fn matmul_rows(&self, x: &[f32], m: usize, out: &mut [f32], lo: usize, hi: usize) {
        assert_eq!(x.len(), m * self.cols, "activation shape");
        let n = hi - lo;
        assert_eq!(out.len(), m * n, "output shape");
        if m == 0 || n == 0 {
            return;
        }
        let (chunk, nchunks) = chunking(n);
        let optr = SyncPtr(out.as_mut_ptr());
        match &self.data {
            WeightData::Quant { fmt, bytes } => {
                let nb = self.cols / QK;
                let mut acts = vec![ActBlock::default(); m * nb];
                let with_sum = fmt.needs_act_sum();
                if m >= 16 {
                    let cols = self.cols;
                    pool::for_each_chunk_mut(&mut acts, nb, &|r, a| quantize_row(&x[r * cols..(r + 1) * cols], with_sum, a));
                } else {
                    for (a, xr) in acts.chunks_mut(nb).zip(x.chunks(self.cols)) {
                        quantize_row(xr, with_sum, a);
                    }
                }
                let rb = nb * fmt.block_bytes();
                let rows: Vec<&[ActBlock]> = acts.chunks(nb).collect();
                let scales = TileSet::new(&rows);
                pool::run(nchunks, &|c| {
                    let (c0, c1) = (c * chunk, ((c + 1) * chunk).min(n));
                    let wrow = |j: usize| &bytes[(lo + j) * rb..(lo + j + 1) * rb];
                    quant_tiles(*fmt, &rows, &scales, m, c0, c1, n, &optr, wrow);
                });
            }
            WeightData::F32(wv) => {
                let k = self.cols;
                let rows: Vec<&[f32]> = x.chunks(k).collect();
                pool::run(nchunks, &|c| {
                    let (c0, c1) = (c * chunk, ((c + 1) * chunk).min(n));
                    tile_loop(m, c0, c1, n, &optr, |r0, j, width, res: &mut [f32; TILE_ROWS]| {
                        tile_width!(width, res, rows, r0, dot_f32_rows(&wv[(lo + j) * k..(lo + j + 1) * k]));
                    });
                });
            }
        }
    }
}

/// The packed scales of an activation batch's full tiles: eight-row tiles
/// first where the CPU has a kernel for them, then four-row tiles.
struct TileSet {
    eight: Vec<TileScales<8>>,
    four: Vec<TileScales<4>>,
    /// Rows covered by the eight-row tiles.
    eight_rows: usize,
}

impl TileSet {
    fn new(rows: &[&[ActBlock]]) -> Self {
        let eight: Vec<TileScales<8>> = if has_tile8() { rows.chunks_exact(8).map(|t| TileScales::new(&std::array::from_fn(|r| t[r]))).collect() } else { Vec::new() };
        let eight_rows = 8 * eight.len();
        let four = rows[eight_rows..].chunks_exact(TILE_ROWS).map(|t| TileScales::new(&std::array::from_fn(|r| t[r]))).collect();
        TileSet { eight, four, eight_rows }
    }
}

/// The quantized micro-kernel loop: tiles of up to eight activation rows by
/// pairs of weight rows, writing `out[r * n + j]`.
#[inline]
#[allow(clippy::too_many_arguments)]
fn quant_tiles<'a>(fmt: BlockFormat, rows: &[&[ActBlock]], scales: &TileSet, m: usize, c0: usize, c1: usize, n: usize, out: &SyncPtr, wrow: impl Fn(usize) -> &'a [u8]) {
    let store = |r0: usize, j: usize, vals: &[f32]| {
        for (t, &v) in vals.iter().enumerate() {
            // SAFETY: (r0 + t, j) is inside the m × n output and only the
            // task owning columns c0..c1 writes column j.
            unsafe { *out.0.add((r0 + t) * n + j) = v };
        }
    };
    macro_rules! tile {
        ($r:literal, $r0:expr, $j0:expr, $j1:expr, $pair:expr) => {{
            let acts: [&[ActBlock]; $r] = std::array::from_fn(|t| rows[$r0 + t]);
            let (mut j, j1) = ($j0, $j1);
            while j + 1 < j1 {
                let [a, b] = $pair(&acts, wrow(j), wrow(j + 1));
                store($r0, j, &a);
                store($r0, j + 1, &b);
                j += 2;
            }
            if j < j1 {
                store($r0, j, &dot_q_rows::<$r>(fmt, wrow(j), &acts));
            }
        }};
    }
    // Weight rows go in L1-sized blocks, each passed over by every tile
    // before the next block is read: a chunk can be far larger than the
    // cache (the output head's is megabytes), and without blocking every
    // tile after the first would read it from memory again.
    let block_rows = ((L1_WEIGHT_BYTES / wrow(c0).len()).max(2)) & !1;
    for b0 in (c0..c1).step_by(block_rows) {
        let b1 = (b0 + block_rows).min(c1);
        for (t, sc) in scales.eight.iter().enumerate() {
            tile!(8, 8 * t, b0, b1, |a, w0, w1| dot2_q_tile8(fmt, w0, w1, a, sc));
        }
        let mut r0 = scales.eight_rows;
        while r0 < m {
            match m - r0 {
                1 => tile!(1, r0, b0, b1, |a, w0, w1| dot2_q_rows::<1>(fmt, w0, w1, a)),
                2 => tile!(2, r0, b0, b1, |a, w0, w1| dot2_q_rows::<2>(fmt, w0, w1, a)),
                3 => tile!(3, r0, b0, b1, |a, w0, w1| dot2_q_rows::<3>(fmt, w0, w1, a)),
                _ => tile!(4, r0, b0, b1, |a, w0, w1| dot2_q_tile4(fmt, w0, w1, a, &scales.four[(r0 - scales.eight_rows) / TILE_ROWS])),
            }
            r0 += TILE_ROWS.min(m - r0);
        }
    }
}

/// Walks activation-row tiles over output features `c0..c1` and stores
/// each tile's results at `out[r * n + j]`.
#[inline]
fn tile_loop(m: usize, c0: usize, c1: usize, n: usize, out: &SyncPtr, mut dot: impl FnMut(usize, usize, usize, &mut [f32; TILE_ROWS])) {
    let mut r0 = 0;
    while r0 < m {
        let width = (m - r0).min(TILE_ROWS);
        for j in c0..c1 {
            let mut res = [0.0f32; TILE_ROWS];
            dot(r0, j, width, &mut res);
            for (t, &v) in res.iter().enumerate().take(width) {
                // SAFETY: (r0 + t, j) is inside the m × n output, and only
                // the task owning column chunk c0..c1 writes column j.
                unsafe { *out.0.add((r0 + t) * n + j) = v };
            }
        }
        r0 += width;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect()
    }

    /// A tensor-parallel shard's slices compute what the whole matrix does:
    /// row slices its outputs bit for bit, column slices partial sums that
    /// add up to it (rounding aside), in every storage.
    #[test]
    fn row_and_column_slices_compute_their_share_of_the_matmul() {
        let (rows, cols, m) = (48, 128, 3);
        let x = sample(m, cols);
        for fmt in [None, Some(BlockFormat::Q4_1), Some(BlockFormat::Q8_0)] {
            let f32m = Matrix::f32(rows, cols, sample(rows, cols)).unwrap();
            let w = match fmt {
                Some(f) => f32m.quantized(f),
                None => f32m,
            };
            let mut full = vec![0.0; m * rows];
            w.matmul(&x, m, &mut full);
            let part = w.slice_rows(8..24);
            let mut out = vec![0.0; m * 16];
            part.matmul(&x, m, &mut out);
            for r in 0..m {
                assert_eq!(out[r * 16..(r + 1) * 16], full[r * rows + 8..r * rows + 24], "{fmt:?} rows");
            }
            let mut sum = vec![0.0f32; m * rows];
            for c in [0..64, 64..96, 96..128] {
                let s = w.slice_cols(c.clone()).unwrap();
                let xs: Vec<f32> = x.chunks(cols).flat_map(|r| r[c.clone()].to_vec()).collect();
                let mut o = vec![0.0; m * rows];
                s.matmul(&xs, m, &mut o);
                sum.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            }
            for (a, b) in sum.iter().zip(&full) {
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{fmt:?} cols: {a} vs {b}");
            }
            if fmt.is_some() {
                assert!(w.slice_cols(16..64).is_err(), "a block-stored matrix slices whole blocks only");
            }
        }
    }
}
