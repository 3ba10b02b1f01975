//! OpenAI request types. Every struct refuses unknown fields, so a parameter
//! Aerie does not implement is a 400 that names it, never silently ignored.
//! Parameters that exist in OpenAI's API but that Aerie does not support
//! (`echo`, `suffix`, `best_of` above 1) are refused with the same kind of
//! message. Tool fields are checked in [`crate::tools`].

use crate::error::ApiError;
use aerie_proto::v1::constraint::Kind as ConstraintKind;
use serde::Deserialize;

// `expecting` keeps Rust type names out of the error a client sees.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
    /// vLLM extension: with `include_usage`, every chunk carries the usage
    /// so far (a client that stops reading early still knows its cost).
    #[serde(default)]
    pub continuous_usage_stats: bool,
}

/// A text part of a message (`{"type": "text", "text": "…"}`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "message content as a string or a list of content parts")]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub name: Option<String>,
    /// An assistant message's calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<MessageToolCall>>,
    /// A tool message: the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// A call in an assistant message of the history.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: MessageFunctionCall,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageFunctionCall {
    pub name: String,
    /// JSON text, as OpenAI returns it.
    pub arguments: String,
}

/// Declares a request struct with the fields both endpoints share, plus
/// `take_common` to move those out. (serde cannot combine `flatten` with
/// `deny_unknown_fields`, so the shared fields are spelled into each struct.)
macro_rules! openai_request {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)*
            pub model: Option<String>,
            pub max_tokens: Option<u64>,
            pub temperature: Option<f32>,
            pub top_p: Option<f32>,
            pub top_k: Option<i64>,
            pub min_p: Option<f32>,
            pub seed: Option<i64>,
            pub stop: Option<StringOrList>,
            pub n: Option<u32>,
            pub stream: Option<bool>,
            pub stream_options: Option<StreamOptions>,
            pub logprobs: Option<serde_json::Value>,
            pub top_logprobs: Option<u32>,
            pub user: Option<String>,
            pub presence_penalty: Option<f32>,
            pub frequency_penalty: Option<f32>,
            pub ignore_eos: Option<bool>,
            /// vLLM/SGLang extension.
            pub repetition_penalty: Option<f32>,
            pub logit_bias: Option<std::collections::HashMap<String, f32>>,
            /// vLLM/SGLang extension.
            pub min_tokens: Option<u32>,
            /// vLLM/SGLang extension: token ids that end generation.
            pub stop_token_ids: Option<Vec<u32>>,
            pub response_format: Option<ResponseFormat>,
            /// SGLang extension: a regular expression the output matches.
            pub regex: Option<String>,
            /// SGLang extension: a Lark/EBNF grammar the output follows.
            pub ebnf: Option<String>,
        }

        impl $name {
            pub fn take_common(&mut self) -> CommonFields {
                CommonFields {
                    model: self.model.take(),
                    max_tokens: self.max_tokens.take(),
                    temperature: self.temperature.take(),
                    top_p: self.top_p.take(),
                    top_k: self.top_k.take(),
                    min_p: self.min_p.take(),
                    seed: self.seed.take(),
                    stop: self.stop.take(),
                    n: self.n.take(),
                    stream: self.stream.take(),
                    stream_options: self.stream_options.take(),
                    logprobs: self.logprobs.take(),
                    top_logprobs: self.top_logprobs.take(),
                    user: self.user.take(),
                    presence_penalty: self.presence_penalty.take(),
                    frequency_penalty: self.frequency_penalty.take(),
                    ignore_eos: self.ignore_eos.take(),
                    repetition_penalty: self.repetition_penalty.take(),
                    logit_bias: self.logit_bias.take(),
                    min_tokens: self.min_tokens.take(),
                    stop_token_ids: self.stop_token_ids.take(),
                    response_format: self.response_format.take(),
                    regex: self.regex.take(),
                    ebnf: self.ebnf.take(),
                }
            }
        }
    };
}

openai_request!(
    /// `POST /v1/chat/completions`.
    ChatRequest {
        messages: Vec<Message>,
        max_completion_tokens: Option<u64>,
        /// vLLM/SGLang extension: the final (assistant) message is left
        /// open and the model continues it instead of starting a new turn.
        continue_final_message: Option<bool>,
        /// vLLM/SGLang extension; only `true` (the default) or, with
        /// `continue_final_message`, `false`.
        add_generation_prompt: Option<bool>,
        /// Function definitions (`{"type": "function", "function": {…}}`).
        tools: Option<Vec<serde_json::Value>>,
        /// `none`, `auto`, `required` or `{"type": "function", "function": {"name"}}`.
        tool_choice: Option<serde_json::Value>,
        parallel_tool_calls: Option<bool>,
    }
);

