//! The bench layer's errors. A failed *request* is not an error here: it is
//! recorded (`RequestRecord::error`) and counted, because a benchmark must
//! report failures rather than stop at the first one.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("dataset {name}: {msg}")]
    Dataset { name: String, msg: String },
    #[error("invalid benchmark settings: {0}")]
    Config(String),
    #[error("{what} did not start: {msg}")]
    Startup { what: String, msg: String },
    #[error("plotting {path}: {msg}")]
    Plot { path: PathBuf, msg: String },
}

impl BenchError {
    /// A stable label for logs and metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            BenchError::Io { .. } => "io",
            BenchError::Dataset { .. } => "dataset",
            BenchError::Config(_) => "config",
            BenchError::Startup { .. } => "startup",
            BenchError::Plot { .. } => "plot",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BenchError::Io { path: path.into(), source }
    }
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;
