//! The CUDA kernels in interpreter mode: each kernel against its CPU
//! reference (`cuda::reference`) on random shapes and ragged batches, batch
//! invariance of the per-row kernels, and the execution model itself
//! (shuffles, votes, barriers with early returns, dynamic shared memory,
//! deadlock and argument checks).

use aerie_kernels::cuda::interp::{self, InterpError, KernelArg as A, LaunchConfig};
use aerie_kernels::cuda::reference;
use half::bf16;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn randv(r: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(-1.0f32..1.0) * scale).collect()
}

fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = rel * w.abs().max(1.0);
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, want {w} (tolerance {tol})");
    }
}

fn rms_norm_launch(x: &[f32], w: &[f32], rows: usize, eps: f32, threads: u32) -> Vec<f32> {
    let hidden = w.len();
    let mut out = vec![f32::NAN; rows * hidden];
    unsafe {
        interp::launch(
            "rms_norm",
            LaunchConfig::linear(rows as u32, threads),
            &[A::ptr(x.as_ptr()), A::ptr(w.as_ptr()), A::ptr(out.as_mut_ptr()), A::I32(rows as i32), A::I32(hidden as i32), A::F32(eps)],
        )
        .unwrap();
    }
    out
}

#[test]
fn rms_norm_matches_reference_and_is_batch_invariant() {
    let mut r = StdRng::seed_from_u64(1);
    for &(rows, hidden) in &[(1, 64), (3, 576), (7, 1000), (2, 2048)] {
        let x = randv(&mut r, rows * hidden, 4.0);
        let w = randv(&mut r, hidden, 2.0);
        let got = rms_norm_launch(&x, &w, rows, 1e-5, 256);
        assert_close(&got, &reference::rms_norm(&x, &w, 1e-5), 1e-5, "rms_norm");
        // Each row alone gives the same bits as in the batch.
        for row in 0..rows {
            let alone = rms_norm_launch(&x[row * hidden..][..hidden], &w, 1, 1e-5, 256);
            assert_eq!(alone, got[row * hidden..][..hidden], "row {row} of {rows} depends on the batch");
        }
    }
}

#[test]
fn embedding_gathers_rows_and_zeroes_bad_ids() {
    let mut r = StdRng::seed_from_u64(2);
    let (vocab, hidden) = (50, 96);
    let table: Vec<bf16> = randv(&mut r, vocab * hidden, 1.0).into_iter().map(bf16::from_f32).collect();
    let ids: Vec<i32> = vec![0, 49, 7, -1, 50, 7, 1_000_000];
    let mut out = vec![f32::NAN; ids.len() * hidden];
    unsafe {
        interp::launch(
            "embedding_bf16",
            LaunchConfig::linear(ids.len() as u32, 64),
            &[A::ptr(table.as_ptr()), A::ptr(ids.as_ptr()), A::ptr(out.as_mut_ptr()), A::I32(ids.len() as i32), A::I32(hidden as i32), A::I32(vocab as i32)],
        )
        .unwrap();
    }
    assert_eq!(out, reference::embedding_bf16(&table, &ids, hidden));
    assert!(out[3 * hidden..5 * hidden].iter().all(|&v| v == 0.0));
}

