//! The EAGLE trainer end to end on a tiny random target (seconds): features
//! from the target's own greedy answers, a short training run whose loss
//! falls, and a written checkpoint that reloads and drafts better than the
//! untrained head. Plus the checkpoint format round trip: the head Aerie
//! serves from the written file computes what the trainer computed. Each
//! for EAGLE-1/2 and for EAGLE-3 (aux-layer features, its own lm_head over
//! a reduced draft vocabulary written as d2t/t2d), and for an MTP layer
//! (MiMo's layout, written into a whole checkpoint of the target).

use crate::common;
use aerie_draft_worker::eagle::mtp::MtpCheckpoint;
use aerie_draft_worker::eagle::{EagleHead, EagleKind, EagleProposer};
use aerie_draft_worker::train::data::{extract_features, Pending};
use aerie_draft_worker::train::head_model::{HeadShape, TrainHead};
use aerie_draft_worker::train::{train_eagle_validated, write_head, AnswerSource, CacheMeta, DataConfig, FeatureCache, FeatureCacheWriter, TrainConfig};
use aerie_engine::generate::GenerateRequest;
use aerie_engine::spec::{speculative_generate, TreeSpec};
use aerie_engine::{AttnMask, Model, SamplingParams};
use candle_core::{Device, Tensor};
use std::sync::Arc;

const VOCAB: usize = 32;

fn shape(m: &Model) -> HeadShape {
    let c = &m.config;
    HeadShape { hidden: c.hidden_size, heads: c.num_heads, kv_heads: c.num_kv_heads, head_dim: c.head_dim, ff: c.intermediate_size, rms_eps: c.rms_norm_eps as f64, rope_theta: c.rope_theta }
}

fn prompt(i: usize) -> Vec<u32> {
    (0..4).map(|j| ((i * 7 + j * 3 + i * j) % VOCAB) as u32).collect()
}

/// The head in `dir` as Aerie serves it: an EAGLE head directory, or MTP
/// layer 0 of a checkpoint that has one.
fn load_served(dir: &std::path::Path, target: &Model) -> EagleHead {
    match MtpCheckpoint::detect(dir).unwrap() {
        Some(ck) => EagleHead::load_mtp(&ck, 0, target, None).unwrap(),
        None => EagleHead::load(dir, target, None).unwrap(),
    }
}

/// τ of greedy speculation with the head in `dir` over a few prompts.
fn tau(target: &Arc<Model>, dir: &std::path::Path) -> f64 {
    let head = Arc::new(load_served(dir, target));
    let (mut emitted, mut verifies) = (0usize, 0usize);
    for i in 100..106 {
        let mut p = EagleProposer::new(head.clone(), target.clone(), TreeSpec { num_steps: 3, topk: 1, num_draft_tokens: 4 });
        let req = GenerateRequest { prompt_ids: &prompt(i), max_tokens: 40, sampling: SamplingParams::default(), stop_ids: &[] };
        let (out, stats) = speculative_generate(target, &mut p, &req, &mut |_| {}).unwrap();
        emitted += out.token_ids.len() - 1;
        verifies += stats.spec_verify_ct;
    }
    emitted as f64 / verifies as f64
}

/// Features of the target's own greedy answers (48 new tokens) to 48
/// four-token prompts, in a cache at `dir`.
fn greedy_feature_cache(target: &Model, dir: &std::path::Path) -> FeatureCache {
    let meta = CacheMeta { target: target.fingerprint.clone(), hidden_size: target.config.hidden_size, aux_layers: vec![], recipe: "tiny".into() };
    let cfg = DataConfig { max_len: 60, max_new_tokens: 48, batch: 8, source: AnswerSource::Target { temperature: 0.0 }, ..Default::default() };
    let seqs: Vec<Pending> = (0..48).map(|i| Pending { tokens: prompt(i), mask: vec![0; 4] }).collect();
    let mut w = FeatureCacheWriter::open(dir, &meta).unwrap();
    assert_eq!(extract_features(target, &seqs, &cfg, &|_| false, &mut w, &mut |_, _| {}).unwrap(), 48);
    drop(w);
    FeatureCache::open(dir).unwrap()
}

