//! Draft heads on the CUDA path (interpreter mode: the host code and `.cu`
//! kernels a GPU runs, executed on the CPU): each kind computes what it
//! computes on the host, up to bf16 rounding, through a catch-up over
//! target features and two tree steps whose rows see a committed prefix plus
//! their own uncommitted ancestors; and a sequence's draft states do not
//! depend on what else shares the call.

use crate::common;
use aerie_draft_worker::eagle::{tree_rows_mask as tree_rows, EagleHead, EagleKind};
use aerie_engine::{AttnMask, ForwardOptions, LogitsRows, Model, SeqInput};
use aerie_kernels::cuda::device::InterpDevice;
use std::path::PathBuf;
use std::sync::Arc;

fn interp() -> Arc<InterpDevice> {
    Arc::new(InterpDevice::new(1 << 30))
}

/// Target features of the first `n` tokens of `ids`: the final hidden state,
/// or EAGLE-3's three aux layers side by side.
fn features(target: &Model, ids: &[u32], aux: &[usize]) -> Vec<f32> {
    let mut c = target.new_cache();
    let opts = ForwardOptions { want_hidden: aux.is_empty(), aux_layers: aux.to_vec() };
    let out = target.forward(&mut [SeqInput { cache: &mut c, tokens: ids, positions: None, mask: AttnMask::Causal, logits: LogitsRows::None }], &opts).unwrap().remove(0);
    if aux.is_empty() {
        return out.hidden;
    }
    let h = target.config.hidden_size;
    (0..ids.len()).flat_map(|t| out.aux.iter().flat_map(move |a| a[t * h..(t + 1) * h].to_vec())).collect()
}

/// The output states and draft logits of a catch-up over six tokens and
/// two tree steps (three siblings, then a child of the first and one of
/// the third).
fn run(head: &EagleHead, target: &Model, ids: &[u32], feats: &[f32]) -> Vec<(Vec<f32>, Vec<f32>)> {
    let h = head.llama().hidden_size;
    let mut cache = head.new_cache();
    let pos: Vec<u32> = (0..6).collect();
    let x0 = head.forward(target, &mut cache, &ids[1..7], feats, &pos, AttnMask::Causal).unwrap();
    let last = x0[5 * h..].to_vec();
    let s1: Vec<f32> = last.repeat(3);
    let x1 = head.forward(target, &mut cache, &ids[7..10], &s1, &[6, 6, 6], tree_rows(6, 6, &[vec![], vec![], vec![]])).unwrap();
    let s2: Vec<f32> = [&x1[..h], &x1[2 * h..]].concat();
    let x2 = head.forward(target, &mut cache, &ids[10..12], &s2, &[7, 7], tree_rows(6, 9, &[vec![6], vec![8]])).unwrap();
    assert_eq!(cache.len(), 11);
    [x0, x1, x2].into_iter().map(|x| (head.logits(target, &x).unwrap(), x)).map(|(l, x)| (x, l)).collect()
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let d: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let n: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (d / n.max(1e-30)).sqrt()
}

/// Loads a head twice, on the host (f32) and on the interpreted device, and
/// compares every output of [`run`].
fn compare(label: &str, load: &dyn Fn() -> EagleHead, target: &Model, ids: &[u32]) {
    let host = load();
    let dev = load().to_device(target, interp(), 4096).unwrap();
    assert!(dev.device_name().contains("interpreted"), "{label}: {}", dev.device_name());
    let aux = host.aux_layers.clone();
    let feats = features(target, &ids[..6], &aux);
    let (want, got) = (run(&host, target, ids, &feats), run(&dev, target, ids, &feats));
    let vocab = host.draft_vocab(target);
    let (mut rows, mut same) = (0, 0);
    for (step, ((xw, lw), (xg, lg))) in want.iter().zip(&got).enumerate() {
        let (ex, el) = (rel_err(xg, xw), rel_err(lg, lw));
        eprintln!("{label} step {step}: states rel. error {ex:.2e}, logits {el:.2e}");
        // bf16 weights and KV against f32: about 2^-8 per value.
        assert!(ex < 0.01 && el < 0.03, "{label} step {step}: states {ex}, logits {el}");
        for (a, b) in lw.chunks(vocab).zip(lg.chunks(vocab)) {
            rows += 1;
            same += (aerie_kernels::cpu::ops::argmax(a).0 == aerie_kernels::cpu::ops::argmax(b).0) as usize;
        }
    }
    assert!(same * 10 >= rows * 8, "{label}: the top draft token agrees on only {same} of {rows} rows");
    // The device's own top-k (only the pairs leave it) is the top-k of its
    // logits, as the host picks it (target ids, probabilities to f32).
    for (x, l) in &got {
        let on_device = dev.top_k(target, x, 8).unwrap();
        for (row, (picked, logits)) in on_device.iter().zip(l.chunks(vocab)).enumerate() {
            let mut p = logits.to_vec();
            aerie_kernels::cpu::ops::softmax(&mut p);
            let mut order: Vec<usize> = (0..vocab).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            let want: Vec<u32> = order[..8].iter().map(|&i| dev.target_id(i as u32)).collect();
            let ids: Vec<u32> = picked.iter().map(|t| t.0).collect();
            assert_eq!(ids, want, "{label} row {row}: device top-8");
            for (&(_, q), &i) in picked.iter().zip(&order[..8]) {
                // The host softmax uses a fast exp: about 1e-4 apart.
                assert!((q - p[i]).abs() <= 1e-5 + 1e-3 * p[i], "{label} row {row}: probability {q}, want {}", p[i]);
            }
        }
    }
}

