//! MTP layers shipped inside a target checkpoint draft for it: tiny
//! random-weight checkpoints written here in the published tensor names
//! (MiMo's `model.mtp_layers.0.*`, DeepSeek-V3's NextN `model.layers.{L}.*`,
//! and SGLang's separate NextN checkpoint) must load, compute what the
//! published forward computes, and keep greedy output equal to plain
//! decoding; a missing tensor is refused by name.

use aerie_draft_worker::eagle::mtp::{MtpCheckpoint, MtpLayout};
use aerie_draft_worker::eagle::{EagleHead, EagleKind};
use aerie_draft_worker::ngram::NgramConfig;
use aerie_draft_worker::{builtin_mtp, DraftOptions, ProposerFactory, SpecAlgorithm};
use aerie_engine::generate::{generate, GenerateRequest};
use aerie_engine::spec::{speculative_generate, Features, TreeSpec};
use aerie_engine::{AttnMask, DType, ForwardOptions, LogitsRows, Model, SamplingParams, SeqInput, Tokenizer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const H: usize = 16;
const FF: usize = 32;
const HEADS: usize = 2;
const KV: usize = 1;
const HD: usize = 8;
const VOCAB: usize = 64;
const BODY: usize = 2;

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn rand_into(t: &mut Tensors, rng: &mut StdRng, name: String, shape: Vec<usize>, std: f32) {
    let n: usize = shape.iter().product();
    t.insert(name, (shape, (0..n).map(|_| (rng.gen::<f32>() * 2.0 - 1.0) * std * 1.7).collect()));
}

/// Norm weights near one, so that a swapped norm would show.
fn norm_into(t: &mut Tensors, rng: &mut StdRng, name: String) {
    t.insert(name, (vec![H], (0..H).map(|_| 0.7 + 0.6 * rng.gen::<f32>()).collect()));
}

/// A decoder layer's tensors under `p` (with q/k/v biases when `bias`).
fn layer_into(t: &mut Tensors, rng: &mut StdRng, p: &str, bias: bool) {
    rand_into(t, rng, format!("{p}self_attn.q_proj.weight"), vec![HEADS * HD, H], 0.3);
    rand_into(t, rng, format!("{p}self_attn.k_proj.weight"), vec![KV * HD, H], 0.3);
    rand_into(t, rng, format!("{p}self_attn.v_proj.weight"), vec![KV * HD, H], 0.3);
    if bias {
        rand_into(t, rng, format!("{p}self_attn.q_proj.bias"), vec![HEADS * HD], 0.3);
        rand_into(t, rng, format!("{p}self_attn.k_proj.bias"), vec![KV * HD], 0.3);
        rand_into(t, rng, format!("{p}self_attn.v_proj.bias"), vec![KV * HD], 0.3);
    }
    rand_into(t, rng, format!("{p}self_attn.o_proj.weight"), vec![H, HEADS * HD], 0.3);
    rand_into(t, rng, format!("{p}mlp.gate_proj.weight"), vec![FF, H], 0.3);
    rand_into(t, rng, format!("{p}mlp.up_proj.weight"), vec![FF, H], 0.3);
    rand_into(t, rng, format!("{p}mlp.down_proj.weight"), vec![H, FF], 0.3);
    norm_into(t, rng, format!("{p}input_layernorm.weight"));
    norm_into(t, rng, format!("{p}post_attention_layernorm.weight"));
}

fn save(dir: &Path, t: &Tensors, config: serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = t.iter().map(|(n, (s, v))| (n.clone(), s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views: Vec<(String, TensorView)> = bytes.iter().map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

fn config(arch: &str, layers: usize, mtp: usize, bias: bool) -> serde_json::Value {
    serde_json::json!({
        "architectures": [arch], "hidden_size": H, "intermediate_size": FF, "num_hidden_layers": layers,
        "num_attention_heads": HEADS, "num_key_value_heads": KV, "vocab_size": VOCAB, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false, "attention_bias": bias,
        "num_nextn_predict_layers": mtp
    })
}

/// The body every checkpoint shares: embedding, `BODY` layers, norm, lm_head.
fn body(rng: &mut StdRng, bias: bool) -> Tensors {
    let mut t = Tensors::new();
    rand_into(&mut t, rng, "model.embed_tokens.weight".into(), vec![VOCAB, H], 1.0);
    for l in 0..BODY {
        layer_into(&mut t, rng, &format!("model.layers.{l}."), bias);
    }
    norm_into(&mut t, rng, "model.norm.weight".into());
    rand_into(&mut t, rng, "lm_head.weight".into(), vec![VOCAB, H], 1.5);
    t
}

/// A MiMo checkpoint: a Qwen2 body plus one MTP layer.
pub(crate) fn write_mimo(dir: &Path, seed: u64) -> Tensors {
    write_mimo_layers(dir, seed, 1)
}

/// A MiMo checkpoint with `n` MTP layers.
pub(crate) fn write_mimo_layers(dir: &Path, seed: u64, n: usize) -> Tensors {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = body(&mut rng, true);
    for i in 0..n {
        let p = format!("model.mtp_layers.{i}.");
        layer_into(&mut t, &mut rng, &p, true);
        norm_into(&mut t, &mut rng, format!("{p}token_layernorm.weight"));
        norm_into(&mut t, &mut rng, format!("{p}hidden_layernorm.weight"));
        rand_into(&mut t, &mut rng, format!("{p}input_proj.weight"), vec![H, 2 * H], 0.4);
        norm_into(&mut t, &mut rng, format!("{p}final_layernorm.weight"));
    }
    save(dir, &t, config("MiMoForCausalLM", BODY, n, true));
    t
}

/// A dense Llama with one DeepSeek-V3-style NextN layer after its body,
/// with its own `shared_head.head` when `own_head`.
fn write_nextn(dir: &Path, seed: u64, own_head: bool) -> Tensors {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = body(&mut rng, false);
    let p = format!("model.layers.{BODY}.");
    layer_into(&mut t, &mut rng, &p, false);
    norm_into(&mut t, &mut rng, format!("{p}enorm.weight"));
    norm_into(&mut t, &mut rng, format!("{p}hnorm.weight"));
    rand_into(&mut t, &mut rng, format!("{p}eh_proj.weight"), vec![H, 2 * H], 0.4);
    norm_into(&mut t, &mut rng, format!("{p}shared_head.norm.weight"));
    if own_head {
        rand_into(&mut t, &mut rng, format!("{p}shared_head.head.weight"), vec![VOCAB, H], 1.5);
    }
    // DeepSeek's files repeat the shared embedding inside the MTP layer.
    let emb = t["model.embed_tokens.weight"].clone();
    t.insert(format!("{p}embed_tokens.weight"), emb);
    save(dir, &t, config("LlamaForCausalLM", BODY, 1, false));
    t
}

pub(crate) fn load_target(dir: &Path) -> Arc<Model> {
    let ck = aerie_engine::loader::load(dir, DType::F32).unwrap();
    Arc::new(Model::new(ck.config, ck.weights, ck.fingerprint))
}

fn rms(x: &[f32], w: &[f32]) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + 1e-5).sqrt();
    x.iter().zip(w).map(|(v, w)| v * r * w).collect()
}

/// `W · x (+ b)` for a row-major `rows × x.len()` matrix.
fn mv(t: &Tensors, name: &str, x: &[f32]) -> Vec<f32> {
    let (s, w) = &t[name];
    assert_eq!(s[1], x.len(), "{name}");
    let mut y: Vec<f32> = (0..s[0]).map(|r| w[r * s[1]..(r + 1) * s[1]].iter().zip(x).map(|(a, b)| a * b).sum()).collect();
    let bias = name.replace(".weight", ".bias");
    if let Some((_, b)) = t.get(&bias) {
        y.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
    y
}

/// The published forward of one MTP row with nothing cached before it (its
/// attention then reads its own value alone, whatever the rotary angle),
/// written out naively from the SGLang/vLLM model files: the draft logits.
fn reference_logits(t: &Tensors, layout: MtpLayout, p: &str, token: u32, pos: u32, feature: &[f32]) -> Vec<f32> {
    let (tn, hn, proj, out) = match layout {
        MtpLayout::MiMo => ("token_layernorm", "hidden_layernorm", "input_proj", "final_layernorm"),
        MtpLayout::NextN => ("enorm", "hnorm", "eh_proj", "shared_head.norm"),
    };
    let w = |n: &str| t[&format!("{p}{n}.weight")].1.clone();
    let mut e = t["model.embed_tokens.weight"].1[token as usize * H..(token as usize + 1) * H].to_vec();
    if pos == 0 {
        e.iter_mut().for_each(|v| *v = 0.0);
    }
    let (e, f) = (rms(&e, &w(tn)), rms(feature, &w(hn)));
    let cat: Vec<f32> = match layout {
        MtpLayout::MiMo => [f, e].concat(),
        MtpLayout::NextN => [e, f].concat(),
    };
    let mut x = mv(t, &format!("{p}{proj}.weight"), &cat);
    let xn = rms(&x, &w("input_layernorm"));
    let v = mv(t, &format!("{p}self_attn.v_proj.weight"), &xn);
    // Every query head reads the one kv head's value.
    let heads: Vec<f32> = (0..HEADS).flat_map(|_| v.iter().copied()).collect();
    let o = mv(t, &format!("{p}self_attn.o_proj.weight"), &heads);
    x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
    let xn = rms(&x, &w("post_attention_layernorm"));
    let g = mv(t, &format!("{p}mlp.gate_proj.weight"), &xn);
    let u = mv(t, &format!("{p}mlp.up_proj.weight"), &xn);
    let act: Vec<f32> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
    let d = mv(t, &format!("{p}mlp.down_proj.weight"), &act);
    x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
    let normed = rms(&x, &w(out));
    let head = if t.contains_key(&format!("{p}shared_head.head.weight")) { format!("{p}shared_head.head.weight") } else { "lm_head.weight".to_string() };
    mv(t, &head, &normed)
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    // The target's lm_head runs with 8-bit activations (llama.cpp's rounding).
    assert!(err <= 0.02 * scale, "{what}: max error {err} against logits up to {scale}");
}

#[test]
fn mtp_layers_compute_the_published_forward() {
    let root = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Tensors, MtpLayout, String)> = vec![
        ("mimo", write_mimo(&root.path().join("mimo"), 1), MtpLayout::MiMo, "model.mtp_layers.0.".into()),
        ("nextn", write_nextn(&root.path().join("nextn"), 2, false), MtpLayout::NextN, format!("model.layers.{BODY}.")),
        ("nextn-own-head", write_nextn(&root.path().join("nextn-own-head"), 3, true), MtpLayout::NextN, format!("model.layers.{BODY}.")),
    ];
    for (name, t, layout, prefix) in cases {
        let dir = root.path().join(name);
        let target = load_target(&dir);
        let ck = MtpCheckpoint::detect(&dir).unwrap().expect("MTP layers found");
        assert_eq!((ck.layout, ck.num_layers), (layout, 1), "{name}");
        let head = EagleHead::load_mtp(&ck, 0, &target, None).unwrap();
        assert_eq!(head.kind(), EagleKind::Mtp);
        let mut rng = StdRng::seed_from_u64(9);
        for (token, pos) in [(5u32, 0u32), (17, 1), (40, 23)] {
            let feature: Vec<f32> = (0..H).map(|_| rng.gen::<f32>() * 2.0 - 1.0).collect();
            let mut cache = head.new_cache();
            let x = head.forward(&target, &mut cache, &[token], &feature, &[pos], AttnMask::Causal).unwrap();
            let got = head.logits(&target, &x).unwrap();
            let want = reference_logits(&t, layout, &prefix, token, pos, &feature);
            assert_close(&got, &want, &format!("{name} token {token} at {pos}"));
        }
    }
}

pub(crate) fn options(path: Option<&Path>, tree: TreeSpec) -> DraftOptions {
    DraftOptions {
        algorithm: SpecAlgorithm::Eagle,
        draft_model_path: path.map(Path::to_path_buf),
        tree,
        token_map: None,
        ngram: NgramConfig::default(),
        min_draft_score: 0.0,
    }
}

/// The factory compares tokenizers only for STANDALONE drafters; these
/// tiny targets have none, so any real one stands in.
pub(crate) fn no_tokenizer() -> &'static Tokenizer {
    static T: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
    T.get_or_init(|| aerie_engine::Engine::load("smollm2", DType::Auto).expect("smollm2").tokenizer)
}

pub(crate) fn prompts() -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(11);
    (0..5).map(|i| (0..6 + 3 * i).map(|_| rng.gen_range(0..VOCAB as u32)).collect()).collect()
}