#[test]
fn training_lowers_the_loss_and_the_head_reloads_and_drafts() {
    aerie_kernels::cpu::pool::set_threads(1);
    let target = common::tiny_llama(VOCAB, 5, 3.0);
    let dir = tempfile::tempdir().unwrap();
    let cache = greedy_feature_cache(&target, &dir.path().join("cache"));
    assert_eq!(cache.len(), 48);
    assert_eq!(cache.seq_len(0), 4 + 47, "prompt + the 48 generated tokens but the last (never fed, so no feature)");
    assert_eq!(cache.mask(0).iter().filter(|&&m| m == 1).count(), 47);

    let out = dir.path().join("head");
    let tc = TrainConfig { epochs: 12, lr: 3e-3, warmup_steps: 5, batch_seqs: 4, hot_vocab: VOCAB, checkpoint_every: 1000, ttt_steps: 2, ..Default::default() };
    let logs = aerie_draft_worker::train::train_eagle(&target, &cache, &out, &tc, &mut |_, _| {}).unwrap();
    assert_eq!(logs.len(), 12 * 12);
    let mean = |s: &[aerie_draft_worker::train::StepLog]| s.iter().map(|l| l.loss).sum::<f32>() / s.len() as f32;
    let (first, last) = (mean(&logs[..6]), mean(&logs[logs.len() - 6..]));
    assert!(last < 0.6 * first, "loss {first} -> {last}");
    let acc = |s: &[aerie_draft_worker::train::StepLog]| s.iter().map(|l| l.acc).sum::<f32>() / s.len() as f32;
    assert!(acc(&logs[logs.len() - 6..]) > acc(&logs[..6]), "token accuracy rises");
    let acc_last = |s: &[aerie_draft_worker::train::StepLog]| s.iter().map(|l| l.acc_last).sum::<f32>() / s.len() as f32;
    assert!(acc_last(&logs[logs.len() - 6..]) > acc_last(&logs[..6]), "second-step accuracy rises");
    assert!(out.join("checkpoint/state.safetensors").exists() && out.join("loss.csv").exists() && out.join("hot_vocab.json").exists());

    // The untrained start, written the same way, drafts worse.
    let untrained = dir.path().join("untrained");
    write_head(&untrained, &target, &TrainHead::init(shape(&target), tc.seed, 0.02).unwrap()).unwrap();
    let (t_trained, t_untrained) = (tau(&target, &out), tau(&target, &untrained));
    eprintln!("tiny target: loss {first:.4} -> {last:.4}; tau trained {t_trained:.2}, untrained {t_untrained:.2}");
    assert!(t_trained > t_untrained + 0.2, "trained τ {t_trained} vs untrained {t_untrained}");

    // Resume: a finished run does no more steps and leaves the head as is.
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    assert!(aerie_draft_worker::train::train_eagle(&target, &cache, &out, &tc, &mut |_, _| {}).unwrap().is_empty());
    assert_eq!(before, std::fs::read(out.join("model.safetensors")).unwrap());

    // Warm start: `init` loads a written head, so zero steps from it write it back unchanged.
    let again = dir.path().join("again");
    let warm = TrainConfig { epochs: 0, init: Some(out.clone()), ..tc.clone() };
    assert!(aerie_draft_worker::train::train_eagle(&target, &cache, &again, &warm, &mut |_, _| {}).unwrap().is_empty());
    assert_eq!(before, std::fs::read(again.join("model.safetensors")).unwrap());
    let missing = TrainConfig { init: Some(dir.path().join("nowhere")), ..warm };
    let err = aerie_draft_worker::train::train_eagle(&target, &cache, &dir.path().join("bad"), &missing, &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("nowhere"), "{err}");
}