/// Llama 3's rope scaling (factor 8, low 1, high 4, original context 8192),
/// applied to the inverse frequencies as the host does before the kernel.
fn llama3_inv_freq(head_dim: usize, base: f64) -> Vec<f32> {
    let (factor, low, high, orig) = (8.0f64, 1.0f64, 4.0f64, 8192.0f64);
    (0..head_dim / 2)
        .map(|i| {
            let f = 1.0 / base.powf(2.0 * i as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / f;
            let scaled = if wavelen < orig / high {
                f
            } else if wavelen > orig / low {
                f / factor
            } else {
                let smooth = (orig / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            };
            scaled as f32
        })
        .collect()
}

#[test]
fn rope_matches_reference_in_both_layouts() {
    let mut r = StdRng::seed_from_u64(3);
    for &(tokens, nh, nkv, hd, neox) in &[(1, 4, 2, 64, true), (5, 9, 3, 64, false), (3, 8, 8, 128, true), (2, 32, 8, 128, false)] {
        let positions: Vec<i32> = (0..tokens).map(|_| r.gen_range(0..9000)).collect();
        let inv = llama3_inv_freq(hd, 500000.0);
        let q0 = randv(&mut r, tokens * nh * hd, 1.0);
        let k0 = randv(&mut r, tokens * nkv * hd, 1.0);
        let (mut q, mut k) = (q0.clone(), k0.clone());
        unsafe {
            interp::launch(
                "rope",
                LaunchConfig { grid: (tokens as u32, (nh + nkv) as u32, 1), block: (32, 1, 1), shared_bytes: 0 },
                &[
                    A::ptr(q.as_mut_ptr()),
                    A::ptr(k.as_mut_ptr()),
                    A::ptr(positions.as_ptr()),
                    A::ptr(inv.as_ptr()),
                    A::I32(tokens as i32),
                    A::I32(nh as i32),
                    A::I32(nkv as i32),
                    A::I32(hd as i32),
                    A::I32(neox as i32),
                ],
            )
            .unwrap();
        }
        let (mut qr, mut kr) = (q0, k0);
        reference::rope(&mut qr, &mut kr, &positions, &inv, hd, neox);
        // f32 angles of positions up to 9000 carry ~5e-4 rad of rounding.
        assert_close(&q, &qr, 2e-3, "rope q");
        assert_close(&k, &kr, 2e-3, "rope k");
    }
}

#[test]
fn silu_mul_and_add_match_reference() {
    let mut r = StdRng::seed_from_u64(4);
    for &(rows, inter) in &[(1, 1536), (6, 100), (3, 4097)] {
        let gu = randv(&mut r, rows * 2 * inter, 6.0);
        let mut out = vec![f32::NAN; rows * inter];
        unsafe {
            interp::launch(
                "silu_mul",
                LaunchConfig::linear(7, 128),
                &[A::ptr(gu.as_ptr()), A::ptr(out.as_mut_ptr()), A::I32(rows as i32), A::I32(inter as i32)],
            )
            .unwrap();
        }
        assert_close(&out, &reference::silu_mul(&gu, inter), 1e-5, "silu_mul");

        let mut x = randv(&mut r, rows * inter, 1.0);
        let y = randv(&mut r, rows * inter, 1.0);
        let mut want = x.clone();
        reference::add_inplace(&mut want, &y);
        unsafe {
            interp::launch(
                "add_inplace",
                LaunchConfig::linear(3, 96),
                &[A::ptr(x.as_mut_ptr()), A::ptr(y.as_ptr()), A::I64((rows * inter) as i64)],
            )
            .unwrap();
        }
        assert_eq!(x, want);
    }
}

#[test]
fn copy_rows_sets_matrices_side_by_side_and_gathers_rows() {
    let mut r = StdRng::seed_from_u64(12);
    for &(rows, width) in &[(1, 576), (5, 577), (9, 33)] {
        let (a, b) = (randv(&mut r, rows * width, 1.0), randv(&mut r, rows * width, 1.0));
        let mut cat = vec![f32::NAN; rows * 2 * width];
        let mut want = cat.clone();
        for (src, off) in [(&a, 0), (&b, width)] {
            reference::copy_rows(src, width, None, rows, &mut want[off..], 2 * width, rows, width);
            unsafe {
                interp::launch(
                    "copy_rows",
                    LaunchConfig::linear(3, 128),
                    &[A::ptr(src.as_ptr()), A::I32(width as i32), A::ptr(std::ptr::null::<i32>()), A::I32(rows as i32), A::ptr(cat[off..].as_mut_ptr()), A::I32(2 * width as i32), A::I32(rows as i32), A::I32(width as i32)],
                )
                .unwrap();
            }
        }
        assert_eq!(cat, want, "{rows} x {width} side by side");
        assert_eq!(&cat[2 * width * (rows - 1) + width..], &b[width * (rows - 1)..], "the last row's right half");
        // A gather, with an index outside the source that must be skipped.
        let sel = [rows as i32 - 1, rows as i32, 0, -1];
        let mut got = vec![7.0f32; sel.len() * width];
        let mut want = got.clone();
        reference::copy_rows(&a, width, Some(&sel), rows, &mut want, width, sel.len(), width);
        unsafe {
            interp::launch(
                "copy_rows",
                LaunchConfig::linear(2, 64),
                &[A::ptr(a.as_ptr()), A::I32(width as i32), A::ptr(sel.as_ptr()), A::I32(rows as i32), A::ptr(got.as_mut_ptr()), A::I32(width as i32), A::I32(sel.len() as i32), A::I32(width as i32)],
            )
            .unwrap();
        }
        assert_eq!(got, want, "{rows} x {width} gathered");
        assert_eq!(&got[..width], &a[(rows - 1) * width..], "the gathered first row");
        assert!(got[width..2 * width].iter().all(|&v| v == 7.0), "an index past the source was read");
    }
}

#[test]
fn to_bf16_rounds_like_the_reference_and_the_library_gemm_is_the_reference() {
    use aerie_kernels::cuda::device::{Device, DeviceExt, InterpDevice};
    let mut r = StdRng::seed_from_u64(13);
    let mut x = randv(&mut r, 999, 3.0);
    x[0] = f32::NAN;
    x[1] = f32::INFINITY;
    x[2] = 1.0 + 1.0 / 256.0; // a tie: to even (1.0)
    let mut y = vec![0u16; x.len()];
    unsafe { interp::launch("to_bf16", LaunchConfig::linear(2, 128), &[A::ptr(x.as_ptr()), A::ptr(y.as_mut_ptr()), A::I64(x.len() as i64)]).unwrap() };
    let want = reference::f32_to_bf16(&x);
    assert!(bf16::from_bits(y[0]).is_nan());
    assert_eq!(&y[1..], &want[1..]);
    assert_eq!(bf16::from_bits(y[2]).to_f32(), 1.0);

    // The interpreted device's library GEMM against an f64 sum of the same
    // bf16 inputs, with a weight offset, and its bounds checked.
    let dev = InterpDevice::new(1 << 24);
    let (rows, n, k) = (3, 37, 130);
    let xb: Vec<u16> = reference::f32_to_bf16(&randv(&mut r, rows * k, 1.0));
    let wb: Vec<u16> = reference::f32_to_bf16(&randv(&mut r, (n + 2) * k, 1.0));
    let (dx, dw, dy) = (dev.upload_slice(&xb).unwrap(), dev.upload_slice(&wb).unwrap(), dev.alloc(rows * n * 4).unwrap());
    dev.gemm_bf16(&dx, &dw, 2 * k * 2, &dy, rows, n, k).unwrap();
    let got: Vec<f32> = dev.download_vec(&dy, 0, rows * n).unwrap();
    let f = |b: u16| bf16::from_bits(b).to_f64();
    for i in 0..rows {
        for j in 0..n {
            let want: f64 = (0..k).map(|t| f(xb[i * k + t]) * f(wb[(j + 2) * k + t])).sum();
            assert!((got[i * n + j] as f64 - want).abs() < 1e-4 * want.abs().max(1.0), "y[{i},{j}] = {}, want {want}", got[i * n + j]);
        }
    }
    assert!(dev.gemm_bf16(&dx, &dw, 3 * k * 2, &dy, rows, n, k).is_err(), "a weight range past the buffer");
    let err = |r: Result<(), aerie_kernels::cuda::device::DeviceError>| r.unwrap_err().error_type();
    assert_eq!(err(dev.gemm_bf16(&dx, &dw, 1, &dy, rows, n, k)), "bad_operands", "odd weight offset");
    assert_eq!(err(dev.gemm_bf16(&dx, &dw, 0, &dx, rows, n, k)), "bad_operands", "output over an input");
    assert_eq!(err(dev.gemm_bf16(&dx, &dw, 0, &dy, usize::MAX, n, k)), "bad_operands", "an overflowing size");
}

#[test]
fn topk_rows_picks_like_the_reference_with_ties_nans_and_short_rows() {
    let mut r = StdRng::seed_from_u64(16);
    let vocab = 2003;
    let rows = 5;
    let mut logits = randv(&mut r, rows * vocab, 8.0);
    logits[5] = 30.0; // a tie in row 0: index 5 before index 900
    logits[900] = 30.0;
    logits[vocab + 7] = f32::NAN;
    logits[vocab + 8] = 40.0;
    // Row 2: only 3 finite logits, the rest -inf.
    logits[2 * vocab..3 * vocab].fill(f32::NEG_INFINITY);
    logits[2 * vocab + 10] = 1.0;
    logits[2 * vocab + 20] = 2.0;
    logits[2 * vocab + 30] = 2.0;
    let k = 9;
    let want = reference::topk_rows(&logits, vocab, k);
    for threads in [32, 256] {
        let mut ids = vec![-7i32; rows * k];
        let mut probs = vec![-1.0f32; rows * k];
        unsafe {
            interp::launch(
                "topk_rows",
                LaunchConfig::linear(rows as u32, threads),
                &[A::ptr(logits.as_ptr()), A::ptr(ids.as_mut_ptr()), A::ptr(probs.as_mut_ptr()), A::I32(rows as i32), A::I32(vocab as i32), A::I32(k as i32)],
            )
            .unwrap();
        }
        for (row, w) in want.iter().enumerate() {
            let got_ids: Vec<i32> = ids[row * k..(row + 1) * k].to_vec();
            let want_ids: Vec<i32> = w.iter().map(|p| p.0).collect();
            // Past the finite entries both list -inf ones (probability 0) by index.
            assert_eq!(got_ids, want_ids, "row {row}, block of {threads}");
            for (g, (_, p)) in probs[row * k..(row + 1) * k].iter().zip(w) {
                assert!((g - p).abs() <= 1e-5 * p.max(1e-3), "row {row}: probability {g}, want {p}");
            }
        }
    }
    assert_eq!((want[0][0].0, want[0][1].0), (5, 900));
    assert_eq!(want[1][0].0, 8);
    assert_eq!(&want[2].iter().map(|p| p.0).collect::<Vec<_>>()[..4], &[20, 30, 10, 0]);
}

#[test]
fn argmax_is_exact_with_ties_nans_and_any_block_size() {
    let mut r = StdRng::seed_from_u64(5);
    let vocab = 3001;
    let rows = 6;
    let mut logits = randv(&mut r, rows * vocab, 10.0);
    logits[vocab + 2999] = 50.0; // a tie: the first of the two wins
    logits[vocab + 17] = 50.0;
    logits[2 * vocab..3 * vocab].fill(f32::NEG_INFINITY);
    logits[3 * vocab..4 * vocab].fill(f32::NAN);
    logits[4 * vocab + 5] = f32::NAN;
    logits[4 * vocab + 6] = 100.0;
    let want = reference::argmax_rows(&logits, vocab);
    for threads in [32, 256, 1024] {
        let mut ids = vec![-7i32; rows];
        let mut vals = vec![0.0f32; rows];
        unsafe {
            interp::launch(
                "argmax_rows",
                LaunchConfig::linear(rows as u32, threads),
                &[A::ptr(logits.as_ptr()), A::ptr(ids.as_mut_ptr()), A::ptr(vals.as_mut_ptr()), A::I32(rows as i32), A::I32(vocab as i32)],
            )
            .unwrap();
        }
        let got: Vec<(i32, f32)> = ids.into_iter().zip(vals).collect();
        assert_eq!(got, want, "block of {threads}");
    }
    assert_eq!(want[1].0, 17);
    assert_eq!(want[4].0, 4 * 0 + 6);
}

#[test]
fn matvec_q4_1_matches_reference() {
    let mut r = StdRng::seed_from_u64(6);
    for &(rows, cols) in &[(5, 64), (33, 256), (8, 1024)] {
        let nb = cols / 32;
        let mut w = vec![0u8; rows * nb * 20];
        for blk in w.chunks_mut(20) {
            blk[0..2].copy_from_slice(&half::f16::from_f32(r.gen_range(0.001..0.05)).to_bits().to_le_bytes());
            blk[2..4].copy_from_slice(&half::f16::from_f32(r.gen_range(-0.2..0.0)).to_bits().to_le_bytes());
            r.fill(&mut blk[4..]);
        }
        let x = randv(&mut r, cols, 1.0);
        let mut y = vec![f32::NAN; rows];
        // 4 warps per block, so the last block of a ragged row count idles.
        unsafe {
            interp::launch(
                "matvec_q4_1",
                LaunchConfig::linear(rows.div_ceil(4) as u32, 128),
                &[A::ptr(w.as_ptr()), A::ptr(x.as_ptr()), A::ptr(y.as_mut_ptr()), A::I32(rows as i32), A::I32(cols as i32)],
            )
            .unwrap();
        }
        assert_close(&y, &reference::matvec_q4_1(&w, &x, rows, cols), 1e-4, "matvec_q4_1");
    }
}

#[test]
fn warp_shuffles_and_ballots_follow_cuda_semantics() {
    let threads = 96usize;
    let mut out = vec![0i32; 4 * threads];
    unsafe { interp::launch("selftest_shuffles", LaunchConfig::linear(1, threads as u32), &[A::ptr(out.as_mut_ptr())]).unwrap() };
    let ballot = (0..32).filter(|l| l % 3 == 0).fold(0u32, |b, l| b | 1 << l) as i32;
    for t in 0..threads {
        let (warp, lane) = (t / 32, t % 32);
        let v = |l: usize| (1000 * warp + l) as i32;
        assert_eq!(out[4 * t], if lane + 3 < 32 { v(lane + 3) } else { v(lane) }, "shfl_down t={t}");
        assert_eq!(out[4 * t + 1], v(lane ^ 5), "shfl_xor t={t}");
        assert_eq!(out[4 * t + 2], v(7), "shfl t={t}");
        assert_eq!(out[4 * t + 3], ballot, "ballot t={t}");
    }
}

#[test]
fn barriers_ignore_threads_that_returned() {
    let blocks = 3;
    let mut out = vec![0i32; blocks];
    unsafe { interp::launch("selftest_early_exit", LaunchConfig::linear(blocks as u32, 128), &[A::ptr(out.as_mut_ptr())]).unwrap() };
    for (b, &s) in out.iter().enumerate() {
        assert_eq!(s, (0..64).map(|t| t + b as i32).sum::<i32>());
    }
}

#[test]
fn dynamic_shared_memory_is_per_launch() {
    let n = 64usize;
    let input: Vec<i32> = (0..2 * n as i32).collect();
    let mut out = vec![0i32; 2 * n];
    let cfg = LaunchConfig { grid: (2, 1, 1), block: (n as u32, 1, 1), shared_bytes: (n * 4) as u32 };
    unsafe { interp::launch("selftest_dynamic_shared", cfg, &[A::ptr(input.as_ptr()), A::ptr(out.as_mut_ptr())]).unwrap() };
    for b in 0..2 {
        for t in 0..n {
            assert_eq!(out[b * n + t], (b * n + n - 1 - t) as i32);
        }
    }
}

#[test]
fn a_divergent_barrier_is_an_error_not_a_hang() {
    let mut out = vec![0i32; 64];
    let err = unsafe { interp::launch("selftest_divergent_barrier", LaunchConfig::linear(1, 64), &[A::ptr(out.as_mut_ptr())]) };
    assert_eq!(err, Err(InterpError::Deadlock("selftest_divergent_barrier")));
}

#[test]
fn launches_are_checked_before_they_run() {
    let x = [0.0f32; 4];
    let bad = |name: &str, cfg: LaunchConfig, args: &[A]| unsafe { interp::launch(name, cfg, args) }.unwrap_err().error_type();
    assert_eq!(bad("no_such_kernel", LaunchConfig::linear(1, 32), &[]), "unknown_kernel");
    assert_eq!(bad("add_inplace", LaunchConfig::linear(1, 32), &[A::ptr(x.as_ptr())]), "argument_count");
    // n is a 64-bit count: an i32 there would leave half of it undefined.
    assert_eq!(bad("add_inplace", LaunchConfig::linear(1, 32), &[A::ptr(x.as_ptr()), A::ptr(x.as_ptr()), A::I32(4)]), "argument_size");
    assert_eq!(bad("add_inplace", LaunchConfig::linear(1, 2048), &[A::ptr(x.as_ptr()), A::ptr(x.as_ptr()), A::I64(4)]), "bad_config");
    assert_eq!(bad("add_inplace", LaunchConfig::linear(0, 32), &[A::ptr(x.as_ptr()), A::ptr(x.as_ptr()), A::I64(4)]), "bad_config");
    let names: Vec<_> = interp::kernels().map(|(n, _)| n).collect();
    for want in ["rms_norm", "rope", "silu_mul", "add_inplace", "embedding_bf16", "argmax_rows", "matvec_q4_1"] {
        assert!(names.contains(&want), "{want} is not interpreted");
    }
}

/// Every kernel source shipped for the GPU is also compiled for the
/// interpreter (so none can only ever run on a GPU).
#[test]
fn every_gpu_kernel_runs_in_the_interpreter() {
    let interpreted: Vec<_> = interp::kernels().map(|(n, _)| n.to_string()).collect();
    for src in aerie_kernels::cuda::SOURCES {
        for line in src.text.lines().filter(|l| l.contains("extern \"C\" __global__ void ")) {
            let name = line.split("void ").nth(1).unwrap().split('(').next().unwrap();
            assert!(interpreted.iter().any(|n| n == name), "{name} in {} has no interpreter build", src.file);
        }
    }
}

/// A paged KV cache for the attention tests: `num_pages` pages of random
/// bf16 keys and values, and each sequence's pages drawn at random from the
/// pool, so no sequence's pages are contiguous.
struct Paged {
    g: reference::PagedGeometry,
    k: Vec<bf16>,
    v: Vec<bf16>,
    table: Vec<i32>,
}

impl Paged {
    fn new(r: &mut StdRng, seqs: usize, g: reference::PagedGeometry) -> Paged {
        let width = g.n_kv_heads * g.head_dim;
        let slots = g.num_pages * g.page_size;
        let rb = |r: &mut StdRng| bf16::from_f32(r.gen_range(-1.0f32..1.0));
        let k = (0..slots * width).map(|_| rb(r)).collect();
        let v = (0..slots * width).map(|_| rb(r)).collect();
        let mut pages: Vec<i32> = (0..g.num_pages as i32).collect();
        for i in (1..pages.len()).rev() {
            pages.swap(i, r.gen_range(0..=i));
        }
        assert!(seqs * g.max_pages <= pages.len());
        Paged { g, k, v, table: pages[..seqs * g.max_pages].to_vec() }
    }

    fn slot(&self, seq: usize, pos: usize) -> usize {
        self.table[seq * self.g.max_pages + pos / self.g.page_size] as usize * self.g.page_size + pos % self.g.page_size
    }

    fn attend(&self, q: &[f32], rows: &[reference::AttnRow], scale: f32) -> Vec<f32> {
        let g = self.g;
        let mut out = vec![f32::NAN; rows.len() * g.n_heads * g.head_dim];
        let col = |f: fn(&reference::AttnRow) -> i32| rows.iter().map(f).collect::<Vec<i32>>();
        let (seq, dense, base) = (col(|r| r.seq), col(|r| r.dense_len), col(|r| r.tree_base));
        let mask: Vec<u64> = rows.iter().map(|r| r.tree_mask).collect();
        // The interpreted kernel itself, not its host twin.
        unsafe {
            interp::launch_as(
                "attention_paged",
                LaunchConfig { grid: (rows.len() as u32, g.n_heads as u32, 1), block: (32, 1, 1), shared_bytes: 0 },
                &[
                    A::ptr(q.as_ptr()),
                    A::ptr(self.k.as_ptr()),
                    A::ptr(self.v.as_ptr()),
                    A::ptr(out.as_mut_ptr()),
                    A::ptr(seq.as_ptr()),
                    A::ptr(dense.as_ptr()),
                    A::ptr(base.as_ptr()),
                    A::ptr(mask.as_ptr()),
                    A::ptr(self.table.as_ptr()),
                    A::I32(g.max_pages as i32),
                    A::I32(g.page_size as i32),
                    A::I32(g.num_pages as i32),
                    A::I32(rows.len() as i32),
                    A::I32(g.n_heads as i32),
                    A::I32(g.n_kv_heads as i32),
                    A::I32(g.head_dim as i32),
                    A::F32(scale),
                ],
                false,
            )
            .unwrap();
        }
        out
    }
}

/// A random tree of `n` nodes, each parent before its child; returns each
/// node's mask of ancestors and itself.
fn random_tree(r: &mut StdRng, n: usize) -> Vec<u64> {
    let mut masks: Vec<u64> = Vec::with_capacity(n);
    for i in 0..n {
        let parent = if i == 0 { None } else { Some(r.gen_range(0..i)) };
        masks.push(parent.map_or(0, |p| masks[p]) | 1 << i);
    }
    masks
}

#[test]
fn paged_tree_attention_matches_reference() {
    let mut r = StdRng::seed_from_u64(7);
    for &(n_heads, n_kv_heads, head_dim) in &[(6, 2, 64), (4, 4, 128), (3, 1, 48)] {
        let g = reference::PagedGeometry { page_size: 16, max_pages: 8, num_pages: 64, n_heads, n_kv_heads, head_dim };
        let cache = Paged::new(&mut r, 6, g);
        use reference::AttnRow as Row;
        let mut rows = Vec::new();
        // Sequence 0: a causal prompt of 23 tokens from an empty cache.
        rows.extend((0..23).map(|i| Row { seq: 0, dense_len: i + 1, tree_base: 0, tree_mask: 0 }));
        // Sequence 1: one decoded token after 37 cached (three pages).
        rows.push(Row { seq: 1, dense_len: 38, tree_base: 0, tree_mask: 0 });
        // Sequences 2-5: trees of 64, 1, 13 and 40 nodes after ragged prefixes,
        // the last two starting exactly on a page boundary.
        for (seq, nodes, prefix) in [(2, 64, 50), (3, 1, 15), (4, 13, 32), (5, 40, 64)] {
            for m in random_tree(&mut r, nodes) {
                rows.push(Row { seq, dense_len: prefix, tree_base: prefix, tree_mask: m });
            }
        }
        let q = randv(&mut r, rows.len() * n_heads * head_dim, 1.0);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let got = cache.attend(&q, &rows, scale);
        let want = reference::attention_paged(&q, &cache.k, &cache.v, &rows, &cache.table, g, scale);
        assert_close(&got, &want, 1e-4, "attention_paged");
    }
}

/// Batch invariance of tree verification: a tree node's row, scored with the
/// whole tree and other sequences in one launch, gives exactly the bits of
/// the same token decoded alone after its path.
#[test]
fn a_tree_node_gets_the_bits_of_its_path_decoded_alone() {
    let mut r = StdRng::seed_from_u64(8);
    let g = reference::PagedGeometry { page_size: 16, max_pages: 8, num_pages: 64, n_heads: 4, n_kv_heads: 2, head_dim: 64 };
    let mut cache = Paged::new(&mut r, 4, g);
    let width = g.n_kv_heads * g.head_dim;
    let (prefix, nodes) = (29usize, 16usize);
    // Sequence 0 holds the prefix and a 16-node tree at positions prefix + j;
    // sequence 1 is the same prefix, built for token-by-token decoding.
    let masks = random_tree(&mut r, nodes);
    for pos in 0..prefix {
        let (a, b) = (cache.slot(0, pos) * width, cache.slot(1, pos) * width);
        cache.k.copy_within(a..a + width, b);
        cache.v.copy_within(a..a + width, b);
    }
    let mut tree_q = randv(&mut r, nodes * g.n_heads * g.head_dim, 1.0);
    let noise_rows: Vec<reference::AttnRow> =
        (0..5).map(|i| reference::AttnRow { seq: 2, dense_len: 40 + i, tree_base: 0, tree_mask: 0 }).collect();
    let noise_q = randv(&mut r, noise_rows.len() * g.n_heads * g.head_dim, 1.0);
    let mut batch_rows: Vec<_> = masks
        .iter()
        .map(|&m| reference::AttnRow { seq: 0, dense_len: prefix as i32, tree_base: prefix as i32, tree_mask: m })
        .collect();
    batch_rows.extend(noise_rows.iter().copied());
    tree_q.extend(noise_q.iter().copied());
    let batched = cache.attend(&tree_q, &batch_rows, 0.125);
    let per_row = g.n_heads * g.head_dim;
    for (n, &m) in masks.iter().enumerate() {
        // Lay node n's path (its ancestors in index order, then itself) after
        // the prefix of sequence 1, as decoding would have written it.
        let path: Vec<usize> = (0..nodes).filter(|j| m >> j & 1 == 1).collect();
        for (depth, &j) in path.iter().enumerate() {
            let (a, b) = (cache.slot(0, prefix + j) * width, cache.slot(1, prefix + depth) * width);
            cache.k.copy_within(a..a + width, b);
            cache.v.copy_within(a..a + width, b);
        }
        let alone_row = reference::AttnRow { seq: 1, dense_len: (prefix + path.len()) as i32, tree_base: 0, tree_mask: 0 };
        let alone = cache.attend(&tree_q[n * per_row..][..per_row], &[alone_row], 0.125);
        assert_eq!(alone[..], batched[n * per_row..][..per_row], "node {n} (path {path:?}) differs from its path decoded alone");
    }
}

#[test]
fn kv_append_and_path_compaction_match_reference() {
    let mut r = StdRng::seed_from_u64(9);
    let (slots_n, width) = (40usize, 96usize);
    let mut kc: Vec<bf16> = randv(&mut r, slots_n * width, 1.0).into_iter().map(bf16::from_f32).collect();
    let mut vc: Vec<bf16> = randv(&mut r, slots_n * width, 1.0).into_iter().map(bf16::from_f32).collect();
    let slots: Vec<i32> = vec![3, 17, 39, 40, -2, 20];
    let k = randv(&mut r, slots.len() * width, 3.0);
    let v = randv(&mut r, slots.len() * width, 3.0);
    let (mut kw, mut vw) = (kc.clone(), vc.clone());
    reference::kv_append(&k, &v, &mut kw, &mut vw, &slots, width);
    unsafe {
        interp::launch(
            "kv_append",
            LaunchConfig::linear(slots.len() as u32, 64),
            &[A::ptr(k.as_ptr()), A::ptr(v.as_ptr()), A::ptr(kc.as_mut_ptr()), A::ptr(vc.as_mut_ptr()), A::ptr(slots.as_ptr()), A::I32(slots.len() as i32), A::I32(width as i32), A::I32(slots_n as i32)],
        )
        .unwrap();
    }
    assert!(kc == kw && vc == vw, "kv_append");
    // Accepting tree nodes 0, 2, 3 and 7 of a tree at slots 10..: they move
    // to 10, 11, 12, 13; node 2's slot (12) is a later destination.
    let src: Vec<i32> = vec![10, 12, 13, 17, 45];
    let dst: Vec<i32> = vec![10, 11, 12, 13, 14];
    reference::kv_move(&mut kw, &mut vw, &src, &dst, width);
    let want_rows: Vec<Vec<bf16>> = [10usize, 12, 13, 17].iter().map(|&s| kc[s * width..][..width].to_vec()).collect();
    unsafe {
        interp::launch(
            "kv_move",
            LaunchConfig::linear(1, 128),
            &[A::ptr(kc.as_mut_ptr()), A::ptr(vc.as_mut_ptr()), A::ptr(src.as_ptr()), A::ptr(dst.as_ptr()), A::I32(src.len() as i32), A::I32(width as i32), A::I32(slots_n as i32)],
        )
        .unwrap();
    }
    assert!(kc == kw && vc == vw, "kv_move");
    for (i, want) in want_rows.iter().enumerate() {
        assert_eq!(&kc[(10 + i) * width..][..width], &want[..], "accepted node {i} after compaction");
    }
}

/// SOURCES, which NVRTC compiles at run time, lists every `.cu` file of
/// kernels/cuda/.
#[test]
fn sources_list_every_kernel_file() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".cu"))
        .collect();
    files.sort();
    let listed: Vec<String> = aerie_kernels::cuda::SOURCES.iter().map(|s| s.file.to_string()).collect();
    assert_eq!(listed, files);
}