fn shipped_head_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/smollm2-135m-eagle")
}

fn smollm2_ids() -> Vec<u32> {
    let mut ids = common::prompt_ids(0);
    ids.truncate(12);
    ids
}

#[test]
fn the_shipped_eagle_head_computes_the_same_on_the_device() {
    let target = &common::smollm2().model;
    compare("EAGLE (shipped)", &|| EagleHead::load(&shipped_head_dir(), target, None).unwrap(), target, &smollm2_ids());
}

#[test]
fn an_eagle3_head_computes_the_same_on_the_device() {
    let target = &common::smollm2().model;
    let dir = common::random_head(EagleKind::Eagle3);
    compare("EAGLE-3 (random, 16k draft vocabulary)", &|| EagleHead::load(&dir, target, None).unwrap(), target, &smollm2_ids());
}

#[test]
fn an_mtp_layer_computes_the_same_on_the_device() {
    let dir = tempfile::tempdir().unwrap();
    crate::mtp::write_mimo(dir.path(), 3);
    let target = crate::mtp::load_target(dir.path());
    let ck = aerie_draft_worker::eagle::mtp::MtpCheckpoint::detect(dir.path()).unwrap().unwrap();
    let ids: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % target.config.vocab_size as u32).collect();
    compare("MTP (MiMo layout, random)", &|| EagleHead::load_mtp(&ck, 0, &target, None).unwrap(), &target, &ids);
}

/// Two sequences in one call get, bit for bit, the states each gets alone.
#[test]
fn a_sequence_drafts_the_same_whatever_shares_the_call_on_the_device() {
    use aerie_draft_worker::eagle::HeadRows;
    let target = &common::smollm2().model;
    let head = EagleHead::load(&shipped_head_dir(), target, None).unwrap().to_device(target, interp(), 4096).unwrap();
    let ids = smollm2_ids();
    let feats = features(target, &ids, &[]);
    let h = head.llama().hidden_size;
    let alone = |n: usize| {
        let mut c = head.new_cache();
        let pos: Vec<u32> = (0..n as u32).collect();
        head.forward(target, &mut c, &ids[..n], &feats[..n * h], &pos, AttnMask::Causal).unwrap()
    };
    let (a, b) = (alone(5), alone(11));
    let (mut ca, mut cb) = (head.new_cache(), head.new_cache());
    let (pa, pb): (Vec<u32>, Vec<u32>) = ((0..5).collect(), (0..11).collect());
    let mut rows = [
        HeadRows { cache: &mut ca, tokens: &ids[..5], states: &feats[..5 * h], positions: &pa, mask: AttnMask::Causal },
        HeadRows { cache: &mut cb, tokens: &ids[..11], states: &feats[..11 * h], positions: &pb, mask: AttnMask::Causal },
    ];
    let both = head.forward_many(target, &mut rows).unwrap();
    assert_eq!(both[0], a, "the 5-token sequence changed beside another");
    assert_eq!(both[1], b, "the 11-token sequence changed beside another");
    assert_eq!((ca.len(), cb.len()), (5, 11));
}