/// Greedy with the checkpoint's MTP layer drafting equals plain greedy, at
/// 1 and 3 steps; returns the drafts accepted.
fn check_lossless(dir: &Path, name: &str) -> usize {
    let target = load_target(dir);
    let tok = no_tokenizer();
    let mut accepted = 0;
    for tree in [TreeSpec { num_steps: 1, topk: 1, num_draft_tokens: 2 }, TreeSpec { num_steps: 3, topk: 1, num_draft_tokens: 4 }, TreeSpec { num_steps: 3, topk: 2, num_draft_tokens: 6 }] {
        // As the launcher does: no draft path, the target's own directory.
        let path = builtin_mtp(&dir.to_string_lossy()).expect("the target carries MTP layers");
        let f = ProposerFactory::new(options(Some(&path), tree), target.clone(), tok).unwrap();
        for ids in prompts() {
            let req = GenerateRequest { prompt_ids: &ids, max_tokens: 64, sampling: SamplingParams::default(), stop_ids: &[] };
            let plain = generate(&target, &req, &mut |_| {}).unwrap().token_ids;
            let mut p = f.proposer();
            assert_eq!(p.name(), "mtp");
            let (out, stats) = speculative_generate(&target, p.as_mut(), &req, &mut |_| {}).unwrap();
            let diff = out.token_ids.iter().zip(&plain).position(|(a, b)| a != b);
            assert_eq!(out.token_ids, plain, "{name} {tree:?} prompt {ids:?}: first difference at {diff:?}");
            accepted += out.token_ids.len() - 1 - stats.spec_verify_ct;
        }
    }
    eprintln!("{name}: {accepted} drafts accepted");
    accepted
}

