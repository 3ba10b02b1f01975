//! Model hyper-parameters, read from GGUF metadata or a Hugging Face
//! `config.json`, in one normalized form.

use crate::error::{EngineError, Result};
use serde_json::Value;
use std::path::Path;

/// Model families the engine runs. All are Llama-shaped decoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): GGUF llama files (the converter permutes q/k for it).
    Interleaved,
    /// Pairs (i, i + d/2): Hugging Face checkpoints and GGUF qwen2 ("NeoX").
    HalfSplit,
}

/// Llama 3.x frequency scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    /// Per-pair frequency divisors (GGUF `rope_freqs.weight`, Llama 3.x).
    pub rope_freq_factors: Option<Vec<f64>>,
    pub rope_style: RopeStyle,
    pub rms_norm_eps: f32,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub attention_bias: bool,
}

impl ModelConfig {
    /// Checks the shape relations the forward pass relies on.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(EngineError::BadConfig { path: path.to_path_buf(), msg });
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_layers == 0 || self.hidden_size == 0 {
            return bad("zero-sized dimension".into());
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return bad(format!("{} heads not divisible by {} kv heads", self.num_heads, self.num_kv_heads));
        }
        if self.head_dim % 2 != 0 {
            return bad(format!("head_dim {} is odd", self.head_dim));
        }
        Ok(())
    }

    /// Inverse rotary frequencies, one per dimension pair, with scaling applied.
    pub fn inv_freqs(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        (0..half)
            .map(|i| {
                let mut f = 1.0 / self.rope_theta.powf(2.0 * i as f64 / self.head_dim as f64);
                if let Some(ff) = &self.rope_freq_factors {
                    f /= ff.get(i).copied().unwrap_or(1.0);
                }
                match self.rope_scaling {
                    None => f,
                    Some(s) => {
                        let low_wl = s.original_max_position_embeddings / s.low_freq_factor;
                        let high_wl = s.original_max_position_embeddings / s.high_freq_factor;
                        let wl = 2.0 * std::f64::consts::PI / f;
                        if wl < high_wl {
                            f
                        } else if wl > low_wl {
                            f / s.factor
                        } else {
                            let smooth = (s.original_max_position_embeddings / wl - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * f / s.factor + smooth * f
                        }
                    }
                }
            })
            .collect()
    }

    /// Parses a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path, v: &Value) -> Result<Self> {
        let bad = |msg: String| EngineError::BadConfig { path: path.to_path_buf(), msg };
        let arch_name = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .or_else(|| v.get("model_type").and_then(|m| m.as_str()))
            .ok_or_else(|| bad("no `architectures` or `model_type`".into()))?;
        let arch = match arch_name {
            "LlamaForCausalLM" | "llama" => Arch::Llama,
            "MistralForCausalLM" | "mistral" => Arch::Mistral,
            // MiMo is a Qwen2 body; its MTP layers are the drafter's business.
            "Qwen2ForCausalLM" | "qwen2" | "MiMoForCausalLM" | "mimo" => Arch::Qwen2,
            other => return Err(EngineError::UnsupportedArch { path: path.to_path_buf(), arch: other.to_string() }),
        };
        let get = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
        let req = |k: &str| get(k).ok_or_else(|| bad(format!("missing integer field `{k}`")));
        let hidden = req("hidden_size")?;
        let heads = req("num_attention_heads")?;
        let max_pos = get("max_position_embeddings").unwrap_or(4096);
        if arch != Arch::Llama {
            let sliding = v.get("sliding_window").and_then(|x| x.as_u64()).map(|x| x as usize);
            let uses = v.get("use_sliding_window").and_then(|x| x.as_bool()).unwrap_or(arch == Arch::Mistral);
            if let (true, Some(w)) = (uses, sliding) {
                if w < max_pos {
                    return Err(bad(format!("sliding-window attention ({w} < {max_pos} positions) is not supported")));
                }
            }
        }
        // transformers 5 writes `rope_parameters` (rope_theta and the
        // scaling together) where 4.x wrote `rope_theta` and `rope_scaling`.
        let rope_parameters = v.get("rope_parameters").filter(|p| p.is_object());
        let rope_theta = v.get("rope_theta").or_else(|| rope_parameters.and_then(|p| p.get("rope_theta"))).and_then(|x| x.as_f64()).unwrap_or(10000.0);
        let rope_scaling = match v.get("rope_scaling").filter(|r| !r.is_null()).or(rope_parameters) {
            None | Some(Value::Null) => None,
            Some(rs) => {
                let ty = rs.get("rope_type").or_else(|| rs.get("type")).and_then(|t| t.as_str()).unwrap_or("");
                let f = |k: &str| rs.get(k).and_then(|x| x.as_f64()).ok_or_else(|| bad(format!("rope_scaling.{k} missing")));
                match ty {
                    "llama3" => Some(Llama3Scaling {
                        factor: f("factor")?,
                        low_freq_factor: f("low_freq_factor")?,
                        high_freq_factor: f("high_freq_factor")?,
                        original_max_position_embeddings: f("original_max_position_embeddings")?,
                    }),
                    "default" | "" => None,
                    other => return Err(bad(format!("unsupported rope_scaling type `{other}`"))),
                }
            }
        };
        Ok(ModelConfig {
            arch,
            hidden_size: hidden,
            intermediate_size: req("intermediate_size")?,
            num_layers: req("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: get("num_key_value_heads").unwrap_or(heads),
            head_dim: get("head_dim").unwrap_or(hidden / heads.max(1)),
            vocab_size: req("vocab_size")?,
            max_position_embeddings: max_pos,
            rope_theta,
            rope_scaling,
            rope_freq_factors: None,
            rope_style: RopeStyle::HalfSplit,
            rms_norm_eps: v.get("rms_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-6) as f32,
            tie_word_embeddings: v.get("tie_word_embeddings").and_then(|x| x.as_bool()).unwrap_or(false),
            attention_bias: v
                .get("attention_bias")
                .and_then(|x| x.as_bool())
                .unwrap_or(arch == Arch::Qwen2),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "max_position_embeddings": 2048})
    }

    #[test]
    fn transformers_5_rope_parameters_read_as_4x_rope_theta_and_rope_scaling() {
        let scaling = json!({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let mut v4 = base();
        v4["rope_theta"] = json!(500000.0);
        let mut rs = scaling.clone();
        rs["rope_type"] = json!("llama3");
        v4["rope_scaling"] = rs.clone();
        let mut v5 = base();
        rs["rope_theta"] = json!(500000.0);
        v5["rope_parameters"] = rs;
        let p = Path::new("config.json");
        let (a, b) = (ModelConfig::from_hf_json(p, &v4).unwrap(), ModelConfig::from_hf_json(p, &v5).unwrap());
        assert_eq!(a.rope_theta, 500000.0);
        assert_eq!(b.rope_theta, 500000.0);
        assert_eq!(a.rope_scaling, b.rope_scaling);
        assert!(b.rope_scaling.is_some());
        // A plain v5 config: default rope type, theta from rope_parameters.
        let mut plain = base();
        plain["rope_parameters"] = json!({"rope_theta": 100000.0, "rope_type": "default"});
        plain["rope_scaling"] = Value::Null;
        let c = ModelConfig::from_hf_json(p, &plain).unwrap();
        assert_eq!((c.rope_theta, c.rope_scaling), (100000.0, None));
    }
}
