//! The engine's error type. Each variant names what went wrong and where
//! (file, tensor, field), so a bad checkpoint is diagnosable from the message
//! alone. `error_type()` gives a stable label for metrics.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a readable model file: {msg}")]
    BadFile { path: PathBuf, msg: String },
    #[error("{path}: tensor `{tensor}`: {msg}")]
    BadTensor { path: PathBuf, tensor: String, msg: String },
    #[error("{path}: missing tensor `{tensor}`")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: unsupported architecture `{arch}` (supported: llama, mistral, qwen2 and their *ForCausalLM names)")]
    UnsupportedArch { path: PathBuf, arch: String },
    #[error("{path}: bad model config: {msg}")]
    BadConfig { path: PathBuf, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("model fetch: {0}")]
    Fetch(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("context length exceeded: {needed} tokens needed, model allows {limit}")]
    ContextLength { needed: usize, limit: usize },
    #[error(transparent)]
    Device(#[from] aerie_kernels::cuda::device::DeviceError),
    #[error("KV cache full: {needed} more pages needed, {free} free")]
    KvCacheFull { needed: usize, free: usize },
    #[error("tensor-parallel group: {0}")]
    TensorParallel(String),
    #[error("export: {0}")]
    Export(String),
}

impl EngineError {
    /// A stable, low-cardinality label for metrics and logs.
    pub fn error_type(&self) -> &'static str {
        match self {
            EngineError::Io { .. } => "io",
            EngineError::BadFile { .. } => "bad_file",
            EngineError::BadTensor { .. } => "bad_tensor",
            EngineError::MissingTensor { .. } => "missing_tensor",
            EngineError::UnsupportedArch { .. } => "unsupported_arch",
            EngineError::BadConfig { .. } => "bad_config",
            EngineError::Tokenizer(_) => "tokenizer",
            EngineError::ChatTemplate(_) => "chat_template",
            EngineError::Fetch(_) => "fetch",
            EngineError::InvalidInput(_) => "invalid_input",
            EngineError::ContextLength { .. } => "context_length",
            EngineError::Device(_) => "device",
            EngineError::KvCacheFull { .. } => "kv_cache_full",
            EngineError::Export(_) => "export",
            EngineError::TensorParallel(_) => "tensor_parallel",
        }
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;