openai_request!(
    /// `POST /v1/completions`.
    CompletionRequest {
        prompt: StringOrList,
        echo: Option<bool>,
        suffix: Option<String>,
        best_of: Option<u32>,
    }
);

/// The fields both endpoints share.
#[derive(Debug, Default)]
pub struct CommonFields {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<StringOrList>,
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<serde_json::Value>,
    pub top_logprobs: Option<u32>,
    pub user: Option<String>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub ignore_eos: Option<bool>,
    pub repetition_penalty: Option<f32>,
    pub logit_bias: Option<std::collections::HashMap<String, f32>>,
    pub min_tokens: Option<u32>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub response_format: Option<ResponseFormat>,
    pub regex: Option<String>,
    pub ebnf: Option<String>,
}

/// OpenAI's `response_format`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseFormat {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    pub kind: String,
    pub json_schema: Option<JsonSchemaFormat>,
}

/// `response_format.json_schema`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaFormat {
    pub name: Option<String>,
    pub description: Option<String>,
    pub schema: Option<serde_json::Value>,
    /// Accepted; Aerie always enforces the schema exactly.
    pub strict: Option<bool>,
}

/// Most choices one request may ask for (the target workers' limit too).
pub const MAX_CHOICES: u32 = 32;

/// Which endpoint's `logprobs` shape a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogprobsStyle {
    /// Chat: `logprobs: bool` plus `top_logprobs` in 0..=20.
    Chat,
    /// Completions: `logprobs: int` in 0..=5 (the number of top tokens).
    Completion,
}

/// What a request asks for, after checks.
#[derive(Debug, Clone)]
pub struct Sampling {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub stops: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Usage on every chunk (`stream_options.continuous_usage_stats`).
    pub continuous_usage: bool,
    pub ignore_eos: bool,
    /// Choices (OpenAI's `n`), sharing one prefill on the target.
    pub n: u32,
    /// Report logprobs with this many top alternatives; `None` is off.
    pub logprobs: Option<u32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// Token id and bias, sorted by id.
    pub logit_bias: std::collections::HashMap<u32, f32>,
    pub min_tokens: Option<u32>,
    pub stop_token_ids: Vec<u32>,
    /// What the output must match (sent to the target, which compiles it).
    pub constraint: Option<ConstraintKind>,
    /// Offered functions (chat only); the output is parsed for calls.
    pub tools: Option<std::sync::Arc<crate::tools::Tools>>,
    /// Completions' `best_of` above `n`: this many choices are generated
    /// and the `n` with the highest cumulative logprob returned.
    pub best_of: Option<u32>,
}

