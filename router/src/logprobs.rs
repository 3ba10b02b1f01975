//! OpenAI's two `logprobs` shapes, built from the target's per-token
//! log-probabilities.
//!
//! Chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}],
//! "refusal": null}`. Completions: parallel lists `tokens`,
//! `token_logprobs`, `top_logprobs` (one `{token: logprob}` object per
//! position) and `text_offset` (where each token starts in the generated
//! text, in characters). A token's text is its bytes decoded lossily, and
//! the exact bytes are given as `bytes`, because a byte-level token can hold
//! part of a character.

use crate::openai::LogprobsStyle;
use aerie_engine::Tokenizer;
use aerie_proto::v1::TokenLogprob;
use serde_json::{json, Map, Value};

/// Logprobs accumulated for one choice.
pub struct Logprobs {
    style: LogprobsStyle,
    /// Chat: the `content` entries.
    content: Vec<Value>,
    /// Completions: the four parallel lists.
    tokens: Vec<Value>,
    token_logprobs: Vec<Value>,
    top: Vec<Value>,
    text_offset: Vec<Value>,
    /// Characters of text before the next token (completions' offsets).
    chars: usize,
}

fn token_text(tok: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let bytes = tok.token_bytes(id);
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// A logprob as JSON: OpenAI sends `-9999.0` for a token with no mass,
/// since JSON has no infinity.
fn lp_json(lp: f32) -> Value {
    json!(if lp.is_finite() { lp } else { -9999.0 })
}

impl Logprobs {
    pub fn new(style: LogprobsStyle) -> Self {
        Logprobs { style, content: Vec::new(), tokens: Vec::new(), token_logprobs: Vec::new(), top: Vec::new(), text_offset: Vec::new(), chars: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.content.is_empty() && self.tokens.is_empty()
    }

    /// Adds the entries of one worker message.
    pub fn extend(&mut self, tok: &Tokenizer, entries: &[TokenLogprob]) {
        for e in entries {
            let (text, bytes) = token_text(tok, e.token_id);
            match self.style {
                LogprobsStyle::Chat => {
                    let top: Vec<Value> = e
                        .top
                        .iter()
                        .map(|t| {
                            let (text, bytes) = token_text(tok, t.token_id);
                            json!({"token": text, "logprob": lp_json(t.logprob), "bytes": bytes})
                        })
                        .collect();
                    self.content.push(json!({"token": text, "logprob": lp_json(e.logprob), "bytes": bytes, "top_logprobs": top}));
                }
                LogprobsStyle::Completion => {
                    let mut top = Map::new();
                    for t in &e.top {
                        top.insert(token_text(tok, t.token_id).0, lp_json(t.logprob));
                    }
                    self.text_offset.push(json!(self.chars));
                    self.chars += text.chars().count();
                    self.tokens.push(json!(text));
                    self.token_logprobs.push(lp_json(e.logprob));
                    self.top.push(Value::Object(top));
                }
            }
        }
    }

    /// The `logprobs` object of everything added since the last `take`
    /// (a streamed chunk sends only its own tokens).
    pub fn take(&mut self) -> Value {
        match self.style {
            LogprobsStyle::Chat => json!({"content": std::mem::take(&mut self.content), "refusal": null}),
            LogprobsStyle::Completion => json!({
                "tokens": std::mem::take(&mut self.tokens),
                "token_logprobs": std::mem::take(&mut self.token_logprobs),
                "top_logprobs": std::mem::take(&mut self.top),
                "text_offset": std::mem::take(&mut self.text_offset),
            }),
        }
    }
}
