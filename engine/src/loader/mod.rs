//! Checkpoint loading: GGUF files and Hugging Face safetensors directories.

pub mod gguf;
pub mod hf;

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::weights::{DType, ModelWeights};
use std::path::Path;

/// What a tokenizer needs from a checkpoint, whatever its format.
pub enum TokenizerSource {
    /// GGUF `tokenizer.ggml.*` metadata.
    Gguf(gguf::GgufTokenizerMeta),
    /// A Hugging Face `tokenizer.json` (+ `tokenizer_config.json`).
    HfDir(std::path::PathBuf),
}

pub struct LoadedCheckpoint {
    pub config: ModelConfig,
    pub weights: ModelWeights,
    pub tokenizer: TokenizerSource,
    /// sha256 over the config and a sample of weights: a cheap identity for
    /// pairing draft heads with their targets.
    pub fingerprint: String,
}

/// Loads a GGUF file or a Hugging Face directory.
pub fn load(path: &Path, dtype: DType) -> Result<LoadedCheckpoint> {
    if path.is_dir() {
        hf::load_dir(path, dtype)
    } else if path.exists() {
        gguf::load_file(path, dtype)
    } else {
        Err(EngineError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        })
    }
}

pub(crate) fn check_shape(path: &Path, name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        return Err(EngineError::BadTensor {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            msg: format!("shape {got:?}, expected {want:?}"),
        });
    }
    Ok(())
}