impl CommonFields {
    /// Refuses what Aerie does not implement and checks ranges.
    pub fn check(self, max_stops: usize, style: LogprobsStyle) -> Result<(String, Sampling), ApiError> {
        let model = self.model.ok_or_else(|| ApiError::invalid("you must provide a model parameter", Some("model")).with_code("missing_required_parameter"))?;
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_CHOICES).contains(&n) {
            return Err(ApiError::invalid(format!("n must be between 1 and {MAX_CHOICES}, got {n}"), Some("n")));
        }
        let logprobs = check_logprobs(&self.logprobs, self.top_logprobs, style)?;
        for (name, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if v.is_some_and(|x| !x.is_finite() || !(-2.0..=2.0).contains(&x)) {
                return Err(ApiError::invalid(format!("{name} must be between -2 and 2, got {}", v.unwrap_or(0.0)), Some(name)));
            }
        }
        if let Some(r) = self.repetition_penalty {
            if !r.is_finite() || r <= 0.0 || r > 2.0 {
                return Err(ApiError::invalid(format!("repetition_penalty must be in (0, 2], got {r}"), Some("repetition_penalty")));
            }
        }
        let mut logit_bias = std::collections::HashMap::new();
        for (k, v) in self.logit_bias.unwrap_or_default() {
            let Ok(t) = k.trim().parse::<u32>() else {
                return Err(ApiError::invalid(format!("logit_bias keys must be token ids, got `{k}`"), Some("logit_bias")));
            };
            if !v.is_finite() || !(-100.0..=100.0).contains(&v) {
                return Err(ApiError::invalid(format!("logit_bias values must be between -100 and 100, got {v} for token {t}"), Some("logit_bias")));
            }
            logit_bias.insert(t, v);
        }
        if logit_bias.len() > 1024 {
            return Err(ApiError::invalid("logit_bias may name at most 1024 tokens", Some("logit_bias")));
        }
        let constraint = check_constraint(self.response_format, self.regex, self.ebnf)?;
        let stop_token_ids = self.stop_token_ids.unwrap_or_default();
        if stop_token_ids.len() > 256 {
            return Err(ApiError::invalid("stop_token_ids may hold at most 256 ids", Some("stop_token_ids")));
        }
        if let (Some(min), Some(max)) = (self.min_tokens, self.max_tokens) {
            if min as u64 > max {
                return Err(ApiError::invalid(format!("min_tokens ({min}) must not exceed max_tokens ({max})"), Some("min_tokens")));
            }
        }
        if let Some(t) = self.temperature {
            if !t.is_finite() || !(0.0..=2.0).contains(&t) {
                return Err(ApiError::invalid(format!("temperature must be between 0 and 2, got {t}"), Some("temperature")));
            }
        }
        if let Some(p) = self.top_p {
            if !p.is_finite() || p <= 0.0 || p > 1.0 {
                return Err(ApiError::invalid(format!("top_p must be in (0, 1], got {p}"), Some("top_p")));
            }
        }
        if let Some(p) = self.min_p {
            if !p.is_finite() || !(0.0..=1.0).contains(&p) {
                return Err(ApiError::invalid(format!("min_p must be in [0, 1], got {p}"), Some("min_p")));
            }
        }
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => None,
            Some(k) if k > 0 && k <= u32::MAX as i64 => Some(k as u32),
            Some(k) => return Err(ApiError::invalid(format!("top_k must be -1, 0 or positive, got {k}"), Some("top_k"))),
        };
        if self.max_tokens == Some(0) {
            return Err(ApiError::invalid("max_tokens must be at least 1", Some("max_tokens")));
        }
        let stops: Vec<String> = self.stop.map(StringOrList::into_vec).unwrap_or_default().into_iter().filter(|s| !s.is_empty()).collect();
        if stops.len() > max_stops {
            return Err(ApiError::invalid(format!("{} stop strings given; at most {max_stops} are allowed", stops.len()), Some("stop")));
        }
        if stops.iter().any(|s| s.len() > 256) {
            return Err(ApiError::invalid("stop strings may be at most 256 bytes", Some("stop")));
        }
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::invalid("stream_options is only allowed when stream is true", Some("stream_options")));
        }
        let _ = self.user; // accepted: end-user ids are only logged
        Ok((
            model,
            Sampling {
                max_tokens: self.max_tokens,
                temperature: self.temperature,
                top_p: self.top_p,
                top_k,
                min_p: self.min_p,
                seed: self.seed.map(|s| s as u64),
                stops,
                stream,
                include_usage: self.stream_options.as_ref().is_some_and(|o| o.include_usage),
                continuous_usage: self.stream_options.as_ref().is_some_and(|o| o.include_usage && o.continuous_usage_stats),
                ignore_eos: self.ignore_eos.unwrap_or(false),
                n,
                logprobs,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                repetition_penalty: self.repetition_penalty,
                logit_bias,
                min_tokens: self.min_tokens,
                stop_token_ids,
                constraint,
                tools: None,
                best_of: None,
            },
        ))
    }
}

