//! Training EAGLE heads for a target (`aerie train-eagle`).
//!
//! Pipeline: [`sharegpt`] conversations → [`data`] (chat template, assistant
//! mask, optional self-distillation by the target) → [`features`] (the
//! on-disk f16 cache of target features) → [`trainer`] (candle autograd,
//! AdamW, checkpoints) → a head in the published layout, loadable by
//! [`crate::eagle::EagleHead`] and by SGLang.

pub mod data;
pub mod features;
pub mod head_model;
pub mod sharegpt;
pub mod trainer;
pub mod validate;

pub use data::{build_features, AnswerSource, DataConfig};
pub use features::{CacheMeta, FeatureCache, FeatureCacheWriter};
pub use trainer::{train_eagle, train_eagle_validated, write_head, StepLog, TrainConfig};
pub use validate::{validate, ValStats};

use crate::error::{DraftError, Result};
use aerie_engine::EngineError;
use std::path::Path;

/// Maps an I/O error on `path` into the draft layer's error.
pub(crate) fn io(path: &Path) -> impl Fn(std::io::Error) -> DraftError + '_ {
    move |source| EngineError::Io { path: path.to_path_buf(), source }.into()
}

/// Reads and parses a JSON file the trainer wrote (cache meta, train state).
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_str(&std::fs::read_to_string(path).map_err(io(path))?).map_err(|e| DraftError::Train(format!("{}: {e}", path.display())))
}

/// [`read_json`] for a file an earlier run may not have written yet.
pub(crate) fn read_json_if_exists<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}
