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

/// Which weights of a checkpoint to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parts {
    #[default]
    All,
    /// The embedding, final norm and lm_head, without the decoder layers:
    /// what a draft worker needs of its target (EAGLE heads and MTP layers
    /// read the target's embedding and lm_head, never its body). The
    /// fingerprint is the same as a full load's.
    EmbeddingAndHead,
}

impl Parts {
    /// Decoder layers to read of `n`.
    pub(crate) fn layers(self, n: usize) -> usize {
        match self {
            Parts::All => n,
            Parts::EmbeddingAndHead => 0,
        }
    }
}

/// Loads a GGUF file or a Hugging Face directory.
pub fn load(path: &Path, dtype: DType) -> Result<LoadedCheckpoint> {
    load_parts(path, dtype, Parts::All)
}

/// [`load`], with only the `parts` asked for.
pub fn load_parts(path: &Path, dtype: DType, parts: Parts) -> Result<LoadedCheckpoint> {
    if path.is_dir() {
        hf::load_dir_parts(path, dtype, parts)
    } else if path.exists() {
        gguf::load_file_parts(path, dtype, parts)
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
