//! Random-weight draft heads in the published checkpoint layout. They
//! accept almost nothing; they exist to test that speculation is lossless
//! whatever the drafter says, and to benchmark the cost of drafting before a
//! head is trained.

use crate::eagle::EagleKind;
use crate::error::Result;
use aerie_engine::config::ModelConfig;
use aerie_engine::EngineError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::Path;

/// Shape choices for a random head.
#[derive(Debug, Clone)]
pub struct RandomHeadSpec {
    pub kind: EagleKind,
    pub seed: u64,
    /// MLP width (default: the target's).
    pub intermediate_size: Option<usize>,
    /// EAGLE-3 draft vocabulary (default: the target's); `d2t` maps it to
    /// the lowest target ids.
    pub draft_vocab_size: Option<usize>,
    /// Standard deviation of the weights.
    pub std: f32,
}

impl Default for RandomHeadSpec {
    fn default() -> Self {
        RandomHeadSpec { kind: EagleKind::Eagle, seed: 0, intermediate_size: None, draft_vocab_size: None, std: 0.02 }
    }
}

/// Writes `config.json` and `model.safetensors` (f16) for `target` into `dir`.
pub fn write_random_head(dir: &Path, target: &ModelConfig, spec: &RandomHeadSpec) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let h = target.hidden_size;
    let (qd, kvd) = (target.num_heads * target.head_dim, target.num_kv_heads * target.head_dim);
    let ff = spec.intermediate_size.unwrap_or(target.intermediate_size);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = Vec::new();
    fn rand_f16(tensors: &mut Vec<(String, Vec<usize>, Vec<u8>, Dtype)>, name: &str, shape: Vec<usize>, std: f32, rng: &mut StdRng) {
        let n: usize = shape.iter().product();
        let bytes: Vec<u8> = (0..n).flat_map(|_| half::f16::from_f32(approx_normal(rng, std)).to_le_bytes()).collect();
        tensors.push((name.to_string(), shape, bytes, Dtype::F16));
    }
    let ones = |name: &str, n: usize| (name.to_string(), vec![n], half::f16::from_f32(1.0).to_le_bytes().repeat(n), Dtype::F16);
    let eagle3 = spec.kind == EagleKind::Eagle3;
    let (prefix, attn_in) = if eagle3 { ("midlayer", 2 * h) } else { ("layers.0", h) };
    rand_f16(&mut tensors, "fc.weight", vec![h, if eagle3 { 3 * h } else { 2 * h }], spec.std, &mut rng);
    if !eagle3 {
        rand_f16(&mut tensors, "fc.bias", vec![h], spec.std, &mut rng);
    }
    for (n, shape) in [
        ("self_attn.q_proj.weight", vec![qd, attn_in]),
        ("self_attn.k_proj.weight", vec![kvd, attn_in]),
        ("self_attn.v_proj.weight", vec![kvd, attn_in]),
        ("self_attn.o_proj.weight", vec![h, qd]),
        ("mlp.gate_proj.weight", vec![ff, h]),
        ("mlp.up_proj.weight", vec![ff, h]),
        ("mlp.down_proj.weight", vec![h, ff]),
    ] {
        rand_f16(&mut tensors, &format!("{prefix}.{n}"), shape, spec.std, &mut rng);
    }
    tensors.push(ones(&format!("{prefix}.post_attention_layernorm.weight"), h));
    let dv = spec.draft_vocab_size.unwrap_or(target.vocab_size).min(target.vocab_size);
    if eagle3 {
        tensors.push(ones("midlayer.input_layernorm.weight", h));
        tensors.push(ones("midlayer.hidden_norm.weight", h));
        tensors.push(ones("norm.weight", h));
        rand_f16(&mut tensors, "lm_head.weight", vec![dv, h], spec.std, &mut rng);
        // Draft id i is target id i: d2t is all zeros, t2d marks the first dv ids.
        let ids: Vec<u32> = (0..dv as u32).collect();
        tensors.extend(draft_vocab_tensors(&ids, target.vocab_size));
    }
    write_head_files(dir, &tensors, &head_config(target, spec.kind, ff, dv))
}

/// `d2t` offsets of an EAGLE-3 draft vocabulary: draft id `i` is target id
/// `i + d2t[i]`, where `ids[i]` is that target id.
pub(crate) fn d2t_offsets(ids: &[u32]) -> Vec<i64> {
    ids.iter().enumerate().map(|(i, &t)| t as i64 - i as i64).collect()
}

/// The `d2t` (I64 offsets) and `t2d` (BOOL over the `vocab` target ids)
/// tensors of an EAGLE-3 head whose draft id `i` is target id `ids[i] < vocab`.
pub(crate) fn draft_vocab_tensors(ids: &[u32], vocab: usize) -> [(String, Vec<usize>, Vec<u8>, Dtype); 2] {
    let d2t = d2t_offsets(ids).iter().flat_map(|d| d.to_le_bytes()).collect();
    let mut t2d = vec![0u8; vocab];
    for &t in ids {
        t2d[t as usize] = 1;
    }
    [("d2t".into(), vec![ids.len()], d2t, Dtype::I64), ("t2d".into(), vec![vocab], t2d, Dtype::BOOL)]
}

/// A roughly normal draw with standard deviation `std`: a scaled sum of four
/// uniforms, cheap and deterministic for a seeded `rng`.
pub(crate) fn approx_normal(rng: &mut StdRng, std: f32) -> f32 {
    (0..4).map(|_| rng.gen::<f32>() - 0.5).sum::<f32>() * 3f32.sqrt() * std
}

/// Writes a head checkpoint into `dir`: `model.safetensors` from
/// `(name, shape, little-endian bytes, dtype)` tensors, and `config.json`.
pub(crate) fn write_head_files(dir: &Path, tensors: &[(String, Vec<usize>, Vec<u8>, Dtype)], config: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| EngineError::Io { path: dir.to_path_buf(), source })?;
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b, d)| (n.clone(), TensorView::new(*d, s.clone(), b).expect("consistent tensor")))
        .collect();
    let file = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &file).map_err(|e| EngineError::BadFile { path: file.clone(), msg: e.to_string() })?;
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(config).expect("json")).map_err(|source| EngineError::Io { path: cfg_path, source })?;
    Ok(())
}

/// `config.json` of a one-layer head for `target` in the published layout.
pub fn head_config(target: &ModelConfig, kind: EagleKind, ff: usize, draft_vocab: usize) -> serde_json::Value {
    let eagle3 = kind == EagleKind::Eagle3;
    let h = target.hidden_size;
    let dv = draft_vocab;
    let mut cfg = serde_json::json!({
        "architectures": [if eagle3 { "LlamaForCausalLMEagle3" } else { "LlamaForCausalLMEagle" }],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": ff,
        "num_attention_heads": target.num_heads,
        "num_key_value_heads": target.num_kv_heads,
        "head_dim": target.head_dim,
        "num_hidden_layers": 1,
        "vocab_size": target.vocab_size,
        "max_position_embeddings": target.max_position_embeddings,
        "rms_norm_eps": target.rms_norm_eps,
        "rope_theta": target.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "torch_dtype": "float16",
    });
    if eagle3 {
        cfg["draft_vocab_size"] = dv.into();
    }
    cfg
}
