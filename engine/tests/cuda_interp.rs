//! The CUDA forward pass in interpreter mode (the same host code and `.cu`
//! kernels a GPU runs), on tiny random Llama models: logits against the CPU
//! f32 forward, tree verification bit for bit equal to decoding each path
//! token by token, and accepted-path compaction.

use aerie_engine::config::{Arch, Llama3Scaling, ModelConfig, RopeStyle};
use aerie_engine::cuda::{CudaModel, CudaSeqInput};
use aerie_engine::weights::{LayerWeights, ModelWeights};
use aerie_engine::{AttnMask, ForwardOptions, LogitsRows, Model, SeqInput};
use aerie_kernels::cpu::Matrix;
use aerie_kernels::cuda::device::InterpDevice;
use crate::common;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::sync::Arc;

fn config(arch: Arch, style: RopeStyle, tie: bool) -> ModelConfig {
    ModelConfig {
        arch,
        hidden_size: 64,
        intermediate_size: 96,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        vocab_size: 300,
        max_position_embeddings: 512,
        rope_theta: 10000.0,
        rope_scaling: (arch == Arch::Llama).then_some(Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64.0,
        }),
        rope_freq_factors: None,
        rope_style: style,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: tie,
        attention_bias: arch == Arch::Qwen2,
    }
}

/// Random weights, already rounded to bf16 so that the CPU f32 model and
/// the device's bf16 copy hold the same values.
fn random_model(cfg: ModelConfig, seed: u64) -> Model {
    random_model_rounded(cfg, seed, |x| half::bf16::from_f32(x).to_f32())
}

/// [`random_model`] with matrices rounded by `round` (to what a device
/// format holds).
fn random_model_rounded(cfg: ModelConfig, seed: u64, round: fn(f32) -> f32) -> Model {
    let mut r = StdRng::seed_from_u64(seed);
    let mut mat = |rows: usize, cols: usize, scale: f32| {
        let data = (0..rows * cols).map(|_| round(r.gen_range(-scale..scale))).collect();
        Matrix::f32(rows, cols, data).unwrap()
    };
    let (h, hd, i) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let s = 1.0 / (h as f32).sqrt();
    let embed = mat(cfg.vocab_size, h, 1.0);
    let mut layers = Vec::new();
    for _ in 0..cfg.num_layers {
        let qkv = (mat(cfg.num_heads * hd, h, s), mat(cfg.num_kv_heads * hd, h, s), mat(cfg.num_kv_heads * hd, h, s));
        let bias = |n: usize, seed: u64| {
            let mut rb = StdRng::seed_from_u64(seed);
            cfg.attention_bias.then(|| (0..n).map(|_| rb.gen_range(-0.1f32..0.1)).collect::<Vec<f32>>())
        };
        let biases = (bias(cfg.num_heads * hd, 1), bias(cfg.num_kv_heads * hd, 2), bias(cfg.num_kv_heads * hd, 3));
        let norm = |seed: u64| {
            let mut rn = StdRng::seed_from_u64(seed);
            (0..h).map(|_| rn.gen_range(0.5f32..1.5)).collect::<Vec<f32>>()
        };
        let wo = mat(h, cfg.num_heads * hd, s);
        let (gate, up, down) = (mat(i, h, s), mat(i, h, s), mat(h, i, 1.0 / (i as f32).sqrt()));
        layers.push(LayerWeights::new(norm(4), qkv, biases, wo, norm(5), gate, up, down));
    }
    let lm_head = (!cfg.tie_word_embeddings).then(|| mat(cfg.vocab_size, h, s));
    let final_norm = vec![1.0; h];
    Model::new(cfg, ModelWeights { embed, layers, final_norm, lm_head }, "random".into())
}

fn device_model(model: &Model) -> CudaModel {
    CudaModel::from_model(model, common::test_device(64 << 20), 1024).unwrap()
}

fn tokens(r: &mut StdRng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| r.gen_range(0..vocab as u32)).collect()
}

