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

pub use data::{build_features, AnswerSource, DataConfig};
pub use features::{CacheMeta, FeatureCache, FeatureCacheWriter};
pub use trainer::{train_eagle, write_head, StepLog, TrainConfig};
