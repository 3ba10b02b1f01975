//! Hugging Face safetensors loading, checked against the GGUF path: the real
//! SmolLM2 weights are written out in Hugging Face layout (q/k rows
//! un-permuted back to half-split RoPE) and must give the same logits; a
//! whole exported directory (f16, tokenizer files) reloads as the same model.

use crate::common;
use aerie_engine::loader::hf::SafetensorsDir;
use aerie_engine::{loader, AttnMask, DType, ForwardOptions, LogitsRows, Model, SeqInput};
use common::*;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::BTreeMap;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn hf_directory_matches_gguf() {
    let e = smollm2_f32();
    let cfg = &e.model.config;
    let (h, nh, nkv, ff) = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size);
    // The library's export (q/k rows moved back to half-split pairs).
    let tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> =
        aerie_engine::export::hf_tensors(&e.model, false).unwrap().into_iter().map(|t| (t.name, (t.shape, f32_bytes(&t.data)))).collect();
    assert_eq!(tensors.len(), 2 + 9 * cfg.num_layers, "embedding, final norm and 9 tensors per layer (tied lm_head)");
    assert!(!tensors.contains_key("model.layers.0.self_attn.q_proj.bias"));
    let dir = tempfile::tempdir().unwrap();
    // Split across two files, as sharded checkpoints are.
    let names: Vec<String> = tensors.keys().cloned().collect();
    for (shard, chunk) in names.chunks(names.len() / 2 + 1).enumerate() {
        let views: Vec<(String, TensorView)> = chunk
            .iter()
            .map(|n| {
                let (shape, bytes) = &tensors[n];
                (n.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.path().join(format!("model-{shard:05}.safetensors"))).unwrap();
    }
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": h, "intermediate_size": ff,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": nh, "num_key_value_heads": nkv,
        "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps, "tie_word_embeddings": true
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();

    let ck = loader::load(dir.path(), DType::Auto).unwrap();
    let hf = Model::new(ck.config, ck.weights, ck.fingerprint);
    let ids = e.tokenizer.encode("The quick brown fox jumps over the lazy dog. Then it sleeps.", true).unwrap();
    let logits = |m: &Model| {
        let mut c = m.new_cache();
        m.forward(&mut [SeqInput { cache: &mut c, tokens: &ids, positions: None, mask: AttnMask::Causal, logits: LogitsRows::All }], &ForwardOptions::default())
            .unwrap()
            .remove(0)
            .logits
    };
    let (a, b) = (logits(&e.model), logits(&hf));
    let worst = a.iter().zip(&b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    let scale = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    eprintln!("HF vs GGUF: max |Δlogit| {worst} (logit scale {scale})");
    // Not bit-identical: the two layouts order each head's dimensions
    // differently, so q·k sums in another order, and an ulp there can flip
    // the f16 rounding of an attention probability (2^-11 relative). A wrong
    // or misplaced tensor moves logits by whole units.
    assert!(worst / scale < 2e-3, "HF and GGUF logits differ by {worst}");
}

#[test]
fn f16_and_bf16_tensors_convert() {
    let dir = tempfile::tempdir().unwrap();
    let vals = [1.0f32, -2.5, 0.333, 65504.0];
    let f16: Vec<u8> = vals.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    let bf16: Vec<u8> = vals.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
    safetensors::serialize_to_file(
        [
            ("a", TensorView::new(Dtype::F16, vec![4], &f16).unwrap()),
            ("b", TensorView::new(Dtype::BF16, vec![2, 2], &bf16).unwrap()),
        ],
        None,
        &dir.path().join("x.safetensors"),
    )
    .unwrap();
    let st = SafetensorsDir::open(dir.path()).unwrap();
    let (sa, a) = st.tensor("a").unwrap();
    let (sb, b) = st.tensor("b").unwrap();
    assert_eq!((sa, sb), (vec![4], vec![2, 2]));
    for ((x, y), v) in a.iter().zip(&b).zip(vals) {
        assert!((x - v).abs() <= v.abs() * 1e-3, "f16 {x} vs {v}");
        assert!((y - v).abs() <= v.abs() * 1e-2, "bf16 {y} vs {v}");
    }
    assert!(st.vector("a", 5).is_err(), "shape mismatch must be an error");
}

#[test]
fn configs_parse_llama3_qwen2_and_refuse_sliding_window() {
    use aerie_engine::config::{Arch, ModelConfig};
    let p = std::path::Path::new("config.json");
    let llama3 = serde_json::json!({"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,"rope_theta":500000.0,
        "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}});
    let c = ModelConfig::from_hf_json(p, &llama3).unwrap();
    let f = c.inv_freqs();
    // High frequencies are untouched, the lowest are divided by the factor.
    assert!((f[0] - 1.0).abs() < 1e-12);
    let plain = 1.0 / 500000f64.powf(2.0 * 7.0 / 16.0);
    assert!((f[7] - plain / 8.0).abs() < 1e-12, "{} vs {}", f[7], plain / 8.0);
    let qwen = serde_json::json!({"architectures":["Qwen2ForCausalLM"],"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
        "num_attention_heads":4,"vocab_size":100,"use_sliding_window":false,"sliding_window":32});
    let c = ModelConfig::from_hf_json(p, &qwen).unwrap();
    assert_eq!(c.arch, Arch::Qwen2);
    assert!(c.attention_bias);
    let mistral = serde_json::json!({"architectures":["MistralForCausalLM"],"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
        "num_attention_heads":4,"vocab_size":100,"max_position_embeddings":32768,"sliding_window":4096});
    let err = ModelConfig::from_hf_json(p, &mistral).unwrap_err().to_string();
    assert!(err.contains("sliding-window"), "{err}");
}

/// A draft worker's copy of its target: embedding and lm_head only, the
/// same fingerprint (so it still pairs with target workers), and a forward
/// pass that refuses to run rather than skip the missing layers.
#[test]
fn a_drafting_load_keeps_the_fingerprint_and_refuses_to_run() {
    let full = smollm2();
    let lite = aerie_engine::Engine::load_for_drafting("smollm2", DType::Auto).unwrap();
    assert_eq!(lite.model.fingerprint, full.model.fingerprint);
    assert!(lite.model.weights.layers.is_empty());
    assert_eq!(lite.model.embed(&[1, 500]).unwrap(), full.model.embed(&[1, 500]).unwrap());
    let row = full.model.embed(&[7]).unwrap();
    assert_eq!(lite.model.lm_head(&row).unwrap(), full.model.lm_head(&row).unwrap());
    assert!(lite.model.weights.storage_bytes() * 2 < full.model.weights.storage_bytes());
    let mut cache = lite.model.new_cache();
    let err = lite
        .model
        .forward(&mut [SeqInput { cache: &mut cache, tokens: &[1, 2], positions: None, mask: AttnMask::Causal, logits: LogitsRows::Last }], &ForwardOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("loaded for drafting"), "{err}");
}

/// `export::write_hf_dir` with the GGUF's tokenizer: the directory loads as
/// an engine that tokenizes and templates every prompt as the GGUF does,
/// and greedy decoding from it starts as the GGUF's does (f16 weights
/// against Q4_1).
#[test]
fn an_exported_directory_reloads_with_the_same_tokenizer() {
    let e = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let config = aerie_engine::export::hf_config(&e.model.config, "LlamaForCausalLM", Some(&e.tokenizer)).unwrap();
    let tensors = aerie_engine::export::hf_tensors(&e.model, false).unwrap();
    aerie_engine::export::write_hf_dir(dir.path(), &config, &tensors, &e.tokenizer).unwrap();
    let hf = aerie_engine::Engine::load_path(dir.path(), DType::Auto).unwrap();
    assert_eq!((hf.tokenizer.bos_id, hf.tokenizer.eos_ids.clone(), hf.tokenizer.add_bos), (e.tokenizer.bos_id, e.tokenizer.eos_ids.clone(), e.tokenizer.add_bos));
    let texts = ["Name three rivers in Europe.", "Write a Python function that checks whether a number is prime.\n\n  def f(x):\treturn 1234567", "Ünïcödé — 日本語のテキスト 🙂 and <|im_start|> text"];
    for t in texts {
        for special in [true, false] {
            if !special && t.contains("<|") {
                continue; // a Hugging Face tokenizer.json has one set of added tokens
            }
            assert_eq!(hf.tokenizer.encode(t, special).unwrap(), e.tokenizer.encode(t, special).unwrap(), "{t:?} (special {special})");
        }
        let msgs = [aerie_engine::ChatMessage::new("user", t)];
        assert_eq!(hf.chat_prompt_ids(&msgs).unwrap(), e.chat_prompt_ids(&msgs).unwrap(), "chat prompt of {t:?}");
    }
    let ids = e.chat_prompt_ids(&[aerie_engine::ChatMessage::new("user", texts[0])]).unwrap();
    let greedy = |m: &Model| {
        let req = aerie_engine::generate::GenerateRequest { prompt_ids: &ids, max_tokens: 8, sampling: aerie_engine::SamplingParams::default(), stop_ids: &[] };
        aerie_engine::generate::generate(m, &req, &mut |_| {}).unwrap().token_ids
    };
    assert_eq!(greedy(&hf.model)[..4], greedy(&e.model)[..4]);
}