fn linear_launch(x: &[f32], w: &[bf16], bias: Option<&[f32]>, rows: usize, n: usize, k: usize, warps: u32) -> Vec<f32> {
    let mut y = vec![f32::NAN; rows * n];
    let cfg = LaunchConfig { grid: (n.div_ceil(warps as usize) as u32, rows.div_ceil(8) as u32, 1), block: (32 * warps, 1, 1), shared_bytes: 0 };
    let b = bias.map_or(std::ptr::null(), |b| b.as_ptr());
    // The interpreted kernel itself, not its host twin.
    unsafe {
        interp::launch_as(
            "linear_bf16",
            cfg,
            &[A::ptr(x.as_ptr()), A::ptr(w.as_ptr()), A::ptr(b), A::ptr(y.as_mut_ptr()), A::I32(rows as i32), A::I32(n as i32), A::I32(k as i32)],
            false,
        )
        .unwrap();
    }
    y
}

#[test]
fn linear_matches_reference_and_a_row_is_the_same_bits_in_any_batch() {
    let mut r = StdRng::seed_from_u64(10);
    for &(rows, n, k, with_bias) in &[(1, 33, 64, false), (11, 70, 200, true), (17, 5, 576, true)] {
        let x = randv(&mut r, rows * k, 2.0);
        let w: Vec<bf16> = randv(&mut r, n * k, 0.5).into_iter().map(bf16::from_f32).collect();
        let b = randv(&mut r, n, 1.0);
        let bias = with_bias.then_some(&b[..]);
        let y = linear_launch(&x, &w, bias, rows, n, k, 4);
        assert_close(&y, &reference::linear_bf16(&x, &w, bias, k), 1e-4, "linear_bf16");
        // Any row, alone or at another place in another batch, with another
        // block shape: the same bits.
        for row in [0, rows / 2, rows - 1] {
            let alone = linear_launch(&x[row * k..][..k], &w, bias, 1, n, k, 1);
            assert_eq!(alone[..], y[row * n..][..n], "row {row} of {rows}");
        }
    }
}

