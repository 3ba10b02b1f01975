//! Errors of the draft layer. Engine errors (files, tensors, shapes) are
//! wrapped; the rest say which setting or file is wrong and why.

use aerie_engine::EngineError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DraftError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A draft head whose shape does not fit the target it would serve.
    #[error("draft head {path} does not match the target: {msg}")]
    HeadMismatch { path: PathBuf, msg: String },
    /// A `--speculative-token-map` file that cannot be used.
    #[error("token map {path}: {msg}")]
    BadTokenMap { path: PathBuf, msg: String },
    /// An impossible or contradictory speculative setting.
    #[error("{0}")]
    BadSetting(String),
    /// Training: bad data, a feature cache that does not fit, a failed
    /// tensor op.
    #[error("training: {0}")]
    Train(String),
}

impl DraftError {
    /// A stable, low-cardinality label for metrics and logs.
    pub fn error_type(&self) -> &'static str {
        match self {
            DraftError::Engine(e) => e.error_type(),
            DraftError::HeadMismatch { .. } => "head_mismatch",
            DraftError::BadTokenMap { .. } => "bad_token_map",
            DraftError::BadSetting(_) => "bad_setting",
            DraftError::Train(_) => "train",
        }
    }
}

impl From<DraftError> for EngineError {
    /// Proposers report through the engine's `Proposer` trait.
    fn from(e: DraftError) -> EngineError {
        match e {
            DraftError::Engine(e) => e,
            other => EngineError::InvalidInput(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, DraftError>;
