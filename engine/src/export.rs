//! Writing a loaded model out as a Hugging Face checkpoint directory:
//! `config.json`, `model.safetensors` (f16) and the tokenizer files.
//!
//! Why: a model with its own MTP layers is a Hugging Face directory (MiMo's
//! layout), and Aerie's embedded default is a GGUF file. `train-eagle --kind
//! mtp` writes SmolLM2's body beside the layer it trained, dequantized to
//! f16, so the result is one self-contained checkpoint that Aerie, SGLang
//! and vLLM load as they load MiMo.
//!
//! GGUF llama files store q/k rows permuted for interleaved rotary pairs
//! ((2i, 2i+1)); Hugging Face checkpoints use the half-split pairing
//! ((i, i + d/2)). Rows are moved back here, so the written checkpoint
//! computes what the GGUF file computes (up to the f16 rounding).

use crate::config::{ModelConfig, RopeStyle};
use crate::error::{EngineError, Result};
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::path::Path;

/// One tensor to write: name, shape (row-major) and f32 values.
pub struct HfTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HfTensor {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> HfTensor {
        HfTensor { name: name.into(), shape, data }
    }
}

/// Moves each head's rows from interleaved rotary pairs back to half-split.
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

/// The model's tensors under Hugging Face Llama/Qwen2 names. With
/// `with_bias`, every layer gets q/k/v biases (zeros where the model has
/// none), as a Qwen2-style body (MiMo's) must.
pub fn hf_tensors(model: &Model, with_bias: bool) -> Result<Vec<HfTensor>> {
    let cfg = &model.config;
    let w = &model.weights;
    if w.layers.len() != cfg.num_layers {
        return Err(EngineError::Export("this model was loaded without its decoder layers (for drafting); load it whole to export it".into()));
    }
    let (h, hd, nh, nkv, ff) = (cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size);
    let (qd, kvd) = (nh * hd, nkv * hd);
    let interleaved = cfg.rope_style == RopeStyle::Interleaved;
    let mut out = vec![HfTensor::new("model.embed_tokens.weight", vec![cfg.vocab_size, h], w.embed.to_f32_vec())];
    for (i, l) in w.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let qkv = l.qkv.dense_f32();
        let (q, rest) = qkv.split_at(qd * h);
        let (k, v) = rest.split_at(kvd * h);
        let (q, k) = if interleaved { (unpermute(q, nh, hd, h), unpermute(k, nkv, hd, h)) } else { (q.to_vec(), k.to_vec()) };
        out.push(HfTensor::new(p("self_attn.q_proj.weight"), vec![qd, h], q));
        out.push(HfTensor::new(p("self_attn.k_proj.weight"), vec![kvd, h], k));
        out.push(HfTensor::new(p("self_attn.v_proj.weight"), vec![kvd, h], v.to_vec()));
        if with_bias || l.qkv.bias.is_some() {
            let b = l.qkv.bias.clone().unwrap_or_else(|| vec![0.0; qd + 2 * kvd]);
            let (bq, rest) = b.split_at(qd);
            let (bk, bv) = rest.split_at(kvd);
            let (bq, bk) = if interleaved { (unpermute(bq, nh, hd, 1), unpermute(bk, nkv, hd, 1)) } else { (bq.to_vec(), bk.to_vec()) };
            out.push(HfTensor::new(p("self_attn.q_proj.bias"), vec![qd], bq));
            out.push(HfTensor::new(p("self_attn.k_proj.bias"), vec![kvd], bk));
            out.push(HfTensor::new(p("self_attn.v_proj.bias"), vec![kvd], bv.to_vec()));
        }
        out.push(HfTensor::new(p("self_attn.o_proj.weight"), vec![h, qd], l.wo.to_f32_vec()));
        let gu = l.gate_up.dense_f32();
        out.push(HfTensor::new(p("mlp.gate_proj.weight"), vec![ff, h], gu[..ff * h].to_vec()));
        out.push(HfTensor::new(p("mlp.up_proj.weight"), vec![ff, h], gu[ff * h..].to_vec()));
        out.push(HfTensor::new(p("mlp.down_proj.weight"), vec![h, ff], l.w_down.to_f32_vec()));
        out.push(HfTensor::new(p("input_layernorm.weight"), vec![h], l.attn_norm.clone()));
        out.push(HfTensor::new(p("post_attention_layernorm.weight"), vec![h], l.ffn_norm.clone()));
    }
    out.push(HfTensor::new("model.norm.weight", vec![h], w.final_norm.clone()));
    if let Some(lm) = &w.lm_head {
        out.push(HfTensor::new("lm_head.weight", vec![cfg.vocab_size, h], lm.to_f32_vec()));
    }
    Ok(out)
}