/// Held-out scoring while training: the first score is taken before any
/// step, the last at the end, and the trained head agrees with the target
/// more often on sequences it never trained on than the untrained one did.
#[test]
fn held_out_accuracy_is_logged_and_rises_with_training() {
    aerie_kernels::cpu::pool::set_threads(1);
    let target = common::tiny_llama(VOCAB, 5, 3.0);
    let dir = tempfile::tempdir().unwrap();
    let meta = CacheMeta { target: target.fingerprint.clone(), hidden_size: target.config.hidden_size, aux_layers: vec![], recipe: "tiny".into() };
    let cfg = DataConfig { max_len: 60, max_new_tokens: 48, batch: 8, source: AnswerSource::Target { temperature: 0.0 }, ..Default::default() };
    let build = |name: &str, ids: std::ops::Range<usize>| {
        let seqs: Vec<Pending> = ids.map(|i| Pending { tokens: prompt(i), mask: vec![0; 4] }).collect();
        let mut w = FeatureCacheWriter::open(&dir.path().join(name), &meta).unwrap();
        extract_features(&target, &seqs, &cfg, &|_| false, &mut w, &mut |_, _| {}).unwrap();
        FeatureCache::open(&dir.path().join(name)).unwrap()
    };
    let (train, held_out) = (build("train", 0..48), build("val", 200..216));
    let out = dir.path().join("head");
    let tc = TrainConfig { epochs: 12, lr: 3e-3, warmup_steps: 5, batch_seqs: 4, hot_vocab: VOCAB, checkpoint_every: 1000, ttt_steps: 2, val_every: 50, ..Default::default() };
    let mut seen = Vec::new();
    train_eagle_validated(&target, &train, Some(&held_out), &out, &tc, &mut |_, _| {}, &mut |step, v| seen.push((step, *v))).unwrap();
    let steps: Vec<usize> = seen.iter().map(|s| s.0).collect();
    assert_eq!(steps, vec![0, 50, 100, 144]);
    let (first, last) = (seen[0].1, seen[3].1);
    assert_eq!(first.rows, 16 * 47, "every generated row of the held-out set is scored");
    eprintln!("held-out: step 0 {first:?}, end {last:?}");
    assert!(last.acc[0] > first.acc[0] + 0.1, "depth-1 accuracy {} -> {}", first.acc[0], last.acc[0]);
    assert!(last.chain_tau() > first.chain_tau(), "chain tau {} -> {}", first.chain_tau(), last.chain_tau());
    assert!(last.topk >= last.acc[0], "top-8 holds the top-1 hits");
    let csv = std::fs::read_to_string(out.join("val.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "a header and one row per score: {csv}");
    assert!(csv.lines().nth(4).unwrap().starts_with("144,"), "{csv}");

    // A held-out cache of another target is refused.
    let other = common::tiny_llama(VOCAB, 6, 3.0);
    let err = train_eagle_validated(&other, &train, Some(&held_out), &dir.path().join("x"), &tc, &mut |_, _| {}, &mut |_, _| {});
    assert!(err.is_err());
}

/// Draft vocabulary of the EAGLE-3 tests: 24 of the 32 ids, out of order,
/// so `d2t` holds real offsets.
fn eagle3_draft_ids() -> Vec<u32> {
    (0..24u32).map(|i| (i * 5 + 3) % VOCAB as u32).collect()
}

/// A tiny target, a random trainable head, and that head written in the
/// published layout and loaded back the way Aerie serves it.
fn written_random_head(target_seed: u64, head_seed: u64, kind: EagleKind) -> (Arc<Model>, TrainHead, EagleHead) {
    aerie_kernels::cpu::pool::set_threads(1);
    let target = common::tiny_llama_layers(VOCAB, target_seed, 1.0, 4);
    let head = match kind {
        EagleKind::Eagle => TrainHead::init(shape(&target), head_seed, 0.3).unwrap(),
        EagleKind::Eagle3 => {
            let ids = eagle3_draft_ids();
            let rows: Vec<f32> = (0..ids.len() * target.config.hidden_size).map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0).collect();
            TrainHead::init_eagle3(shape(&target), head_seed, 0.3, vec![0, 1, 3], ids, rows).unwrap()
        }
        EagleKind::Mtp => TrainHead::init_mtp(shape(&target), head_seed, 0.3).unwrap(),
    };
    let dir = tempfile::tempdir().unwrap();
    write_head(dir.path(), &target, &head).unwrap();
    let served = load_served(dir.path(), &target);
    assert_eq!(served.kind(), kind);
    (target, head, served)
}

/// Input features for `n` rows of a head of `kind` (EAGLE-3 reads 3H).
fn features(kind: EagleKind, n: usize, h: usize, mul: usize, modulo: usize) -> Vec<f32> {
    let w = if kind == EagleKind::Eagle3 { 3 * h } else { h };
    (0..n * w).map(|i| ((i * mul % modulo) as f32 - (modulo / 2) as f32) / 7.0).collect()
}

#[test]
fn written_checkpoint_serves_the_trained_computation() {
    for kind in [EagleKind::Eagle, EagleKind::Eagle3, EagleKind::Mtp] {
        let (target, head, served) = written_random_head(6, 11, kind);
        let h = target.config.hidden_size;
        let n = 9;
        let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 5 + 1) % VOCAB as u32).collect();
        let feats = features(kind, n, h, 37, 23);
        let positions: Vec<u32> = (0..n as u32).collect();
        let mut cache = served.new_cache();
        let x = served.forward(&target, &mut cache, &tokens, &feats, &positions, AttnMask::Causal).unwrap();
        let got = served.logits(&target, &x).unwrap();
        let emb = Tensor::from_vec(target.embed(&tokens).unwrap(), (n, h), &Device::Cpu).unwrap();
        let f = Tensor::from_vec(feats.clone(), (n, feats.len() / n), &Device::Cpu).unwrap();
        let want_x = head.forward(&emb, &f).unwrap();
        let want: Vec<f32> = match kind {
            // The target's lm_head (an MTP layer's output is already normed).
            EagleKind::Eagle | EagleKind::Mtp => target.lm_head(&want_x.flatten_all().unwrap().to_vec1().unwrap()).unwrap(),
            // The head's own lm_head; `lm_hot` is not read.
            EagleKind::Eagle3 => head.logits(&want_x, &Tensor::zeros((1, h), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap(),
        };
        let cols = served.draft_vocab(&target);
        assert_eq!(cols, if kind == EagleKind::Eagle3 { 24 } else { VOCAB });
        assert_eq!(got.len(), n * cols);
        assert_eq!(want.len(), n * cols, "{kind:?}");
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        // f16 weights on disk and 8-bit lm_head activations when served.
        assert!(worst < 0.03 * scale, "{kind:?}: max |Δlogit| {worst} (scale {scale})");
        let argmax = |v: &[f32]| v.chunks(cols).map(|r| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0).collect::<Vec<_>>();
        assert_eq!(argmax(&got), argmax(&want), "{kind:?}");
        if kind == EagleKind::Eagle3 {
            // d2t maps draft rows back to the target ids they were trained on.
            let ids: Vec<u32> = (0..cols as u32).map(|i| served.target_id(i)).collect();
            assert_eq!(ids, eagle3_draft_ids());
        }
    }
}

/// The unrolled training forward (training-time test) computes what the
/// served head computes when it drafts a chain: step `s`, row `c + s` is the
/// depth-`s + 1` draft after committing rows `0..=c`.
#[test]
fn unrolled_steps_equal_served_chain_drafting() {
    for kind in [EagleKind::Eagle, EagleKind::Eagle3, EagleKind::Mtp] {
        unrolled_steps_equal_served_chain(kind);
    }
}

fn unrolled_steps_equal_served_chain(kind: EagleKind) {
    let (target, head, served) = written_random_head(7, 5, kind);
    let h = target.config.hidden_size;
    let (n, steps) = (12, 3);
    let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 11 + 3) % VOCAB as u32).collect();
    let feats = features(kind, n, h, 29, 31);
    let w = feats.len() / n;
    let emb = Tensor::from_vec(target.embed(&tokens).unwrap(), (n, h), &Device::Cpu).unwrap();
    let f = Tensor::from_vec(feats.clone(), (n, w), &Device::Cpu).unwrap();
    let outs: Vec<Vec<f32>> = head.forward_steps(&emb, &f, steps).unwrap().iter().map(|t| t.flatten_all().unwrap().to_vec1().unwrap()).collect();
    for c in [0usize, 4, 8] {
        // Commit rows 0..=c on true features, then draft a chain on the
        // head's own states; each node sees the whole cache (prefix + ancestors).
        let mut cache = served.new_cache();
        let positions: Vec<u32> = (0..=c as u32).collect();
        let y = served.forward(&target, &mut cache, &tokens[..=c], &feats[..(c + 1) * w], &positions, AttnMask::Causal).unwrap();
        let mut state = y[c * h..(c + 1) * h].to_vec();
        let scale = outs[0].iter().fold(0f32, |m, v| m.max(v.abs()));
        for s in 1..steps {
            let t = c + s;
            state = served.forward(&target, &mut cache, &tokens[t..=t], &state, &[t as u32], AttnMask::Causal).unwrap();
            let want = &outs[s][t * h..(t + 1) * h];
            let worst = state.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst < 0.02 * scale, "{kind:?} step {s}, row {t}: max |Δ| {worst} (scale {scale})");
        }
    }
    // The unrolled rows differ from step 0's on the same tokens: the steps
    // really read predicted features.
    let t = 5;
    let d = outs[1][t * h..(t + 1) * h].iter().zip(&outs[0][t * h..(t + 1) * h]).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(d > 0.05, "{kind:?}: step 1 equals step 0 at row {t}");
}

