//! Draft-head checkpoints: `config.json` + `model.safetensors`, in the
//! layouts published for SGLang and SafeAILab/EAGLE.
//!
//! - EAGLE-1/2 (`LlamaForCausalLMEagle`; SafeAILab's own configs say
//!   `LlamaForCausalLM`): `fc.{weight,bias}` (H × 2H over
//!   cat(embed(token), feature)), then `layers.{i}.*` Llama decoder layers,
//!   layer 0 without `input_layernorm`, no final norm. Embedding and lm_head
//!   come from the target.
//! - EAGLE-3 (`LlamaForCausalLMEagle3`): `fc.weight` (H × 3H over the
//!   concatenated target aux-layer outputs), `midlayer.*` with
//!   `input_layernorm` (on the embedding), `hidden_norm` (on the feature) and
//!   a 2H-wide attention input, a final `norm`, its own `lm_head` over
//!   `draft_vocab_size` tokens and `d2t` (target id = i + d2t[i]).
//!   Aux layers come from `eagle_config.eagle_aux_hidden_state_layer_ids`
//!   or default to [1, L/2-1, L-4] for an L-layer target.
//!
//! Tensor names may carry a `model.` prefix, as some exports do.

use crate::error::{DraftError, Result};
use aerie_engine::config::ModelConfig;
use aerie_engine::EngineError;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Which head family a checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EagleKind {
    /// EAGLE-1 and EAGLE-2 (same weights; EAGLE-2 only changes the tree).
    Eagle,
    Eagle3,
    /// A target's own multi-token-prediction layer (MiMo MTP, DeepSeek
    /// NextN; see [`super::mtp`]): EAGLE's pairing and features, with
    /// normed inputs and a full decoder layer.
    Mtp,
}

/// A parsed head config.
#[derive(Debug, Clone)]
pub struct EagleConfig {
    pub path: PathBuf,
    pub kind: EagleKind,
    /// The head's decoder geometry (vocab = the target vocabulary).
    pub llama: ModelConfig,
    /// EAGLE-3: rows of the head's own lm_head.
    pub draft_vocab_size: Option<usize>,
    /// EAGLE-3: the target layers whose outputs feed `fc`, if the config names them.
    pub aux_layer_ids: Option<Vec<usize>>,
    /// EAGLE-3: hidden size of the target features (defaults to the head's).
    pub target_hidden_size: Option<usize>,
}

impl EagleConfig {
    pub fn read(dir: &Path) -> Result<EagleConfig> {
        let p = dir.join("config.json");
        let text = std::fs::read_to_string(&p).map_err(|source| EngineError::Io { path: p.clone(), source })?;
        let mut v: Value = serde_json::from_str(&text).map_err(|e| EngineError::BadConfig { path: p.clone(), msg: e.to_string() })?;
        if !v.is_object() {
            return Err(EngineError::BadConfig { path: p.clone(), msg: "expected a JSON object".into() }.into());
        }
        let arch = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .unwrap_or("LlamaForCausalLMEagle")
            .to_string();
        let kind = match arch.as_str() {
            "LlamaForCausalLMEagle3" => EagleKind::Eagle3,
            "LlamaForCausalLMEagle" | "LlamaForCausalLM" | "EagleLlamaForCausalLM" => EagleKind::Eagle,
            other => {
                return Err(EngineError::UnsupportedArch { path: p.clone(), arch: format!("{other} (draft heads: LlamaForCausalLMEagle, LlamaForCausalLMEagle3)") }.into())
            }
        };
        // The decoder geometry is a Llama config under another name.
        v["architectures"] = Value::from(vec!["LlamaForCausalLM"]);
        let llama = ModelConfig::from_hf_json(&p, &v)?;
        llama.validate(&p)?;
        let usize_of = |x: &Value| x.as_u64().map(|n| n as usize);
        let aux_layer_ids = v
            .get("eagle_config")
            .and_then(|e| e.get("eagle_aux_hidden_state_layer_ids"))
            .and_then(|a| a.as_array())
            .map(|a| a.iter().map(usize_of).collect::<Option<Vec<usize>>>())
            .map(|o| o.ok_or_else(|| DraftError::from(EngineError::BadConfig { path: p.clone(), msg: "eagle_aux_hidden_state_layer_ids must be non-negative integers".into() })))
            .transpose()?;
        Ok(EagleConfig {
            path: dir.to_path_buf(),
            kind,
            draft_vocab_size: v.get("draft_vocab_size").and_then(usize_of),
            aux_layer_ids,
            target_hidden_size: v.get("target_hidden_size").and_then(usize_of),
            llama,
        })
    }

    /// Refuses a head that cannot serve `target`, saying why.
    pub fn check_target(&self, target: &ModelConfig) -> Result<()> {
        let bad = |msg: String| Err(DraftError::HeadMismatch { path: self.path.clone(), msg });
        let h = self.llama.hidden_size;
        let feat_h = self.target_hidden_size.unwrap_or(h);
        if feat_h != target.hidden_size {
            return bad(format!("head expects target features of width {feat_h}, the target's hidden size is {}", target.hidden_size));
        }
        if h != target.hidden_size {
            return bad(format!("head hidden size {h} differs from the target's {} (the embedding is shared)", target.hidden_size));
        }
        if self.llama.vocab_size != target.vocab_size {
            return bad(format!("head vocabulary {} differs from the target's {}", self.llama.vocab_size, target.vocab_size));
        }
        if let Some(dv) = self.draft_vocab_size {
            if dv == 0 || dv > target.vocab_size {
                return bad(format!("draft_vocab_size {dv} must be in 1..={}", target.vocab_size));
            }
        }
        if self.kind == EagleKind::Eagle3 {
            let ids = self.aux_layers(target.num_layers)?;
            if let Some(&l) = ids.iter().find(|&&l| l >= target.num_layers) {
                return bad(format!("aux layer {l} does not exist in a {}-layer target", target.num_layers));
            }
        }
        Ok(())
    }

    /// EAGLE-3 aux layers for an `n`-layer target, ascending.
    pub fn aux_layers(&self, n: usize) -> Result<Vec<usize>> {
        let mut ids = match &self.aux_layer_ids {
            Some(ids) => ids.clone(),
            None => default_aux_layers(n).ok_or_else(|| DraftError::HeadMismatch {
                path: self.path.clone(),
                msg: format!("a {n}-layer target has no default EAGLE-3 aux layers; set eagle_config.eagle_aux_hidden_state_layer_ids"),
            })?,
        };
        if ids.len() != 3 {
            return Err(DraftError::HeadMismatch { path: self.path.clone(), msg: format!("EAGLE-3 needs three aux layers, config names {ids:?}") });
        }
        ids.sort_unstable();
        Ok(ids)
    }
}

/// EAGLE-3's default aux layers for an `n`-layer target: 1, n/2−1 and n−4
/// (low, middle and high features). `None` below 5 layers, where n−4 would
/// not be a layer above 0.
pub fn default_aux_layers(n: usize) -> Option<Vec<usize>> {
    (n >= 5).then(|| vec![1, n / 2 - 1, n - 4])
}