/// The widest tree a head on the device takes, (5, 16, 64) with 64
/// uncommitted rows at its last step, drafts (greedy output stays plain
/// decoding's); one step more is refused when the drafter is built, not at
/// the first request.
#[test]
fn the_widest_draft_tree_runs_on_the_device_and_a_wider_one_is_refused() {
    use aerie_draft_worker::{DraftOptions, ProposerFactory, SpecAlgorithm};
    use aerie_engine::generate::GenerateRequest;
    use aerie_engine::spec::{speculative_generate, TreeSpec};
    let e = common::smollm2();
    let options = |num_steps| DraftOptions {
        algorithm: SpecAlgorithm::Eagle,
        draft_model_path: Some(shipped_head_dir()),
        tree: TreeSpec { num_steps, topk: 16, num_draft_tokens: 64 },
        token_map: None,
        ngram: Default::default(),
        min_draft_score: 0.0,
    };
    let dev = || Some((interp() as Arc<dyn aerie_kernels::cuda::device::Device>, 4096));
    let f = ProposerFactory::new_on(options(5), e.model.clone(), &e.tokenizer, dev()).unwrap();
    let ids = common::prompt_ids(0);
    let req = GenerateRequest { prompt_ids: &ids, max_tokens: 12, sampling: Default::default(), stop_ids: &[] };
    let (out, stats) = speculative_generate(&e.model, f.proposer().as_mut(), &req, &mut |_| {}).unwrap();
    assert_eq!(out.token_ids[..], common::plain_greedy()[0][..12]);
    assert!(stats.spec_verify_ct < 11, "the wide tree accepted nothing: {} verifies", stats.spec_verify_ct);
    let err = ProposerFactory::new_on(options(6), e.model.clone(), &e.tokenizer, dev()).err().expect("a 6-step tree of 16 is refused").to_string();
    assert!(err.contains("at most 64 uncommitted rows") && err.contains("= 80"), "{err}");
}

/// MTP layers of one chain share the target's lm_head rows on the device:
/// the second layer costs its own weights and pool, not another lm_head,
/// and drafts the same as with a copy of its own.
#[test]
fn mtp_layers_of_a_chain_share_one_lm_head_on_the_device() {
    use aerie_kernels::cuda::device::Device;
    let dir = tempfile::tempdir().unwrap();
    crate::mtp::write_mimo_layers(dir.path(), 4, 2);
    let target = crate::mtp::load_target(dir.path());
    let ck = aerie_draft_worker::eagle::mtp::MtpCheckpoint::detect(dir.path()).unwrap().unwrap();
    let layers = || EagleHead::load_mtp_layers(&ck, 2, &target, None).unwrap();
    let dev = interp();
    let place = |h: EagleHead, first: Option<&EagleHead>| {
        let before = dev.memory().0;
        let h = h.to_device_sharing(&target, dev.clone(), 256, first).unwrap();
        (h, dev.memory().0 - before)
    };
    let mut a = layers().into_iter();
    let (first, _) = place(a.next().unwrap(), None);
    let (shared, shared_bytes) = place(a.next().unwrap(), Some(&first));
    let (own, own_bytes) = place(layers().pop().unwrap(), None);
    let c = &target.config;
    assert_eq!(own_bytes - shared_bytes, c.vocab_size * c.hidden_size * 2, "one bf16 lm_head saved");
    let h = c.hidden_size;
    let states: Vec<f32> = (0..2 * h).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
    assert_eq!(shared.top_k(&target, &states, 4).unwrap(), own.top_k(&target, &states, 4).unwrap());
}

/// A chain of two MTP layers on the device (the target on the host):
/// greedy speculation equals plain greedy decoding on every prompt.
#[test]
fn an_mtp_chain_on_the_device_is_lossless() {
    use aerie_draft_worker::ProposerFactory;
    use aerie_engine::generate::{generate, GenerateRequest};
    use aerie_engine::spec::{speculative_generate, TreeSpec};
    let dir = tempfile::tempdir().unwrap();
    crate::mtp::write_mimo_layers(dir.path(), 5, 2);
    let target = crate::mtp::load_target(dir.path());
    let tree = TreeSpec { num_steps: 3, topk: 2, num_draft_tokens: 6 };
    let dev = Some((interp() as Arc<dyn aerie_kernels::cuda::device::Device>, 1024));
    let f = ProposerFactory::new_on(crate::mtp::options(Some(dir.path()), tree), target.clone(), crate::mtp::no_tokenizer(), dev).unwrap();
    for ids in crate::mtp::prompts() {
        let req = GenerateRequest { prompt_ids: &ids, max_tokens: 48, sampling: Default::default(), stop_ids: &[] };
        let plain = generate(&target, &req, &mut |_| {}).unwrap().token_ids;
        let (out, _) = speculative_generate(&target, f.proposer().as_mut(), &req, &mut |_| {}).unwrap();
        assert_eq!(out.token_ids, plain, "prompt {ids:?}");
    }
}