/// `config.json` for `cfg` under `architecture` (e.g. `LlamaForCausalLM`).
/// A GGUF file's per-pair rotary factors (`rope_freqs`) have no Hugging
/// Face field and are refused.
pub fn hf_config(cfg: &ModelConfig, architecture: &str, tokenizer: Option<&Tokenizer>) -> Result<Value> {
    if cfg.rope_freq_factors.is_some() && cfg.rope_scaling.is_none() {
        return Err(EngineError::Export("the model's per-pair rotary factors (GGUF rope_freqs) have no config.json field".into()));
    }
    let mut v = json!({
        "architectures": [architecture],
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "hidden_act": "silu",
        "torch_dtype": "float16",
    });
    if let Some(s) = &cfg.rope_scaling {
        v["rope_scaling"] = json!({
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        });
    }
    if let Some(t) = tokenizer {
        if let Some(b) = t.bos_id {
            v["bos_token_id"] = json!(b);
        }
        if let Some(&e) = t.eos_ids.first() {
            v["eos_token_id"] = json!(e);
        }
    }
    Ok(v)
}

/// Writes `tensors` as f16 to `path` (one file), through a temporary file
/// so a reader never sees half of it.
pub fn write_safetensors_f16(path: &Path, tensors: &[HfTensor]) -> Result<()> {
    use safetensors::tensor::TensorView;
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| t.data.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect()).collect();
    let mut views = Vec::with_capacity(tensors.len());
    for (t, b) in tensors.iter().zip(&bytes) {
        if t.shape.iter().product::<usize>() != t.data.len() {
            return Err(EngineError::Export(format!("tensor {} has {} values for shape {:?}", t.name, t.data.len(), t.shape)));
        }
        let view = TensorView::new(safetensors::Dtype::F16, t.shape.clone(), b).map_err(|e| EngineError::Export(format!("tensor {}: {e}", t.name)))?;
        views.push((t.name.clone(), view));
    }
    let tmp = path.with_extension("safetensors.tmp");
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| EngineError::Io { path: p, source }
    };
    let data = safetensors::serialize(views, None).map_err(|e| EngineError::Export(format!("serializing {}: {e}", path.display())))?;
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Writes the model files of a checkpoint directory: `config.json`
/// (`config`) and `model.safetensors` (`tensors`, f16), creating `dir`.
pub fn write_hf_model(dir: &Path, config: &Value, tensors: &[HfTensor]) -> Result<()> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| EngineError::Io { path: p, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_safetensors_f16(&dir.join("model.safetensors"), tensors)?;
    let p = dir.join("config.json");
    std::fs::write(&p, serde_json::to_string_pretty(config).expect("a JSON value serializes")).map_err(io(&p))
}

/// Writes a whole checkpoint directory: [`write_hf_model`] plus
/// `tokenizer`'s files.
pub fn write_hf_dir(dir: &Path, config: &Value, tensors: &[HfTensor], tokenizer: &Tokenizer) -> Result<()> {
    write_hf_model(dir, config, tensors)?;
    tokenizer.save_hf(dir)
}