/// The host twins (interp/twins.cpp) give exactly the bits of the kernels
/// they stand in for.
#[test]
fn host_twins_give_the_interpreted_kernels_bits() {
    assert!(interp::has_twin("linear_bf16") && interp::has_twin("attention_paged") && !interp::has_twin("rms_norm"));
    let mut r = StdRng::seed_from_u64(12);
    for &(rows, n, k, with_bias) in &[(1, 33, 64, false), (13, 70, 200, true), (9, 5, 576, true)] {
        let x = randv(&mut r, rows * k, 2.0);
        let w: Vec<bf16> = randv(&mut r, n * k, 0.5).into_iter().map(bf16::from_f32).collect();
        let b = randv(&mut r, n, 1.0);
        let bias = if with_bias { b.as_ptr() } else { std::ptr::null() };
        let run = |twin: bool| {
            let mut y = vec![f32::NAN; rows * n];
            let cfg = LaunchConfig { grid: (n.div_ceil(4) as u32, rows.div_ceil(8) as u32, 1), block: (128, 1, 1), shared_bytes: 0 };
            unsafe {
                interp::launch_as("linear_bf16", cfg, &[A::ptr(x.as_ptr()), A::ptr(w.as_ptr()), A::ptr(bias), A::ptr(y.as_mut_ptr()), A::I32(rows as i32), A::I32(n as i32), A::I32(k as i32)], twin)
                    .unwrap();
            }
            y
        };
        assert_eq!(run(true), run(false), "linear_bf16 twin, {rows}x{n}x{k}");
    }
    for &(n_heads, n_kv_heads, head_dim) in &[(6, 2, 64), (3, 1, 48), (2, 2, 256)] {
        let g = reference::PagedGeometry { page_size: 16, max_pages: 8, num_pages: 40, n_heads, n_kv_heads, head_dim };
        let cache = Paged::new(&mut r, 4, g);
        let mut rows: Vec<reference::AttnRow> = (0..9).map(|i| reference::AttnRow { seq: 0, dense_len: i + 1, tree_base: 0, tree_mask: 0 }).collect();
        rows.extend(random_tree(&mut r, 20).into_iter().map(|m| reference::AttnRow { seq: 1, dense_len: 37, tree_base: 37, tree_mask: m }));
        rows.push(reference::AttnRow { seq: 2, dense_len: 0, tree_base: 0, tree_mask: 0 });
        let q = randv(&mut r, rows.len() * n_heads * head_dim, 1.0);
        let run = |twin: bool| {
            let mut out = vec![f32::NAN; rows.len() * n_heads * head_dim];
            let col = |f: fn(&reference::AttnRow) -> i32| rows.iter().map(f).collect::<Vec<i32>>();
            let (seq, dense, base) = (col(|r| r.seq), col(|r| r.dense_len), col(|r| r.tree_base));
            let mask: Vec<u64> = rows.iter().map(|r| r.tree_mask).collect();
            let cfg = LaunchConfig { grid: (rows.len() as u32, n_heads as u32, 1), block: (32, 1, 1), shared_bytes: 0 };
            let args = [
                A::ptr(q.as_ptr()), A::ptr(cache.k.as_ptr()), A::ptr(cache.v.as_ptr()), A::ptr(out.as_mut_ptr()),
                A::ptr(seq.as_ptr()), A::ptr(dense.as_ptr()), A::ptr(base.as_ptr()), A::ptr(mask.as_ptr()), A::ptr(cache.table.as_ptr()),
                A::I32(g.max_pages as i32), A::I32(g.page_size as i32), A::I32(g.num_pages as i32), A::I32(rows.len() as i32),
                A::I32(n_heads as i32), A::I32(n_kv_heads as i32), A::I32(head_dim as i32), A::F32(0.1),
            ];
            unsafe { interp::launch_as("attention_paged", cfg, &args, twin).unwrap() };
            out
        };
        let (a, b) = (run(true), run(false));
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "attention_paged twin, heads {n_heads}/{n_kv_heads} x {head_dim}");
    }
}