#[test]
fn device_logits_match_the_cpu_f32_forward() {
    let mut r = StdRng::seed_from_u64(11);
    for (arch, style, tie) in [(Arch::Llama, RopeStyle::HalfSplit, false), (Arch::Qwen2, RopeStyle::HalfSplit, true), (Arch::Llama, RopeStyle::Interleaved, true)] {
        let model = random_model(config(arch, style, tie), 12);
        let dm = device_model(&model);
        let prompt = tokens(&mut r, 21, 300);
        let next = tokens(&mut r, 4, 300);
        let mut cache = model.new_cache();
        let mut seq = dm.new_seq();
        let mut worst = 0.0f32;
        for (step, toks) in std::iter::once(&prompt[..]).chain(next.chunks(1)).enumerate() {
            let cpu = model
                .forward(&mut [SeqInput { cache: &mut cache, tokens: toks, positions: None, mask: AttnMask::Causal, logits: LogitsRows::All }], &ForwardOptions::default())
                .unwrap();
            let dev = dm.forward(&mut [CudaSeqInput { seq: &mut seq, tokens: toks, positions: None, mask: AttnMask::Causal, logits: LogitsRows::All }], false).unwrap();
            assert_eq!(dev[0].logits.len(), cpu[0].logits.len());
            for (row, (c, d)) in cpu[0].logits.chunks(300).zip(dev[0].logits.chunks(300)).enumerate() {
                let err = c.iter().zip(d).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                worst = worst.max(err);
                // The device keeps K and V in bf16 (the CPU in f16): ~3 significant digits.
                assert!(err < 5e-2, "{arch:?} {style:?}: step {step} row {row}: max |logit difference| {err}");
            }
        }
        assert_eq!(seq.len(), cache.len());
        eprintln!("{arch:?} {style:?} tied={tie}: worst |logit difference| {worst:.2e}");
    }
}

/// The library-GEMM mode (cuBLAS on a GPU, the reference GEMM in the
/// interpreter; bf16 activations) computes the same model as the
/// batch-invariant kernels, to bf16 rounding; switching back gives the
/// invariant logits bit for bit again.
#[test]
fn the_library_gemm_mode_computes_the_same_model() {
    let mut r = StdRng::seed_from_u64(14);
    for (arch, tie) in [(Arch::Llama, false), (Arch::Qwen2, true)] {
        let model = random_model(config(arch, RopeStyle::HalfSplit, tie), 15);
        let dm = device_model(&model);
        let prompt = tokens(&mut r, 13, 300);
        let run = |dm: &CudaModel| {
            let mut seq = dm.new_seq();
            dm.forward(&mut [CudaSeqInput { seq: &mut seq, tokens: &prompt, positions: None, mask: AttnMask::Causal, logits: LogitsRows::All }], false).unwrap().remove(0).logits
        };
        assert!(dm.batch_invariant(), "batch invariance is the default");
        let invariant = run(&dm);
        dm.set_batch_invariant(false);
        let library = run(&dm);
        dm.set_batch_invariant(true);
        assert_eq!(run(&dm), invariant, "{arch:?}: back to the invariant kernels");
        let (mut worst, mut same_top) = (0.0f32, 0);
        for (a, b) in invariant.chunks(300).zip(library.chunks(300)) {
            worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(worst, f32::max);
            same_top += (aerie_kernels::cpu::ops::argmax(a).0 == aerie_kernels::cpu::ops::argmax(b).0) as usize;
        }
        eprintln!("{arch:?}: library GEMM against the invariant kernels: worst |logit difference| {worst:.2e}, top-1 equal on {same_top}/13 rows");
        assert!(worst > 0.0, "{arch:?}: the library path did not run (identical bits)");
        assert!(worst < 0.1, "{arch:?}: max |logit difference| {worst}");
        assert!(same_top >= 12, "{arch:?}: top-1 equal on only {same_top} of 13 rows");
    }
}

/// A random tree of `n` nodes, parents before children.
fn random_parents(r: &mut StdRng, n: usize) -> Vec<Option<usize>> {
    (0..n).map(|i| if i == 0 { None } else if r.gen_bool(0.15) { None } else { Some(r.gen_range(0..i)) }).collect()
}

fn path_to(parents: &[Option<usize>], mut n: usize) -> Vec<usize> {
    let mut p = vec![n];
    while let Some(q) = parents[n] {
        p.push(q);
        n = q;
    }
    p.reverse();
    p
}