/// At most one of `response_format` (JSON), `regex` and `ebnf`, checked for
/// shape here; the target worker compiles it and refuses what it cannot.
fn check_constraint(rf: Option<ResponseFormat>, regex: Option<String>, ebnf: Option<String>) -> Result<Option<ConstraintKind>, ApiError> {
    let json = match rf {
        None => None,
        Some(rf) => match rf.kind.as_str() {
            "text" => None,
            "json_object" => Some(ConstraintKind::JsonObject(true)),
            "json_schema" => {
                let Some(schema) = rf.json_schema.and_then(|j| j.schema) else {
                    return Err(ApiError::invalid("response_format json_schema needs json_schema.schema", Some("response_format")));
                };
                if !schema.is_object() {
                    return Err(ApiError::invalid("response_format json_schema.schema must be a JSON object", Some("response_format")));
                }
                Some(ConstraintKind::JsonSchema(schema.to_string()))
            }
            other => {
                return Err(ApiError::invalid(format!("response_format type `{other}` is not one of text, json_object, json_schema"), Some("response_format")));
            }
        },
    };
    let given = [json.is_some(), regex.is_some(), ebnf.is_some()].iter().filter(|&&x| x).count();
    if given > 1 {
        return Err(ApiError::invalid("give at most one of response_format (JSON), regex and ebnf", Some("response_format")));
    }
    Ok(json.or(regex.map(ConstraintKind::Regex)).or(ebnf.map(ConstraintKind::Ebnf)))
}

/// The number of top alternatives a request's logprobs ask for, or `None`
/// when it asks for none. Chat sends `logprobs: true` and `top_logprobs`
/// (0–20); completions send `logprobs: n` (0–5), as OpenAI defines them.
fn check_logprobs(lp: &Option<serde_json::Value>, top: Option<u32>, style: LogprobsStyle) -> Result<Option<u32>, ApiError> {
    use serde_json::Value;
    match style {
        LogprobsStyle::Chat => {
            let on = match lp {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(ApiError::invalid("logprobs must be a boolean on chat completions", Some("logprobs"))),
            };
            match top {
                Some(n) if n > 20 => Err(ApiError::invalid(format!("top_logprobs must be between 0 and 20, got {n}"), Some("top_logprobs"))),
                Some(n) if n > 0 && !on => Err(ApiError::invalid("top_logprobs requires logprobs to be true", Some("top_logprobs"))),
                _ => Ok(on.then_some(top.unwrap_or(0))),
            }
        }
        LogprobsStyle::Completion => {
            if top.is_some() {
                return Err(ApiError::invalid("top_logprobs is a chat parameter; completions take logprobs: n", Some("top_logprobs")));
            }
            match lp {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(n) if n <= 5 => Ok(Some(n as u32)),
                    _ => Err(ApiError::invalid(format!("logprobs must be an integer between 0 and 5, got {n}"), Some("logprobs"))),
                },
                Some(_) => Err(ApiError::invalid("logprobs must be an integer between 0 and 5 on completions", Some("logprobs"))),
            }
        }
    }
}

impl Message {
    /// The message's text: a string, or its text parts joined.
    pub fn text(&self) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(s)) => Ok(s.clone()),
            Some(Content::Parts(parts)) => {
                let mut out = String::new();
                for p in parts {
                    if p.kind != "text" {
                        return Err(ApiError::invalid(format!("content part type `{}` is not supported (text only)", p.kind), Some("messages")));
                    }
                    out.push_str(p.text.as_deref().unwrap_or(""));
                }
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse errors reach clients verbatim, so they must not name Rust types.
    #[test]
    fn parse_errors_name_no_rust_types() {
        for body in [
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":5}"#,
            r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"logit_bias":[1]}"#,
        ] {
            let e = serde_json::from_str::<ChatRequest>(body).unwrap_err().to_string();
            for word in ["enum", "struct", "StringOrList", "Content", "HashMap"] {
                assert!(!e.contains(word), "{body}: {e}");
            }
        }
        let e = serde_json::from_str::<CompletionRequest>(r#"{"model":"m","prompt":5}"#).unwrap_err().to_string();
        assert!(e.contains("a string or a list of strings"), "{e}");
    }

    #[test]
    fn logprobs_take_each_endpoint_shape() {
        use serde_json::json;
        assert_eq!(check_logprobs(&Some(json!(true)), Some(3), LogprobsStyle::Chat).unwrap(), Some(3));
        assert_eq!(check_logprobs(&Some(json!(false)), None, LogprobsStyle::Chat).unwrap(), None);
        assert!(check_logprobs(&Some(json!(2)), None, LogprobsStyle::Chat).is_err());
        assert_eq!(check_logprobs(&Some(json!(0)), None, LogprobsStyle::Completion).unwrap(), Some(0));
        assert!(check_logprobs(&Some(json!(true)), None, LogprobsStyle::Completion).is_err());
        assert!(check_logprobs(&None, Some(1), LogprobsStyle::Completion).is_err());
    }
}