/// EAGLE-3 end to end: aux-layer features of a 4-layer tiny target, a
/// training run whose loss (cross-entropy alone) falls, and a checkpoint
/// with a reduced draft vocabulary that reloads and drafts better than its
/// untrained start. A cache without aux layers is refused.
#[test]
fn eagle3_training_lowers_the_loss_and_the_head_reloads_and_drafts() {
    aerie_kernels::cpu::pool::set_threads(1);
    let target = common::tiny_llama_layers(VOCAB, 5, 3.0, 4);
    let dir = tempfile::tempdir().unwrap();
    let aux = vec![0, 1, 3];
    let meta = CacheMeta { target: target.fingerprint.clone(), hidden_size: target.config.hidden_size, aux_layers: aux.clone(), recipe: "tiny".into() };
    let cfg = DataConfig { max_len: 60, max_new_tokens: 48, batch: 8, source: AnswerSource::Target { temperature: 0.0 }, aux_layers: aux.clone(), ..Default::default() };
    let seqs: Vec<Pending> = (0..48).map(|i| Pending { tokens: prompt(i), mask: vec![0; 4] }).collect();
    let cache_dir = dir.path().join("cache");
    let mut w = FeatureCacheWriter::open(&cache_dir, &meta).unwrap();
    assert_eq!(extract_features(&target, &seqs, &cfg, &|_| false, &mut w, &mut |_, _| {}).unwrap(), 48);
    drop(w);
    let cache = FeatureCache::open(&cache_dir).unwrap();
    assert_eq!(cache.aux(0).unwrap().len(), cache.seq_len(0) * 3 * target.config.hidden_size);

    let out = dir.path().join("head3");
    // The untrained start already drafts (its lm_head is the target's rows),
    // so this run is longer than the EAGLE-1/2 one.
    let tc = TrainConfig { kind: EagleKind::Eagle3, epochs: 24, lr: 1e-2, warmup_steps: 5, batch_seqs: 4, hot_vocab: 24, checkpoint_every: 1000, ttt_steps: 2, ..Default::default() };
    let logs = aerie_draft_worker::train::train_eagle(&target, &cache, &out, &tc, &mut |_, _| {}).unwrap();
    assert_eq!(logs.len(), 24 * 12);
    let mean = |s: &[aerie_draft_worker::train::StepLog], f: fn(&aerie_draft_worker::train::StepLog) -> f32| s.iter().map(f).sum::<f32>() / s.len() as f32;
    let (head, tail) = (&logs[..6], &logs[logs.len() - 6..]);
    let (first, last) = (mean(head, |l| l.loss), mean(tail, |l| l.loss));
    assert!(last < 0.7 * first, "loss {first} -> {last}");
    assert!(logs.iter().all(|l| l.l1 == 0.0), "EAGLE-3 has no feature regression");
    assert!(mean(tail, |l| l.acc) > mean(head, |l| l.acc), "token accuracy rises");
    assert!(mean(tail, |l| l.acc_last) > mean(head, |l| l.acc_last) + 0.03, "second-step accuracy rises");
    assert!(!out.join("hot_vocab.json").exists(), "EAGLE-3 carries its vocabulary in d2t");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLMEagle3");
    assert_eq!(config["draft_vocab_size"], 24);
    assert_eq!(config["eagle_config"]["eagle_aux_hidden_state_layer_ids"], serde_json::json!(aux));

    let served = EagleHead::load(&out, &target, None).unwrap();
    assert_eq!((served.kind(), served.draft_vocab(&target), served.aux_layers.clone()), (EagleKind::Eagle3, 24, aux.clone()));
    let untrained = dir.path().join("untrained3");
    let ids: Vec<u32> = (0..24).map(|i| served.target_id(i)).collect();
    let h = target.config.hidden_size;
    let mut rows = vec![0.0f32; ids.len() * h];
    for (r, &t) in ids.iter().enumerate() {
        target.weights.lm_head().row_f32(t as usize, &mut rows[r * h..(r + 1) * h]);
    }
    write_head(&untrained, &target, &TrainHead::init_eagle3(shape(&target), tc.seed, 0.02, aux.clone(), ids, rows).unwrap()).unwrap();
    let (t_trained, t_untrained) = (tau(&target, &out), tau(&target, &untrained));
    eprintln!("tiny target, EAGLE-3: loss {first:.4} -> {last:.4}; tau trained {t_trained:.2}, untrained {t_untrained:.2}");
    assert!(t_trained > t_untrained + 0.2, "trained τ {t_trained} vs untrained {t_untrained}");

    // Warm start from the written head: zero steps write it back unchanged.
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let warm = TrainConfig { epochs: 0, init: Some(out.clone()), ..tc.clone() };
    assert!(aerie_draft_worker::train::train_eagle(&target, &cache, &dir.path().join("again3"), &warm, &mut |_, _| {}).unwrap().is_empty());
    assert_eq!(before, std::fs::read(dir.path().join("again3/model.safetensors")).unwrap());

    // A cache built for EAGLE-1/2 has no aux layers: refused, with the fix named.
    let plain_meta = CacheMeta { aux_layers: vec![], ..meta };
    let plain_dir = dir.path().join("plain");
    let mut w = FeatureCacheWriter::open(&plain_dir, &plain_meta).unwrap();
    extract_features(&target, &seqs[..4], &DataConfig { aux_layers: vec![], ..cfg }, &|_| false, &mut w, &mut |_, _| {}).unwrap();
    drop(w);
    let err = aerie_draft_worker::train::train_eagle(&target, &FeatureCache::open(&plain_dir).unwrap(), &dir.path().join("bad3"), &tc, &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("--kind eagle3"), "{err}");
}

