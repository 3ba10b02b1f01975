//! Plain autoregressive generation: prefill the prompt, then one token per
//! forward. This is the reference every speculative path must reproduce.

use crate::error::{EngineError, Result};
use crate::model::{AttnMask, ForwardOptions, LogitsRows, Model, SeqInput};
use crate::cuda::sample;
use crate::processors::{self, History};
use crate::sampling::{Sampler, SamplingParams};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence or stop token was produced.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

#[derive(Debug, Clone)]
pub struct GenerationOutput {
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub stats: GenerationStats,
}

pub struct GenerateRequest<'a> {
    pub prompt_ids: &'a [u32],
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Tokens that end generation (EOS and friends); included in the output.
    pub stop_ids: &'a [u32],
}

/// Generates token by token, calling `on_token` for each new token.
pub fn generate(model: &Model, req: &GenerateRequest, on_token: &mut dyn FnMut(u32)) -> Result<GenerationOutput> {
    if req.prompt_ids.is_empty() {
        return Err(EngineError::InvalidInput("prompt is empty".into()));
    }
    let limit = model.config.max_position_embeddings;
    if req.prompt_ids.len() >= limit {
        return Err(EngineError::ContextLength { needed: req.prompt_ids.len() + 1, limit });
    }
    let mut cache = model.new_cache();
    let mut sampler = Sampler::new(req.sampling.seed);
    // On a device, a sampled request's token is drawn there from the last
    // hidden state (a tree of one node, see `cuda::sample`): the logits
    // stay on the device.
    let on_device = model.cuda().filter(|_| sample::samples_on_device(&req.sampling));
    let opts = ForwardOptions { want_hidden: on_device.is_some(), ..Default::default() };
    let rows = if on_device.is_some() { LogitsRows::None } else { LogitsRows::Last };
    let mut stats = GenerationStats { prompt_tokens: req.prompt_ids.len(), ..Default::default() };
    let t0 = Instant::now();
    let mut out = model.forward(
        &mut [SeqInput { cache: &mut cache, tokens: req.prompt_ids, positions: None, mask: AttnMask::Causal, logits: rows.clone() }],
        &opts,
    )?;
    stats.prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let mut tokens = Vec::new();
    let mut finish = FinishReason::Length;
    let mut history = History::new(req.prompt_ids);
    while tokens.len() < req.max_tokens && cache.len() < limit {
        let next = match on_device {
            Some(cuda) => {
                let hidden = &out[0].hidden[out[0].hidden.len() - model.config.hidden_size..];
                let last = tokens.last().or(req.prompt_ids.last()).copied().unwrap_or(0);
                cuda.sample_next(hidden, last, &req.sampling, &mut sampler)?
            }
            None => {
                let mut logits = std::mem::take(&mut out[0].logits);
                processors::apply(&mut logits, &req.sampling.processors, &history.with_path(&[]), req.stop_ids);
                sampler.sample(&logits, &req.sampling)
            }
        };
        history.push(next);
        tokens.push(next);
        on_token(next);
        if req.stop_ids.contains(&next) {
            finish = FinishReason::Stop;
            break;
        }
        if tokens.len() == req.max_tokens || cache.len() >= limit {
            break;
        }
        out = model.forward(
            &mut [SeqInput { cache: &mut cache, tokens: &[next], positions: None, mask: AttnMask::Causal, logits: rows.clone() }],
            &opts,
        )?;
    }
    stats.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
    stats.completion_tokens = tokens.len();
    stats.prefill_tok_s = stats.prompt_tokens as f64 / (stats.prefill_ms / 1e3).max(1e-9);
    stats.decode_tok_s = tokens.len() as f64 / (stats.decode_ms / 1e3).max(1e-9);
    Ok(GenerationOutput { token_ids: tokens, finish_reason: finish, stats })
}