/// Runs `sample_dist_rows` and returns each row's distribution as
/// `tree_sample.cu` reads it.
fn sample_dist_launch(logits: &[f32], vocab: usize, params: &[reference::SampleParams], threads: u32) -> (Vec<Vec<f64>>, [Vec<f32>; 3], Vec<u32>, Vec<i32>) {
    let rows = params.len();
    let temp: Vec<f32> = params.iter().map(|p| p.temperature).collect();
    let top_k: Vec<i32> = params.iter().map(|p| p.top_k).collect();
    let top_p: Vec<f32> = params.iter().map(|p| p.top_p).collect();
    let min_p: Vec<f32> = params.iter().map(|p| p.min_p).collect();
    let (mut ck, mut ci) = (vec![7u32; rows], vec![-7i32; rows]);
    let (mut m, mut it, mut z) = (vec![f32::NAN; rows], vec![f32::NAN; rows], vec![f32::NAN; rows]);
    unsafe {
        interp::launch(
            "sample_dist_rows",
            LaunchConfig::linear(rows as u32, threads),
            &[
                A::ptr(logits.as_ptr()),
                A::ptr(temp.as_ptr()),
                A::ptr(top_k.as_ptr()),
                A::ptr(top_p.as_ptr()),
                A::ptr(min_p.as_ptr()),
                A::ptr(ck.as_mut_ptr()),
                A::ptr(ci.as_mut_ptr()),
                A::ptr(m.as_mut_ptr()),
                A::ptr(it.as_mut_ptr()),
                A::ptr(z.as_mut_ptr()),
                A::I32(rows as i32),
                A::I32(vocab as i32),
            ],
        )
        .unwrap();
    }
    let q = (0..rows).map(|r| reference::dist_of_cut(&logits[r * vocab..(r + 1) * vocab], ck[r], ci[r], m[r], it[r], z[r])).collect();
    (q, [m, it, z], ck, ci)
}