#[test]
fn mtp_speculation_is_lossless_in_both_layouts() {
    let root = tempfile::tempdir().unwrap();
    write_mimo(&root.path().join("mimo"), 21);
    write_nextn(&root.path().join("nextn"), 22, true);
    let a = check_lossless(&root.path().join("mimo"), "MiMo");
    let b = check_lossless(&root.path().join("nextn"), "NextN");
    // A 64-token vocabulary: random layers still guess some tokens, so the
    // drafts were really verified and used, not only rejected.
    assert!(a > 0 && b > 0, "accepted drafts: MiMo {a}, NextN {b}");
}

/// The draft trees a factory's proposer grows after each prompt.
fn trees(dir: &Path, tree: TreeSpec) -> Vec<Vec<u32>> {
    let target = load_target(dir);
    let f = ProposerFactory::new(options(Some(dir), tree), target.clone(), no_tokenizer()).unwrap();
    prompts()
        .into_iter()
        .map(|ids| {
            let mut cache = target.new_cache();
            let out = target
                .forward(&mut [SeqInput { cache: &mut cache, tokens: &ids, positions: None, mask: AttnMask::Causal, logits: LogitsRows::Last }], &ForwardOptions { want_hidden: true, aux_layers: vec![] })
                .unwrap()
                .remove(0);
            let mut p = f.proposer();
            p.commit(&ids, &Features { width: H, data: out.hidden[..(ids.len() - 1) * H].to_vec() }).unwrap();
            p.propose(tree.num_steps).unwrap().tokens
        })
        .collect()
}

