//! Multi-token-prediction (MTP) layers that ship with a target model, used
//! as its drafter (SGLang's NEXTN and MiMo MTP, vLLM's `method: mtp`).
//!
//! Two published layouts, over a dense decoder layer, both predicting the
//! token after next from the target's final normed hidden state `f_t` and
//! the next token `x_{t+1}` (the same pairing as an EAGLE row):
//!
//! - **MiMo** (`MiMoForCausalLM`, `num_nextn_predict_layers` in its config):
//!   `model.mtp_layers.{i}.` + `token_layernorm`, `hidden_layernorm`,
//!   `input_proj` (H × 2H over `cat(hidden_layernorm(f), token_layernorm(e))`),
//!   a Qwen2 decoder layer under the same prefix (`input_layernorm`,
//!   `self_attn.*` with q/k/v biases, `post_attention_layernorm`, `mlp.*`)
//!   and `final_layernorm`, whose output is both the next step's state and
//!   the lm_head input. Embedding and lm_head are the target's.
//! - **DeepSeek-V3 NextN**: `model.layers.{L+i}.` (after the target's L
//!   layers) + `enorm`, `hnorm`, `eh_proj` (H × 2H over
//!   `cat(enorm(e), hnorm(f))`), the decoder layer under the same prefix,
//!   `shared_head.norm` before the lm_head and, when present,
//!   `shared_head.head` (else the target's lm_head). The un-normed layer
//!   output is the next step's state. SGLang's separate NextN checkpoints
//!   (`…ForCausalLMNextN`, `num_hidden_layers == num_nextn_predict_layers`)
//!   hold the same tensors under `model.layers.{i}.`.
//!
//! As in SGLang and vLLM, the embedding of the row at position 0 is zeroed.
//! The hidden state is the target's final *normed* one, as SGLang passes it
//! (vLLM passes MiMo the residual stream before the norm; the two differ
//! only in what the layer was trained on, never in what the target accepts).
//! Only dense layers are read: an MLA or MoE layer (DeepSeek-V3's own) is
//! refused by name.

use crate::error::{DraftError, Result};
use aerie_engine::config::ModelConfig;
use aerie_engine::loader::hf::SafetensorsDir;
use aerie_engine::EngineError;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Which tensor layout a checkpoint's MTP layers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtpLayout {
    MiMo,
    NextN,
}

/// The MTP layers found in a checkpoint directory.
#[derive(Debug, Clone)]
pub struct MtpCheckpoint {
    pub dir: PathBuf,
    pub layout: MtpLayout,
    /// `num_nextn_predict_layers`.
    pub num_layers: usize,
    /// Index of MTP layer 0 in the tensor names (`model.layers.{first}`);
    /// 0 for MiMo's own `mtp_layers` list.
    first: usize,
    /// The layer geometry (one decoder layer, the target's widths).
    pub config: ModelConfig,
}

/// Tensor names of one MTP layer.
pub struct MtpNames {
    prefix: String,
    layout: MtpLayout,
}

impl MtpNames {
    fn at(&self, s: &str) -> String {
        format!("{}{s}", self.prefix)
    }
    /// The decoder layer's own tensors (`input_layernorm.weight`, `self_attn.q_proj.weight`, …).
    pub fn layer(&self, s: &str) -> String {
        self.at(s)
    }
    pub fn token_norm(&self) -> String {
        self.at(if self.layout == MtpLayout::MiMo { "token_layernorm.weight" } else { "enorm.weight" })
    }
    pub fn hidden_norm(&self) -> String {
        self.at(if self.layout == MtpLayout::MiMo { "hidden_layernorm.weight" } else { "hnorm.weight" })
    }
    pub fn input_proj(&self) -> String {
        self.at(if self.layout == MtpLayout::MiMo { "input_proj.weight" } else { "eh_proj.weight" })
    }
    /// MiMo's `final_layernorm` or NextN's `shared_head.norm`.
    pub fn out_norm(&self) -> String {
        self.at(if self.layout == MtpLayout::MiMo { "final_layernorm.weight" } else { "shared_head.norm.weight" })
    }
    /// NextN's own output head, if the checkpoint carries one.
    pub fn own_head(&self) -> String {
        self.at("shared_head.head.weight")
    }
}

impl MtpCheckpoint {
    /// The MTP layers of the checkpoint in `dir`, or `None` when it has none
    /// (no `config.json`, or `num_nextn_predict_layers` absent or 0). A GGUF
    /// file is never an MTP checkpoint.
    pub fn detect(dir: &Path) -> Result<Option<MtpCheckpoint>> {
        let p = dir.join("config.json");
        if !dir.is_dir() || !p.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(|source| EngineError::Io { path: p.clone(), source })?;
        let mut v: Value = serde_json::from_str(&text).map_err(|e| EngineError::BadConfig { path: p.clone(), msg: e.to_string() })?;
        let n = v.get("num_nextn_predict_layers").and_then(|x| x.as_u64()).unwrap_or(0) as usize;
        if n == 0 {
            return Ok(None);
        }
        let arch = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .or_else(|| v.get("model_type").and_then(|m| m.as_str()))
            .unwrap_or("")
            .to_string();
        let body_layers = v.get("num_hidden_layers").and_then(|x| x.as_u64()).unwrap_or(0) as usize;
        let (layout, first, body) = if arch == "MiMoForCausalLM" || arch == "mimo" {
            (MtpLayout::MiMo, 0, "Qwen2ForCausalLM")
        } else if arch.ends_with("NextN") {
            if body_layers != n {
                return Err(EngineError::BadConfig { path: p, msg: format!("a NextN checkpoint holds only its {n} MTP layers, but num_hidden_layers is {body_layers}") }.into());
            }
            (MtpLayout::NextN, 0, "LlamaForCausalLM")
        } else {
            let body = if arch.starts_with("Qwen2") { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" };
            (MtpLayout::NextN, body_layers, body)
        };
        // The layer geometry is the target's, read as a one-layer decoder.
        v["architectures"] = Value::from(vec![body]);
        v["num_hidden_layers"] = Value::from(1);
        let config = ModelConfig::from_hf_json(&p, &v)?;
        config.validate(&p)?;
        Ok(Some(MtpCheckpoint { dir: dir.to_path_buf(), layout, num_layers: n, first, config }))
    }

    /// Tensor names of MTP layer `i` (0-based among the MTP layers).
    pub fn names(&self, i: usize) -> MtpNames {
        let prefix = match self.layout {
            MtpLayout::MiMo => format!("model.mtp_layers.{i}."),
            MtpLayout::NextN => format!("model.layers.{}.", self.first + i),
        };
        MtpNames { prefix, layout: self.layout }
    }

    /// Refuses layers this engine cannot run (DeepSeek-V3's MLA attention
    /// or MoE MLP), naming the tensor that shows it.
    pub fn check_dense(&self, st: &SafetensorsDir, i: usize) -> Result<()> {
        let names = self.names(i);
        for (t, what) in [("self_attn.q_a_proj.weight", "MLA attention"), ("self_attn.kv_a_proj_with_mqa.weight", "MLA attention"), ("mlp.gate.weight", "a mixture-of-experts MLP")] {
            let n = names.layer(t);
            if st.has(&n) {
                return Err(DraftError::HeadMismatch { path: self.dir.clone(), msg: format!("MTP layer {i} has {what} (`{n}`); only dense MTP layers are supported") });
            }
        }
        Ok(())
    }
}