fn sp(temperature: f32, top_k: i32, top_p: f32, min_p: f32) -> reference::SampleParams {
    reference::SampleParams { temperature, top_k, top_p, min_p }
}

#[test]
fn sample_dist_rows_keeps_what_the_cpu_sampler_keeps() {
    let mut r = StdRng::seed_from_u64(33);
    let vocab = 3001;
    let params = [
        sp(0.7, 0, 1.0, 0.0),
        sp(1.0, 5, 1.0, 0.0),
        sp(1.0, 50, 0.9, 0.0),
        sp(0.8, 0, 1.0, 0.1),
        sp(1.2, 20, 0.5, 0.05),
        sp(0.0, 0, 1.0, 0.0),   // greedy by temperature
        sp(0.9, 1, 1.0, 0.0),   // greedy by top-k
        sp(1.0, 4, 1.0, 0.0),   // ties: top-k cuts inside ten equal maxima
        sp(1.0, 0, 0.35, 0.0),  // ties: top-p cuts inside them
        sp(0.5, 0, 0.95, 0.0),  // three finite logits, the rest -inf
        sp(1.0, 0, 1.0, 0.0),   // a NaN among numbers
        sp(0.6, 0, 1.0, 0.0),   // nothing above -inf: greedy on the first
    ];
    let rows = params.len();
    let mut logits = randv(&mut r, rows * vocab, 6.0);
    for j in [3usize, 40, 41, 500, 777, 1000, 1500, 2000, 2999, 3000] {
        logits[7 * vocab + j] = 20.0;
        logits[8 * vocab + j] = 20.0;
    }
    logits[9 * vocab..10 * vocab].fill(f32::NEG_INFINITY);
    logits[9 * vocab + 11] = 1.0;
    logits[9 * vocab + 12] = 0.5;
    logits[9 * vocab + 2900] = 1.5;
    logits[10 * vocab + 100] = f32::NAN;
    logits[11 * vocab..12 * vocab].fill(f32::NEG_INFINITY);
    let want = reference::sample_dist_rows(&logits, vocab, &params);
    for threads in [32, 256, 1024] {
        let (got, ..) = sample_dist_launch(&logits, vocab, &params, threads);
        for (row, (g, w)) in got.iter().zip(&want).enumerate() {
            let kept_g: Vec<usize> = (0..vocab).filter(|&j| g[j] > 0.0).collect();
            let kept_w: Vec<usize> = (0..vocab).filter(|&j| w[j] > 0.0).collect();
            assert_eq!(kept_g, kept_w, "row {row} ({:?}), block of {threads}: kept sets", params[row]);
            for j in kept_w {
                assert!((g[j] - w[j]).abs() <= 2e-6 + 1e-5 * w[j], "row {row}, token {j}: {} against {}", g[j], w[j]);
            }
        }
    }
    // The fixture cuts where it means to.
    let kept = |row: usize| want[row].iter().filter(|&&p| p > 0.0).count();
    assert_eq!(kept(1), 5);
    assert_eq!(kept(5), 1);
    assert_eq!(kept(6), 1);
    assert_eq!((0..vocab).filter(|&j| want[7][j] > 0.0).collect::<Vec<_>>(), [3, 40, 41, 500]);
    assert_eq!(kept(8), 4, "top-p 0.35 of ten equal maxima keeps four");
    assert_eq!(kept(9), 3);
    assert!(kept(3) > 1 && kept(3) < vocab && kept(4) > 1 && kept(4) < 20 && kept(2) < 50);
    assert_eq!(want[11][0], 1.0);
    assert_eq!(want[10][100], 0.0);
}