#[test]
fn a_16_node_tree_gives_each_node_the_logits_of_its_path_decoded_alone() {
    let mut r = StdRng::seed_from_u64(13);
    let model = random_model(config(Arch::Llama, RopeStyle::HalfSplit, false), 14);
    let dm = device_model(&model);
    let prompt = tokens(&mut r, 19, 300);
    let parents = random_parents(&mut r, 16);
    let tree_tokens = tokens(&mut r, 16, 300);
    let mask = AttnMask::from_parents(&parents).unwrap();
    let depth = |n: usize| path_to(&parents, n).len() - 1;
    let positions: Vec<u32> = (0..16).map(|n| (prompt.len() + depth(n)) as u32).collect();

    let mut seq = dm.new_seq();
    dm.forward(&mut [CudaSeqInput { seq: &mut seq, tokens: &prompt, positions: None, mask: AttnMask::Causal, logits: LogitsRows::None }], false).unwrap();
    // The tree shares its forward with an unrelated sequence's prefill.
    let mut other = dm.new_seq();
    let other_tokens = tokens(&mut r, 7, 300);
    let out = dm
        .forward(
            &mut [
                CudaSeqInput { seq: &mut other, tokens: &other_tokens, positions: None, mask: AttnMask::Causal, logits: LogitsRows::All },
                CudaSeqInput { seq: &mut seq, tokens: &tree_tokens, positions: Some(&positions), mask, logits: LogitsRows::All },
            ],
            false,
        )
        .unwrap();
    let tree_logits = &out[1].logits;
    for n in 0..16 {
        let mut alone = dm.new_seq();
        dm.forward(&mut [CudaSeqInput { seq: &mut alone, tokens: &prompt, positions: None, mask: AttnMask::Causal, logits: LogitsRows::None }], false).unwrap();
        let mut last = Vec::new();
        for &node in &path_to(&parents, n) {
            let o = dm
                .forward(&mut [CudaSeqInput { seq: &mut alone, tokens: &[tree_tokens[node]], positions: None, mask: AttnMask::Causal, logits: LogitsRows::Last }], false)
                .unwrap();
            last = o[0].logits.clone();
        }
        assert_eq!(last[..], tree_logits[n * 300..(n + 1) * 300], "node {n}: tree logits differ from its path decoded token by token");
    }
}

#[test]
fn keeping_an_accepted_path_continues_like_decoding_it() {
    let mut r = StdRng::seed_from_u64(15);
    let model = random_model(config(Arch::Qwen2, RopeStyle::HalfSplit, true), 16);
    let dm = device_model(&model);
    let prompt = tokens(&mut r, 40, 300); // crosses two page boundaries
    // A tree: 0 <- 1 <- 3, 0 <- 2, 1 <- 4; accept the path 0, 1, 3.
    let parents = vec![None, Some(0), Some(0), Some(1), Some(1)];
    let tree_tokens = tokens(&mut r, 5, 300);
    let positions: Vec<u32> = [0u32, 1, 1, 2, 2].iter().map(|d| prompt.len() as u32 + d).collect();
    let next = tokens(&mut r, 3, 300);

    let mut spec = dm.new_seq();
    dm.forward(&mut [CudaSeqInput { seq: &mut spec, tokens: &prompt, positions: None, mask: AttnMask::Causal, logits: LogitsRows::None }], false).unwrap();
    let mask = AttnMask::from_parents(&parents).unwrap();
    dm.forward(&mut [CudaSeqInput { seq: &mut spec, tokens: &tree_tokens, positions: Some(&positions), mask, logits: LogitsRows::All }], false).unwrap();
    spec.keep_rows(prompt.len(), &[0, 1, 3]).unwrap();
    assert_eq!(spec.len(), prompt.len() + 3);
    let after_spec = dm.forward(&mut [CudaSeqInput { seq: &mut spec, tokens: &next, positions: None, mask: AttnMask::Causal, logits: LogitsRows::All }], false).unwrap();

    let mut plain = dm.new_seq();
    let path: Vec<u32> = prompt.iter().copied().chain([tree_tokens[0], tree_tokens[1], tree_tokens[3]]).collect();
    dm.forward(&mut [CudaSeqInput { seq: &mut plain, tokens: &path, positions: None, mask: AttnMask::Causal, logits: LogitsRows::None }], false).unwrap();
    let after_plain = dm.forward(&mut [CudaSeqInput { seq: &mut plain, tokens: &next, positions: None, mask: AttnMask::Causal, logits: LogitsRows::All }], false).unwrap();
    assert_eq!(after_spec[0].logits, after_plain[0].logits);
    assert!(spec.keep_rows(prompt.len(), &[1, 0]).is_err(), "rows must be increasing");
}

