//! Shared helpers: the real SmolLM2 target, fixed prompts, plain greedy
//! references, and random-weight heads written in the published layout.
#![allow(dead_code)]

use aerie_draft_worker::eagle::EagleKind;
use aerie_draft_worker::random_head::{write_random_head, RandomHeadSpec};
use aerie_engine::generate::{generate, GenerateRequest};
use aerie_engine::{ChatMessage, DType, Engine, Model, SamplingParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::OnceLock;

pub fn smollm2() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::load("smollm2", DType::Auto).expect("load smollm2"))
}

pub const PROMPTS: [&str; 10] = [
    "Name three rivers in Europe.",
    "Write a Python function that checks whether a number is prime.",
    "Count from 1 to 40, separated by commas.",
    "Explain why the sky is blue in two sentences.",
    "Repeat the sentence 'The quick brown fox jumps over the lazy dog.' five times.",
    "Give me a recipe for pancakes.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Translate 'Good morning, how are you?' into French, Spanish and German.",
    "List the planets of the solar system in order from the Sun.",
    "Write a haiku about autumn leaves.",
];

/// 64 tokens per prompt: every drafter and tree shape still runs on all ten
/// prompts, in half the time of the 128 this once was (CI budget).
pub const NEW_TOKENS: usize = 64;

pub fn prompt_ids(i: usize) -> Vec<u32> {
    smollm2().chat_prompt_ids(&[ChatMessage::new("user", PROMPTS[i])]).unwrap()
}

/// Plain greedy continuations of every prompt (EOS not treated as a stop,
/// so each has exactly NEW_TOKENS tokens).
pub fn plain_greedy() -> &'static Vec<Vec<u32>> {
    static P: OnceLock<Vec<Vec<u32>>> = OnceLock::new();
    P.get_or_init(|| {
        let e = smollm2();
        (0..PROMPTS.len())
            .map(|i| {
                let ids = prompt_ids(i);
                let req = GenerateRequest { prompt_ids: &ids, max_tokens: NEW_TOKENS, sampling: SamplingParams::default(), stop_ids: &[] };
                generate(&e.model, &req, &mut |_| {}).unwrap().token_ids
            })
            .collect()
    })
}

/// A random head for SmolLM2, written once per test process.
pub fn random_head(kind: EagleKind) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let root = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let dir = root.path().join(format!("{kind:?}"));
    if !dir.join("config.json").exists() {
        // EAGLE-3 heads carry their own draft vocabulary; 16k of 49k is in
        // proportion to published ones (32k of 128k).
        let draft_vocab_size = (kind == EagleKind::Eagle3).then_some(16384);
        let spec = RandomHeadSpec { kind, seed: 7, draft_vocab_size, ..Default::default() };
        write_random_head(&dir, &smollm2().model.config, &spec).unwrap();
    }
    dir
}

/// Writes a tiny Llama in Hugging Face layout: 2 layers, hidden 16.
pub fn write_tiny_llama(dir: &Path, vocab: usize, seed: u64, logit_scale: f32) {
    write_tiny_llama_layers(dir, vocab, seed, logit_scale, 2);
}

/// [`write_tiny_llama`] with `layers` decoder layers.
pub fn write_tiny_llama_layers(dir: &Path, vocab: usize, seed: u64, logit_scale: f32, layers: usize) {
    let (h, ff, heads, kv, hd) = (16usize, 32usize, 2usize, 1usize, 8usize);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut rand = |name: String, shape: Vec<usize>, std: f32, rng: &mut StdRng| {
        let n: usize = shape.iter().product();
        let b = (0..n).flat_map(|_| ((rng.gen::<f32>() * 2.0 - 1.0) * std * 1.7).to_le_bytes()).collect();
        t.push((name, shape, b));
    };
    rand("model.embed_tokens.weight".into(), vec![vocab, h], 1.0, &mut rng);
    for l in 0..layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        rand(p("self_attn.q_proj.weight"), vec![heads * hd, h], 0.3, &mut rng);
        rand(p("self_attn.k_proj.weight"), vec![kv * hd, h], 0.3, &mut rng);
        rand(p("self_attn.v_proj.weight"), vec![kv * hd, h], 0.3, &mut rng);
        rand(p("self_attn.o_proj.weight"), vec![h, heads * hd], 0.3, &mut rng);
        rand(p("mlp.gate_proj.weight"), vec![ff, h], 0.3, &mut rng);
        rand(p("mlp.up_proj.weight"), vec![ff, h], 0.3, &mut rng);
        rand(p("mlp.down_proj.weight"), vec![h, ff], 0.3, &mut rng);
        rand(p("input_layernorm.weight"), vec![h], 0.0, &mut rng);
        rand(p("post_attention_layernorm.weight"), vec![h], 0.0, &mut rng);
    }
    rand("lm_head.weight".into(), vec![vocab, h], logit_scale, &mut rng);
    // Norm weights of one.
    for (name, _, b) in t.iter_mut() {
        if name.ends_with("layernorm.weight") {
            *b = 1.0f32.to_le_bytes().repeat(h);
        }
    }
    t.push(("model.norm.weight".into(), vec![h], 1.0f32.to_le_bytes().repeat(h)));
    let views: Vec<(String, TensorView)> = t.iter().map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": h, "intermediate_size": ff, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
}

/// A loaded tiny random Llama (see [`write_tiny_llama`]).
pub fn tiny_llama(vocab: usize, seed: u64, logit_scale: f32) -> Arc<Model> {
    tiny_llama_layers(vocab, seed, logit_scale, 2)
}

/// [`tiny_llama`] with `layers` decoder layers.
pub fn tiny_llama_layers(vocab: usize, seed: u64, logit_scale: f32, layers: usize) -> Arc<Model> {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama_layers(dir.path(), vocab, seed, logit_scale, layers);
    let ck = aerie_engine::loader::load(dir.path(), DType::Auto).unwrap();
    Arc::new(Model::new(ck.config, ck.weights, ck.fingerprint))
}