#[test]
fn several_mtp_layers_draft_one_level_each() {
    let root = tempfile::tempdir().unwrap();
    let two = root.path().join("two");
    let t = write_mimo_layers(&two, 41, 2);
    assert!(check_lossless(&two, "MiMo, 2 MTP layers") > 0);
    // The same checkpoint with layer 1 a copy of layer 0: depth 1 drafts
    // the same, deeper levels differ, so layer 1 drafted them.
    let same = root.path().join("same");
    let mut t2 = t.clone();
    for (n, v) in &t {
        if let Some(rest) = n.strip_prefix("model.mtp_layers.0.") {
            t2.insert(format!("model.mtp_layers.1.{rest}"), v.clone());
        }
    }
    save(&same, &t2, config("MiMoForCausalLM", BODY, 2, true));
    let chain = TreeSpec { num_steps: 3, topk: 1, num_draft_tokens: 4 };
    let (a, b) = (trees(&two, chain), trees(&same, chain));
    assert!(a.iter().zip(&b).all(|(x, y)| x[..2] == y[..2]), "depth 1 comes from layer 0: {a:?} vs {b:?}");
    assert!(a.iter().zip(&b).any(|(x, y)| x[2..] != y[2..]), "deeper levels come from layer 1: {a:?} vs {b:?}");
    // A missing tensor of layer 1 is refused when the tree reaches it.
    t2.remove("model.mtp_layers.1.input_proj.weight");
    save(&same, &t2, config("MiMoForCausalLM", BODY, 2, true));
    let err = ProposerFactory::new(options(Some(&same), chain), load_target(&same), no_tokenizer()).err().expect("refused").to_string();
    assert!(err.contains("model.mtp_layers.1.input_proj.weight"), "{err}");
}