#[test]
fn the_kv_pool_is_bounded_and_pages_come_back() {
    let model = random_model(config(Arch::Llama, RopeStyle::HalfSplit, false), 17);
    // 64 tokens: four pages.
    let dm = CudaModel::from_model(&model, common::test_device(64 << 20), 64).unwrap();
    let free = dm.pool.free_pages();
    assert_eq!(free, 4);
    let toks: Vec<u32> = (0..50).collect();
    let mut a = dm.new_seq();
    dm.forward(&mut [CudaSeqInput { seq: &mut a, tokens: &toks, positions: None, mask: AttnMask::Causal, logits: LogitsRows::None }], false).unwrap();
    assert_eq!(dm.pool.free_pages(), 0);
    let mut b = dm.new_seq();
    let err = dm.forward(&mut [CudaSeqInput { seq: &mut b, tokens: &toks[..20], positions: None, mask: AttnMask::Causal, logits: LogitsRows::None }], false).unwrap_err();
    assert_eq!(err.error_type(), "kv_cache_full", "{err}");
    a.truncate(17);
    assert_eq!(dm.pool.free_pages(), 2);
    drop(a);
    assert_eq!(dm.pool.free_pages(), 4);
    // A device too small for the weights says what it needed.
    let err = CudaModel::from_model(&model, Arc::new(InterpDevice::new(10_000)), 64).err().unwrap();
    assert!(err.to_string().contains("out of device memory"), "{err}");
    // Bad input is refused before anything runs.
    let mut c = dm.new_seq();
    let bad = dm.forward(&mut [CudaSeqInput { seq: &mut c, tokens: &[300], positions: None, mask: AttnMask::Causal, logits: LogitsRows::None }], false);
    assert_eq!(bad.unwrap_err().error_type(), "invalid_input");
    assert_eq!(c.len(), 0);
}

/// `lm_head_argmax` (the greedy verification path: only ids leave the
/// device) gives the argmax of the device's own logits, the first on ties,
/// and on the CPU the argmax of the CPU's.
#[test]
fn the_devices_greedy_ids_are_the_argmax_of_its_logits() {
    let mut r = StdRng::seed_from_u64(5);
    for tie in [false, true] {
        let model = random_model(config(Arch::Llama, RopeStyle::HalfSplit, tie), 3);
        let dm = device_model(&model);
        let h = model.config.hidden_size;
        let mut rows: Vec<f32> = (0..5 * h).map(|_| r.gen_range(-2.0f32..2.0)).collect();
        rows.extend(vec![0.0; h]); // all logits equal: the first index
        for (name, logits, ids) in [
            ("device", dm.lm_head(&rows).unwrap(), dm.lm_head_argmax(&rows).unwrap()),
            ("cpu", model.lm_head(&rows).unwrap(), model.lm_head_argmax(&rows).unwrap()),
        ] {
            let want: Vec<u32> = logits.chunks(300).map(|l| aerie_kernels::cpu::ops::argmax(l).0 as u32).collect();
            assert_eq!(ids, want, "{name} tied={tie}");
            assert_eq!(ids[5], 0, "{name}: a row of equal logits picks index 0");
        }
    }
}

/// EAGLE-3's features on the device: the residual stream after each
/// requested layer, in layer order, for every new token of every sequence of
/// a batch, as the CPU f32 forward gives them.
#[test]
fn aux_layer_features_match_the_cpu_forward() {
    let cfg = config(Arch::Llama, RopeStyle::HalfSplit, false);
    let cpu = random_model(cfg.clone(), 21);
    let dev = random_model(cfg, 21).to_device(common::test_device(64 << 20), 512).unwrap();
    let mut r = StdRng::seed_from_u64(2);
    let (a, b) = (tokens(&mut r, 9, 300), tokens(&mut r, 4, 300));
    let opts = ForwardOptions { want_hidden: true, aux_layers: vec![1, 0] };
    let run = |m: &Model| {
        let (mut ca, mut cb) = (m.new_cache(), m.new_cache());
        m.forward(
            &mut [
                SeqInput { cache: &mut ca, tokens: &a, positions: None, mask: AttnMask::Causal, logits: LogitsRows::None },
                SeqInput { cache: &mut cb, tokens: &b, positions: None, mask: AttnMask::Causal, logits: LogitsRows::Last },
            ],
            &opts,
        )
        .unwrap()
    };
    let (want, got) = (run(&cpu), run(&dev));
    for (s, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(g.aux.len(), 2, "sequence {s}: two aux layers");
        for (layer, (wa, ga)) in w.aux.iter().zip(&g.aux).enumerate() {
            assert_eq!(wa.len(), ga.len(), "sequence {s} layer {layer}");
            let scale = wa.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
            let err = wa.iter().zip(ga).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(err < 2e-2 * scale.max(1.0), "sequence {s} layer {layer}: max difference {err} (scale {scale})");
        }
        assert_eq!(w.hidden.len(), g.hidden.len());
    }
}

