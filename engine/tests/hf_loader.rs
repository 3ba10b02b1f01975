//! Hugging Face safetensors loading, checked against the GGUF path: the real
//! SmolLM2 weights are written out in Hugging Face layout (q/k rows
//! un-permuted back to half-split RoPE) and must give the same logits.

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

/// GGUF llama files interleave each head's rotary pairs; HF splits halves.
fn unpermute(w: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    let half = head_dim / 2;
    for h in 0..heads {
        for i in 0..half {
            for c in 0..2 {
                let src = h * head_dim + 2 * i + c;
                let dst = h * head_dim + c * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[test]
fn hf_directory_matches_gguf() {
    let e = smollm2_f32();
    let cfg = &e.model.config;
    let w = &e.model.weights;
    let (h, hd, nh, nkv, ff) = (cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size);
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    let mut put = |name: String, shape: Vec<usize>, v: &[f32]| {
        tensors.insert(name, (shape, f32_bytes(v)));
    };
    put("model.embed_tokens.weight".into(), vec![cfg.vocab_size, h], &w.embed.to_f32_vec());
    put("model.norm.weight".into(), vec![h], &w.final_norm);
    for (i, l) in w.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let qkv = l.qkv.dense_f32();
        let (q, rest) = qkv.split_at(nh * hd * h);
        let (k, v) = rest.split_at(nkv * hd * h);
        put(p("self_attn.q_proj.weight"), vec![nh * hd, h], &unpermute(q, nh, hd, h));
        put(p("self_attn.k_proj.weight"), vec![nkv * hd, h], &unpermute(k, nkv, hd, h));
        put(p("self_attn.v_proj.weight"), vec![nkv * hd, h], v);
        put(p("self_attn.o_proj.weight"), vec![h, nh * hd], &l.wo.to_f32_vec());
        let gu = l.gate_up.dense_f32();
        put(p("mlp.gate_proj.weight"), vec![ff, h], &gu[..ff * h]);
        put(p("mlp.up_proj.weight"), vec![ff, h], &gu[ff * h..]);
        put(p("mlp.down_proj.weight"), vec![h, ff], &l.w_down.to_f32_vec());
        put(p("input_layernorm.weight"), vec![h], &l.attn_norm);
        put(p("post_attention_layernorm.weight"), vec![h], &l.ffn_norm);
    }
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