#[test]
fn a_separate_nextn_checkpoint_drafts_like_the_layer_inside_the_target() {
    let root = tempfile::tempdir().unwrap();
    let full = root.path().join("full");
    let t = write_nextn(&full, 5, true);
    // SGLang's export: the MTP layer alone, renamed to layer 0.
    let mut sep = Tensors::new();
    let from = format!("model.layers.{BODY}.");
    for (n, v) in &t {
        if let Some(rest) = n.strip_prefix(&from) {
            sep.insert(format!("model.layers.0.{rest}"), v.clone());
        }
    }
    let sep_dir = root.path().join("nextn");
    save(&sep_dir, &sep, config("DeepseekV3ForCausalLMNextN", 1, 1, false));
    let target = load_target(&full);
    let inside = EagleHead::load_mtp(&MtpCheckpoint::detect(&full).unwrap().unwrap(), 0, &target, None).unwrap();
    let alone = EagleHead::load_mtp(&MtpCheckpoint::detect(&sep_dir).unwrap().unwrap(), 0, &target, None).unwrap();
    let feature: Vec<f32> = (0..2 * H).map(|i| (i as f32 * 0.37).sin()).collect();
    let run = |h: &EagleHead| {
        let mut c = h.new_cache();
        let x = h.forward(&target, &mut c, &[3, 9], &feature, &[4, 5], AttnMask::Causal).unwrap();
        h.logits(&target, &x).unwrap()
    };
    assert_eq!(run(&inside), run(&alone));
    // Given as --speculative-draft-model-path, it serves the target.
    let f = ProposerFactory::new(options(Some(&sep_dir), TreeSpec { num_steps: 2, topk: 1, num_draft_tokens: 3 }), target.clone(), no_tokenizer()).unwrap();
    assert_eq!(f.proposer().name(), "mtp");
}

#[test]
fn broken_mtp_checkpoints_are_refused_by_tensor_name() {
    let root = tempfile::tempdir().unwrap();
    for (name, missing) in [("mimo", "model.mtp_layers.0.hidden_layernorm.weight"), ("nextn", "model.layers.2.eh_proj.weight")] {
        let dir = root.path().join(name);
        let mut t = if name == "mimo" { write_mimo(&dir, 31) } else { write_nextn(&dir, 32, false) };
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        t.remove(missing);
        save(&dir, &t, cfg.clone());
        let target = load_target(&dir);
        let err = ProposerFactory::new(options(Some(&dir), TreeSpec { num_steps: 1, topk: 1, num_draft_tokens: 2 }), target.clone(), no_tokenizer()).err().expect("refused").to_string();
        assert!(err.contains(missing), "{name}: {err}");
        // A misshaped one names itself too.
        let mut t2 = t.clone();
        t2.insert(missing.to_string(), (vec![H + 1], vec![1.0; H + 1]));
        save(&dir, &t2, cfg);
        let err = ProposerFactory::new(options(Some(&dir), TreeSpec { num_steps: 1, topk: 1, num_draft_tokens: 2 }), target, no_tokenizer()).err().expect("refused").to_string();
        assert!(err.contains(missing) && err.contains("shape"), "{name}: {err}");
    }
    // DeepSeek-V3's own MTP layer (MLA attention) is refused by name.
    let dir = root.path().join("mla");
    let mut t = write_nextn(&dir, 33, false);
    rand_into(&mut t, &mut StdRng::seed_from_u64(1), format!("model.layers.{BODY}.self_attn.q_a_proj.weight"), vec![4, H], 0.1);
    save(&dir, &t, config("LlamaForCausalLM", BODY, 1, false));
    let err = ProposerFactory::new(options(Some(&dir), TreeSpec::default()), load_target(&dir), no_tokenizer()).err().expect("refused").to_string();
    assert!(err.contains("q_a_proj") && err.contains("dense"), "{err}");
    // A target without MTP layers has no built-in drafter.
    let plain = root.path().join("plain");
    let mut t = write_mimo(&plain, 34);
    t.retain(|n, _| !n.starts_with("model.mtp_layers"));
    save(&plain, &t, config("Qwen2ForCausalLM", BODY, 0, true));
    assert!(builtin_mtp(&plain.to_string_lossy()).is_none());
    // Nor one whose config announces MTP layers its files do not hold.
    save(&plain, &t, config("MiMoForCausalLM", BODY, 1, true));
    assert!(MtpCheckpoint::detect(&plain).unwrap().is_some());
    assert!(builtin_mtp(&plain.to_string_lossy()).is_none());
}
