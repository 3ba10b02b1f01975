//! Kernel correctness: SIMD paths against plain scalar math, ggml block
//! round trips, and batch invariance of the matmul.

use aerie_kernels::cpu::blocks::{dequantize_row, quantize_matrix, quantize_row, ActBlock};
use aerie_kernels::cpu::{BlockFormat, Matrix, QK};
use rand::{Rng, SeedableRng};

fn randv(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.gen_range(-1.0f32..1.0) * if r.gen_bool(0.05) { 8.0 } else { 1.0 }).collect()
}

/// Reference activation quantization, written out plainly.
fn quantize_ref(x: &[f32], with_sum: bool) -> Vec<ActBlock> {
    x.chunks(QK)
        .map(|c| {
            let amax = c.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut qs = [0i8; QK];
            let mut sum = 0;
            for (q, v) in qs.iter_mut().zip(c) {
                let r = (v * id).round_ties_even() as i32;
                *q = r as i8;
                sum += r;
            }
            let f = |v: f32| half::f16::from_f32(v).to_f32();
            ActBlock { d: f(d), s: if with_sum { f(d * sum as f32) } else { 0.0 }, qs }
        })
        .collect()
}

#[test]
fn activation_quantization_matches_reference() {
    for seed in 0..20 {
        let x = randv(32 * 18, seed);
        for with_sum in [false, true] {
            let mut got = vec![ActBlock::default(); 18];
            quantize_row(&x, with_sum, &mut got);
            let want = quantize_ref(&x, with_sum);
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.qs, w.qs, "seed {seed}");
                assert_eq!(g.d, w.d);
                assert_eq!(g.s, w.s);
            }
        }
    }
}

#[test]
fn block_round_trip_is_close() {
    for fmt in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q8_0] {
        let cols = 64;
        let x = randv(cols * 3, 1);
        let q = quantize_matrix(fmt, &x, cols);
        assert_eq!(q.len(), 3 * cols / QK * fmt.block_bytes());
        let mut row = vec![0.0; cols];
        for r in 0..3 {
            dequantize_row(fmt, &q, cols, r, &mut row);
            let src = &x[r * cols..(r + 1) * cols];
            let amax = src.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let tol = match fmt {
                BlockFormat::Q8_0 => amax / 100.0,
                _ => amax / 6.0,
            };
            for (a, b) in row.iter().zip(src) {
                assert!((a - b).abs() <= tol, "{fmt:?}: {a} vs {b}");
            }
        }
    }
}

/// Quantized matmul equals dequantized-weights × quantized-activations
/// computed in f64, for every format.
#[test]
fn quantized_matmul_matches_reference() {
    let (rows, cols, m) = (70, 96, 5);
    for fmt in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q8_0] {
        let w = randv(rows * cols, 3);
        let x = randv(m * cols, 4);
        let mat = Matrix::quant(fmt, rows, cols, quantize_matrix(fmt, &w, cols)).unwrap();
        let wd = mat.to_f32();
        let mut out = vec![0.0; m * rows];
        mat.matmul(&x, m, &mut out);
        let with_sum = fmt == BlockFormat::Q4_1;
        for r in 0..m {
            let acts = quantize_ref(&x[r * cols..(r + 1) * cols], with_sum);
            let xq: Vec<f32> = acts.iter().flat_map(|a| a.qs.iter().map(move |&q| q as f32 * a.d)).collect();
            for j in 0..rows {
                let mut wr = vec![0.0; cols];
                wd.row_f32(j, &mut wr);
                let want: f64 = wr.iter().zip(&xq).map(|(a, b)| *a as f64 * *b as f64).sum();
                let got = out[r * rows + j] as f64;
                // Q4_1's block-min term multiplies the f16-rounded block sum
                // (as ggml does): allow |m| * |s| * 2^-10 per block.
                let round_term: f64 = if with_sum {
                    acts.iter().map(|a| a.s.abs() as f64 * 8.0 / 1024.0).sum()
                } else {
                    0.0
                };
                let tol = 1e-3 * (1.0 + want.abs()) + round_term;
                assert!((got - want).abs() <= tol, "{fmt:?} row {r} col {j}: {got} vs {want}");
            }
        }
    }
}