/// Sampled verification on the device (`cuda::sample`: the lm_head, the
/// sampling distribution and the rejection-sampling walk all on the device)
/// gives, for the same seed, the path and tokens the host's `sample_verify`
/// gives over the device's own logits: the coins are the request's seeded
/// source in the host walk's order. Sums round differently on each side, so
/// a coin within rounding of a boundary may fall either way; nearly all
/// walks must agree, and every tree's result must be the same alone as in a
/// batch of trees (rows are independent).
#[test]
fn sampled_verification_on_the_device_walks_as_the_host_does() {
    use aerie_engine::cuda::sample::{coins_needed, TreeToSample};
    use aerie_engine::sampling::{target_probs, Sampler};
    use aerie_engine::spec::{sample_verify, DraftTree};
    use aerie_engine::SamplingParams;
    let mut r = StdRng::seed_from_u64(40);
    let model = random_model(config(Arch::Llama, RopeStyle::HalfSplit, false), 41);
    let dm = device_model(&model);
    let (h, vocab) = (model.config.hidden_size, model.config.vocab_size);
    let settings = [
        SamplingParams { temperature: 0.7, ..Default::default() },
        SamplingParams { temperature: 1.0, top_k: 6, top_p: 0.9, ..Default::default() },
        SamplingParams { temperature: 1.3, min_p: 0.05, ..Default::default() },
    ];
    let (mut agree, mut total, mut accepted) = (0, 0, 0);
    for round in 0..8 {
        // Trees of 1 (a plain sampled decode step) to 16 nodes whose
        // children are their parent's likely tokens, over random hidden
        // states large enough for peaked distributions.
        let mut trees = Vec::new();
        for k in 0..4 {
            let n = if k == 0 { 1 } else { r.gen_range(2..=16) };
            let hidden: Vec<f32> = (0..n * h).map(|_| r.gen_range(-12.0f32..12.0)).collect();
            let logits = dm.lm_head(&hidden).unwrap();
            let (mut tokens, mut parents) = (vec![r.gen_range(0..vocab as u32)], vec![None]);
            for c in 1..n {
                let p = if r.gen_bool(0.6) { c - 1 } else { r.gen_range(0..c) };
                let row = &logits[p * vocab..(p + 1) * vocab];
                let mut idx: Vec<u32> = (0..vocab as u32).collect();
                idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
                tokens.push(idx[r.gen_range(0..3)]);
                parents.push(Some(p));
            }
            let tree = DraftTree::from_parents(tokens, parents).unwrap();
            let params = settings[(round + k) % settings.len()].clone();
            let seed = 1000 * round as u64 + k as u64;
            trees.push((hidden, logits, tree, params, seed));
        }
        let coins: Vec<Vec<f32>> = trees.iter().map(|t| {
            let mut s = Sampler::new(Some(t.4));
            (0..coins_needed(&t.2)).map(|_| s.uniform()).collect()
        }).collect();
        let jobs: Vec<TreeToSample> =
            trees.iter().zip(&coins).map(|(t, c)| TreeToSample { hidden: &t.0, tree: &t.2, params: &t.3, coins: c }).collect();
        let batched = dm.sample_trees(&jobs).unwrap();
        for (k, ((hidden, logits, tree, params, seed), job)) in trees.iter().zip(&jobs).enumerate() {
            let alone = dm.sample_trees(std::slice::from_ref(job)).unwrap();
            assert_eq!(alone[0], batched[k], "round {round}, tree {k}: alone and batched differ");
            let _ = hidden;
            let mut sampler = Sampler::new(Some(*seed));
            let host = sample_verify(tree, &mut |i| target_probs(&logits[i * vocab..(i + 1) * vocab], params), &mut sampler);
            total += 1;
            agree += usize::from(host == batched[k]);
            accepted += batched[k].num_correct_drafts();
            let a = &batched[k];
            assert_eq!(a.tokens.len(), a.path.len());
            for (w, t) in a.path.windows(2).zip(&a.tokens) {
                assert_eq!(tree.parents[w[1]], Some(w[0]));
                assert_eq!(tree.tokens[w[1]], *t);
            }
            let last = *a.path.last().unwrap();
            let q = target_probs(&logits[last * vocab..(last + 1) * vocab], params);
            assert!(q[*a.tokens.last().unwrap() as usize] > 0.0, "round {round}, tree {k}: a token outside the kept set");
        }
    }
    eprintln!("device and host walks agree on {agree} of {total} trees; {accepted} drafts accepted");
    assert!(agree * 100 >= total * 97, "only {agree} of {total} walks agree");
    assert!(accepted >= total / 2, "the fixture must accept drafts: {accepted} over {total} trees");
}