/// A random tree of `n` nodes whose children are drawn mostly from their
/// parent's distribution (so walks go deep), with repeated sibling tokens.
fn random_draft_tree(r: &mut StdRng, n: usize, q: &[Vec<f64>]) -> (Vec<i32>, Vec<i32>) {
    let mut tokens = vec![r.gen_range(0..q[0].len() as i32)];
    let mut parents = vec![-1];
    for c in 1..n {
        let p = if r.gen_bool(0.5) { c - 1 } else { r.gen_range(0..c) };
        let tok = if r.gen_bool(0.8) {
            let u: f64 = r.gen();
            let mut cum = 0.0;
            q[p].iter().position(|&x| {
                cum += x;
                u < cum
            })
            .unwrap_or(0) as i32
        } else {
            r.gen_range(0..q[0].len() as i32)
        };
        tokens.push(tok);
        parents.push(p as i32);
    }
    (tokens, parents)
}

#[test]
fn tree_sample_verify_walks_and_draws_like_the_reference() {
    let mut r = StdRng::seed_from_u64(34);
    let vocab = 1031;
    let settings = [sp(0.7, 0, 1.0, 0.0), sp(1.0, 8, 0.9, 0.0), sp(1.0, 0, 1.0, 0.2), sp(0.0, 0, 1.0, 0.0)];
    let (mut checked, mut total, mut accepted, mut depth_max) = (0, 0, 0, 0);
    for round in 0..6 {
        // Trees of 1 to 64 nodes in one launch; every node a row.
        let sizes: Vec<usize> = (0..5).map(|i| if i == 0 { 1 } else { r.gen_range(2..=64) }).collect();
        let rows: usize = sizes.iter().sum();
        // A few likely tokens per row, as a language model's rows have.
        let mut logits = randv(&mut r, rows * vocab, 3.0);
        for row in 0..rows {
            for bump in [9.0, 8.0, 6.5] {
                logits[row * vocab + r.gen_range(0..vocab)] += bump;
            }
        }
        let params: Vec<reference::SampleParams> = sizes.iter().enumerate().flat_map(|(t, &n)| vec![settings[(t + round) % 4]; n]).collect();
        let threads = [32, 128, 256][round % 3];
        let (q, [m, it, z], ck, ci) = sample_dist_launch(&logits, vocab, &params, threads);
        let (mut tokens, mut parents, mut start, mut coins, mut coin_start) = (Vec::<i32>::new(), Vec::<i32>::new(), vec![0i32], Vec::<f32>::new(), vec![0i32]);
        let mut trees = Vec::new();
        for &n in &sizes {
            let at = *start.last().unwrap() as usize;
            let (tk, pa) = random_draft_tree(&mut r, n, &q[at..at + n]);
            let c: Vec<f32> = (0..n + 1).map(|_| r.gen()).collect();
            tokens.extend(&tk);
            parents.extend(&pa);
            coins.extend(&c);
            start.push((at + n) as i32);
            coin_start.push(coins.len() as i32);
            trees.push((at, tk, pa, c));
        }
        let ntrees = sizes.len();
        let (mut path, mut out, mut len) = (vec![-1i32; rows], vec![-1i32; rows], vec![0i32; ntrees]);
        unsafe {
            interp::launch(
                "tree_sample_verify",
                LaunchConfig::linear(ntrees as u32, threads),
                &[
                    A::ptr(logits.as_ptr()),
                    A::ptr(ck.as_ptr()),
                    A::ptr(ci.as_ptr()),
                    A::ptr(m.as_ptr()),
                    A::ptr(it.as_ptr()),
                    A::ptr(z.as_ptr()),
                    A::ptr(tokens.as_ptr()),
                    A::ptr(parents.as_ptr()),
                    A::ptr(start.as_ptr()),
                    A::ptr(coins.as_ptr()),
                    A::ptr(coin_start.as_ptr()),
                    A::ptr(path.as_mut_ptr()),
                    A::ptr(out.as_mut_ptr()),
                    A::ptr(len.as_mut_ptr()),
                    A::I32(ntrees as i32),
                    A::I32(vocab as i32),
                ],
            )
            .unwrap();
        }
        for (t, (at, tk, pa, c)) in trees.iter().enumerate() {
            let n = tk.len();
            let (wp, wt, margin) = reference::tree_sample_verify(&q[*at..at + n], tk, pa, c);
            total += 1;
            let l = len[t] as usize;
            assert!(l >= 1 && l <= n, "tree {t}: length {l}");
            let gp: Vec<usize> = path[*at..at + l].iter().map(|&x| x as usize).collect();
            let gt = &out[*at..at + l];
            for w in gp.windows(2) {
                assert_eq!(pa[w[1]], w[0] as i32, "tree {t}: the path follows parents");
            }
            assert_eq!(&gt[..l - 1], &gp[1..].iter().map(|&i| tk[i]).collect::<Vec<_>>()[..], "tree {t}: accepted tokens are the path's");
            let last = gt[l - 1] as usize;
            assert!(q[at + gp[l - 1]][last] > 0.0, "tree {t}: drew token {last}, which has no mass");
            if margin > 1e-4 {
                checked += 1;
                assert_eq!((gp.clone(), gt.to_vec()), (wp, wt), "round {round}, tree {t} ({:?})", params[*at]);
            }
            accepted += l - 1;
            depth_max = depth_max.max(l - 1);
        }
    }
    assert!(checked * 10 >= total * 9, "only {checked} of {total} walks were clear of rounding");
    eprintln!("{checked} of {total} walks checked, {accepted} drafts accepted, deepest {depth_max}");
    assert!(accepted > total && depth_max >= 4, "the fixture must accept drafts: {accepted} over {total} trees, deepest {depth_max}");
}