/// An MTP layer end to end: trained on the same features as an EAGLE head,
/// written as a whole MiMo-layout checkpoint of the target (its body plus
/// `model.mtp_layers.0`) that loads as the target itself, and drafts better
/// than its untrained start.
#[test]
fn mtp_training_writes_a_checkpoint_that_serves_and_drafts_for_itself() {
    aerie_kernels::cpu::pool::set_threads(1);
    let target = common::tiny_llama(VOCAB, 5, 3.0);
    let dir = tempfile::tempdir().unwrap();
    let cache = greedy_feature_cache(&target, &dir.path().join("cache"));
    let out = dir.path().join("mtp");
    let tc = TrainConfig { kind: EagleKind::Mtp, epochs: 12, lr: 3e-3, warmup_steps: 5, batch_seqs: 4, hot_vocab: VOCAB, checkpoint_every: 1000, ttt_steps: 2, ..Default::default() };
    let logs = aerie_draft_worker::train::train_eagle(&target, &cache, &out, &tc, &mut |_, _| {}).unwrap();
    let mean = |s: &[aerie_draft_worker::train::StepLog]| s.iter().map(|l| l.loss).sum::<f32>() / s.len() as f32;
    let (first, last) = (mean(&logs[..6]), mean(&logs[logs.len() - 6..]));
    assert!(last < 0.6 * first, "loss {first} -> {last}");

    // The checkpoint is MiMo's: the target's architecture name, one MTP layer.
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "MiMoForCausalLM");
    assert_eq!(config["num_nextn_predict_layers"], 1);
    let ck = MtpCheckpoint::detect(&out).unwrap().expect("an MTP checkpoint");
    assert_eq!(ck.num_layers, 1);
    // Its body is the target: the same logits (f16 on disk) and argmaxes.
    let loaded = aerie_engine::loader::load(&out, aerie_engine::DType::Auto).unwrap();
    let body = Model::new(loaded.config, loaded.weights, loaded.fingerprint);
    let ids = prompt(3);
    let logits = |m: &Model| {
        let mut c = m.new_cache();
        let seq = aerie_engine::SeqInput { cache: &mut c, tokens: &ids, positions: None, mask: AttnMask::Causal, logits: aerie_engine::LogitsRows::All };
        m.forward(&mut [seq], &aerie_engine::ForwardOptions::default()).unwrap().remove(0).logits
    };
    let (a, b) = (logits(&target), logits(&body));
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(worst < 0.01 * scale, "body logits differ by {worst} (scale {scale})");

    let untrained = dir.path().join("untrained");
    write_head(&untrained, &target, &TrainHead::init_mtp(shape(&target), tc.seed, 0.02).unwrap()).unwrap();
    let (t_trained, t_untrained) = (tau(&target, &out), tau(&target, &untrained));
    eprintln!("tiny target, MTP: loss {first:.4} -> {last:.4}; tau trained {t_trained:.2}, untrained {t_untrained:.2}");
    assert!(t_trained > t_untrained + 0.2, "trained τ {t_trained} vs untrained {t_untrained}");
    assert!(out.join("hot_vocab.json").exists(), "a token map for the layer, as for EAGLE heads");

    // Warm start from the written checkpoint: zero steps write it back unchanged.
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let warm = TrainConfig { epochs: 0, init: Some(out.clone()), ..tc.clone() };
    assert!(aerie_draft_worker::train::train_eagle(&target, &cache, &dir.path().join("again"), &warm, &mut |_, _| {}).unwrap().is_empty());
    assert_eq!(before, std::fs::read(dir.path().join("again/model.safetensors")).unwrap());
}