/// Plain sampled decoding on the device draws each token there (a tree of
/// one node): a seed gives the same tokens every run, and other seeds
/// other tokens.
#[test]
fn plain_sampled_decoding_on_the_device_is_seeded() {
    use aerie_engine::generate::{generate, GenerateRequest};
    use aerie_engine::SamplingParams;
    let model = random_model(config(Arch::Llama, RopeStyle::HalfSplit, false), 51);
    let model = model.to_device(common::test_device(64 << 20), 512).unwrap();
    let run = |seed: u64| {
        let sampling = SamplingParams { temperature: 1.5, top_p: 0.95, seed: Some(seed), ..Default::default() };
        let req = GenerateRequest { prompt_ids: &[5, 9, 200, 17], max_tokens: 12, sampling, stop_ids: &[] };
        generate(&model, &req, &mut |_| {}).unwrap().token_ids
    };
    let a = run(3);
    assert_eq!(a.len(), 12);
    assert_eq!(model.cuda().unwrap().trees_sampled(), 12, "every token was drawn on the device");
    assert_eq!(a, run(3));
    let others: Vec<Vec<u32>> = (4..8).map(run).collect();
    assert!(others.iter().any(|o| *o != a), "four other seeds all gave {a:?}");
}

/// `--dtype float16`: weight matrices held as f16 on the device. On an f16
/// model the device's f16 logits follow the CPU f32 forward more closely
/// than a bf16 copy of the same weights does (f16 holds them exactly, bf16
/// drops three bits of each), and the format keeps projections batch
/// invariant (the library GEMM takes bf16 only).
#[test]
fn f16_weights_hold_an_f16_model_exactly() {
    use aerie_engine::cuda::WeightFormat;
    let mut r = StdRng::seed_from_u64(61);
    let model = random_model_rounded(config(Arch::Llama, RopeStyle::HalfSplit, false), 62, |x| half::f16::from_f32(x).to_f32());
    let prompt = tokens(&mut r, 24, 300);
    let mut cache = model.new_cache();
    let cpu = model
        .forward(&mut [SeqInput { cache: &mut cache, tokens: &prompt, positions: None, mask: AttnMask::Causal, logits: LogitsRows::All }], &ForwardOptions::default())
        .unwrap();
    let mut worst = Vec::new();
    for format in [WeightFormat::F16, WeightFormat::Bf16] {
        let dm = CudaModel::from_model_as(&model, common::test_device(64 << 20), 1024, format).unwrap();
        assert_eq!(dm.weight_format(), format);
        dm.set_batch_invariant(false);
        assert_eq!(dm.batch_invariant(), format == WeightFormat::F16, "{format:?}");
        dm.set_batch_invariant(true);
        let mut seq = dm.new_seq();
        let dev = dm.forward(&mut [CudaSeqInput { seq: &mut seq, tokens: &prompt, positions: None, mask: AttnMask::Causal, logits: LogitsRows::All }], false).unwrap();
        let err = cpu[0].logits.iter().zip(&dev[0].logits).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("{format:?}: worst |logit difference| from the CPU f32 forward {err:.2e}");
        assert!(err < 5e-2, "{format:?}: {err}");
        worst.push(err);
    }
    assert!(worst[0] < 0.5 * worst[1], "f16 {} against bf16 {}", worst[0], worst[1]);
    // A weight f16 cannot hold is refused with the reason, not held as inf.
    let mut big = random_model(config(Arch::Llama, RopeStyle::HalfSplit, true), 63);
    let mut data = big.weights.embed.to_f32_vec();
    data[7] = 1.0e5;
    big.weights.embed = Matrix::f32(300, 64, data).unwrap();
    let err = CudaModel::from_model_as(&big, common::test_device(64 << 20), 256, WeightFormat::F16).err().expect("refused").to_string();
    assert!(err.contains("float16") && err.contains("bfloat16"), "{err}");
    assert!(CudaModel::from_model_as(&big, common::test_device(64 << 20), 256, WeightFormat::Bf16).is_ok());
}