/// The f16 entry points: every 16-bit pattern converts exactly (normals,
/// subnormals, zeros of both signs, infinities, NaNs), and the f16
/// projection matches its reference and is batch invariant like the bf16 one.
#[test]
fn f16_weights_convert_exactly_and_project_like_the_reference() {
    let hidden = 256;
    let table: Vec<half::f16> = (0..=u16::MAX).map(half::f16::from_bits).collect();
    let vocab = table.len() / hidden;
    let ids: Vec<i32> = (0..vocab as i32).chain([-1, vocab as i32]).collect();
    let mut out = vec![0.5f32; ids.len() * hidden];
    unsafe {
        interp::launch(
            "embedding_f16",
            LaunchConfig::linear(ids.len() as u32, 64),
            &[A::ptr(table.as_ptr()), A::ptr(ids.as_ptr()), A::ptr(out.as_mut_ptr()), A::I32(ids.len() as i32), A::I32(hidden as i32), A::I32(vocab as i32)],
        )
        .unwrap();
    }
    let want = reference::embedding_f16(&table, &ids, hidden);
    for (i, (g, w)) in out.iter().zip(&want).enumerate() {
        assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "f16 bits {i:#06x}: {g:e} against {w:e}");
    }
    let mut r = StdRng::seed_from_u64(12);
    for &(rows, n, k, with_bias) in &[(1, 33, 64, false), (11, 70, 200, true)] {
        let x = randv(&mut r, rows * k, 2.0);
        // Values bf16 cannot hold: 11 significant bits, some subnormal.
        let w: Vec<half::f16> = randv(&mut r, n * k, 0.5).into_iter().enumerate().map(|(i, v)| half::f16::from_f32(if i % 97 == 0 { v * 1e-5 } else { v })).collect();
        let b = randv(&mut r, n, 1.0);
        let bias = with_bias.then_some(&b[..]);
        let launch = |x: &[f32], rows: usize, warps: u32| {
            let mut y = vec![f32::NAN; rows * n];
            let cfg = LaunchConfig { grid: (n.div_ceil(warps as usize) as u32, rows.div_ceil(8) as u32, 1), block: (32 * warps, 1, 1), shared_bytes: 0 };
            let bp = bias.map_or(std::ptr::null(), |b| b.as_ptr());
            // The interpreted kernel itself, not its host twin.
            unsafe {
                interp::launch_as(
                    "linear_f16",
                    cfg,
                    &[A::ptr(x.as_ptr()), A::ptr(w.as_ptr()), A::ptr(bp), A::ptr(y.as_mut_ptr()), A::I32(rows as i32), A::I32(n as i32), A::I32(k as i32)],
                    false,
                )
                .unwrap();
            }
            y
        };
        let y = launch(&x, rows, 4);
        assert_close(&y, &reference::linear_f16(&x, &w, bias, k), 1e-4, "linear_f16");
        // The interpreter's host twin gives the kernel's bits.
        let mut twin = vec![f32::NAN; rows * n];
        let cfg = LaunchConfig { grid: (n.div_ceil(4) as u32, rows.div_ceil(8) as u32, 1), block: (128, 1, 1), shared_bytes: 0 };
        let bp = bias.map_or(std::ptr::null(), |b| b.as_ptr());
        unsafe {
            interp::launch_as(
                "linear_f16",
                cfg,
                &[A::ptr(x.as_ptr()), A::ptr(w.as_ptr()), A::ptr(bp), A::ptr(twin.as_mut_ptr()), A::I32(rows as i32), A::I32(n as i32), A::I32(k as i32)],
                true,
            )
            .unwrap();
        }
        assert_eq!(twin, y, "linear_f16 twin, {rows}x{n}x{k}");
        let last = rows - 1;
        assert_eq!(launch(&x[last * k..][..k], 1, 1)[..], y[last * n..][..n], "row {last} of {rows}");
    }
}
