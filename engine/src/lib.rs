//! Aerie's model engine: loading Llama-family checkpoints (GGUF and Hugging
//! Face safetensors), tokenization and chat templates, and a CPU forward pass
//! that scores token trees in one call.

pub mod chat;
pub mod config;
pub mod cuda;
pub mod error;
pub mod export;
pub mod fetch;
pub mod generate;
pub mod grammar;
pub mod kv;
pub mod layers;
pub mod loader;
pub mod model;
pub mod processors;
pub mod random;
pub mod sampling;
pub mod spec;
pub mod tokenizer;
pub mod tp;
pub mod weights;

pub use chat::{ChatMessage, ChatTemplate};
pub use config::ModelConfig;
pub use error::{EngineError, Result};
pub use kv::KvCache;
pub use model::{AttnMask, ForwardOptions, LogitsRows, Model, SeqInput, SeqOutput};
pub use grammar::{ConstraintSpec, Grammar, GrammarCompiler};
pub use processors::{Processors, TokenLogprob};
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::{BoundedIds, StreamDecoder, Tokenizer};
pub use weights::DType;

use std::path::Path;

/// A loaded model with its tokenizer and chat template.
pub struct Engine {
    pub model: std::sync::Arc<Model>,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
}

impl Engine {
    /// Loads a model by name (`smollm2`, fetched on first use) or path.
    pub fn load(spec: &str, dtype: DType) -> Result<Engine> {
        let path = fetch::resolve_model(spec)?;
        Self::load_path(&path, dtype)
    }

    pub fn load_path(path: &Path, dtype: DType) -> Result<Engine> {
        Self::load_path_parts(path, dtype, loader::Parts::All)
    }

    /// [`Self::load`] with only the embedding and lm_head of the model (see
    /// [`loader::Parts::EmbeddingAndHead`]); its forward pass refuses to run.
    pub fn load_for_drafting(spec: &str, dtype: DType) -> Result<Engine> {
        let path = fetch::resolve_model(spec)?;
        Self::load_path_parts(&path, dtype, loader::Parts::EmbeddingAndHead)
    }

    fn load_path_parts(path: &Path, dtype: DType, parts: loader::Parts) -> Result<Engine> {
        let ck = loader::load_parts(path, dtype, parts)?;
        let tokenizer = match &ck.tokenizer {
            loader::TokenizerSource::Gguf(meta) => Tokenizer::from_gguf(meta)?,
            loader::TokenizerSource::HfDir(dir) => Tokenizer::from_hf_dir(dir)?,
        };
        let template = match &tokenizer.chat_template {
            Some(src) => Some(ChatTemplate::new(src, &tokenizer.bos_token, &tokenizer.eos_token)?),
            None => None,
        };
        Ok(Engine { model: std::sync::Arc::new(Model::new(ck.config, ck.weights, ck.fingerprint)), tokenizer, template })
    }

    /// Prompt ids for a chat: template rendered, specials parsed, BOS added
    /// if the tokenizer asks for one and the template did not write it.
    pub fn chat_prompt_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let t = self
            .template
            .as_ref()
            .ok_or_else(|| EngineError::ChatTemplate("the model has no chat template; use a raw prompt".into()))?;
        let text = t.render(messages, true)?;
        self.raw_prompt_ids(&text)
    }

    /// Prompt ids for raw text with special tokens recognized.
    pub fn raw_prompt_ids(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.prompt_ids(text)
    }
}