#[test]
fn f32_matmul_matches_reference() {
    let (rows, cols, m) = (33, 40, 6);
    let w = randv(rows * cols, 5);
    let x = randv(m * cols, 6);
    let mat = Matrix::f32(rows, cols, w.clone()).unwrap();
    let mut out = vec![0.0; m * rows];
    mat.matmul(&x, m, &mut out);
    for r in 0..m {
        for j in 0..rows {
            let want: f64 = (0..cols).map(|k| w[j * cols + k] as f64 * x[r * cols + k] as f64).sum();
            assert!((out[r * rows + j] as f64 - want).abs() < 1e-4, "{r},{j}");
        }
    }
}

/// A row's output is bit-identical whatever the number of rows in the call.
#[test]
fn matmul_is_batch_invariant() {
    let (rows, cols) = (300, 128);
    for fmt in [Some(BlockFormat::Q4_1), Some(BlockFormat::Q8_0), None] {
        let w = randv(rows * cols, 7);
        let mat = match fmt {
            Some(f) => Matrix::quant(f, rows, cols, quantize_matrix(f, &w, cols)).unwrap(),
            None => Matrix::f32(rows, cols, w).unwrap(),
        };
        let x = randv(11 * cols, 8);
        let mut all = vec![0.0; 11 * rows];
        mat.matmul(&x, 11, &mut all);
        for r in 0..11 {
            let mut one = vec![0.0; rows];
            mat.matmul(&x[r * cols..(r + 1) * cols], 1, &mut one);
            assert_eq!(one, all[r * rows..(r + 1) * rows].to_vec(), "{fmt:?} row {r}");
        }
    }
}

#[test]
fn bad_matrix_sizes_are_errors() {
    assert!(Matrix::quant(BlockFormat::Q4_1, 2, 30, vec![0; 40]).is_err());
    assert!(Matrix::quant(BlockFormat::Q4_1, 2, 32, vec![0; 39]).is_err());
    assert!(Matrix::f32(2, 3, vec![0.0; 5]).is_err());
}

/// Weight rows computed in pairs or alone give identical bits: shifting the
/// output range by one changes which rows are paired.
#[test]
fn paired_and_single_weight_rows_agree() {
    let (rows, cols, m) = (65, 96, 6);
    for fmt in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q8_0] {
        let mat = Matrix::quant(fmt, rows, cols, quantize_matrix(fmt, &randv(rows * cols, 9), cols)).unwrap();
        let x = randv(m * cols, 10);
        let mut full = vec![0.0; m * rows];
        mat.matmul(&x, m, &mut full);
        let mut shifted = vec![0.0; m * (rows - 1)];
        mat.matmul_rows(&x, m, &mut shifted, 1, rows);
        for r in 0..m {
            assert_eq!(&full[r * rows + 1..(r + 1) * rows], &shifted[r * (rows - 1)..(r + 1) * (rows - 1)], "{fmt:?} row {r}");
        }
    }
}

/// `matmul_f32_act` equals dequantized weights × unrounded activations.
#[test]
fn f32_activation_matmul_matches_dequantized() {
    let (rows, cols, m) = (37, 96, 6);
    for fmt in [BlockFormat::Q8_0, BlockFormat::Q4_1] {
        let mat = Matrix::quant(fmt, rows, cols, quantize_matrix(fmt, &randv(rows * cols, 11), cols)).unwrap();
        let x = randv(m * cols, 12);
        let mut got = vec![0.0; m * rows];
        mat.matmul_f32_act(&x, m, &mut got);
        let wd = mat.to_f32_vec();
        for r in 0..m {
            for j in 0..rows {
                let want: f64 = (0..cols).map(|c| wd[j * cols + c] as f64 * x[r * cols + c] as f64).sum();
                let g = got[r * rows + j] as f64;
                assert!((g - want).abs() <= 1e-4 * (1.0 + want.abs()), "{fmt:?} {r},{j}: {g} vs {want}");
            }
        }
    }
}
