//! The OpenAI-compatible HTTP calls a program makes.
//!
//! Two ways to continue a partly written assistant turn, which per-field
//! calls need:
//! - [`Api::Chat`]: `/v1/chat/completions` with the partial turn as the
//!   final assistant message and `continue_final_message: true` (a vLLM and
//!   SGLang extension that Aerie's router also implements);
//! - [`Api::Completions`]: `/v1/completions` with the conversation rendered
//!   by a client-side [`PromptFormat`], for servers (or models) without it.

use crate::error::ClientError;
use crate::matcher::Finish;
use crate::program::{Role, Sampling};
use serde_json::{json, Value};
use std::io::BufRead;
use std::time::Duration;

/// How the conversation is rendered for [`Api::Completions`].
#[derive(Debug, Clone, PartialEq)]
pub struct PromptFormat {
    /// A whole message; `{role}` and `{content}` are replaced.
    pub message: String,
    /// What opens the assistant's turn.
    pub assistant_start: String,
}

impl PromptFormat {
    /// ChatML, as SmolLM2, Qwen and many others use.
    pub fn chatml() -> Self {
        PromptFormat { message: "<|im_start|>{role}\n{content}<|im_end|>\n".into(), assistant_start: "<|im_start|>assistant\n".into() }
    }
    fn render(&self, history: &[(Role, String)], prefix: &str) -> String {
        let mut s: String = history.iter().map(|(r, c)| self.message.replace("{role}", r.as_str()).replace("{content}", c)).collect();
        s.push_str(&self.assistant_start);
        s.push_str(prefix);
        s
    }
}

/// Which endpoint the client calls.
#[derive(Debug, Clone, PartialEq)]
pub enum Api {
    Chat,
    Completions(PromptFormat),
}

/// Where and how to call.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Up to and including `/v1`, e.g. `http://127.0.0.1:30000/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub api: Api,
    /// Bound on each whole call, streaming included. Default 120 s.
    pub timeout: Duration,
    /// Ask for usage on every streamed chunk (vLLM's and Aerie's
    /// `stream_options.continuous_usage_stats`), so a speculative stream
    /// the client cuts short is still counted exactly. Default false:
    /// servers without the extension may refuse it.
    pub continuous_usage: bool,
}

impl ClientConfig {
    /// `base_url` may stop at the host (`http://127.0.0.1:30000`, as SGLang's
    /// `bench_serving` passes it) or include the API path (`…/v1`); see
    /// [`openai_base_url`].
    pub fn new(base_url: &str, model: &str) -> Self {
        ClientConfig { base_url: openai_base_url(base_url), api_key: None, model: model.to_string(), api: Api::Chat, timeout: Duration::from_secs(120), continuous_usage: false }
    }
}

/// One call: the conversation, the assistant text so far, and limits.
pub(crate) struct CallSpec<'a> {
    pub history: &'a [(Role, String)],
    pub prefix: &'a str,
    pub max_tokens: u32,
    pub stops: &'a [String],
    pub sampling: &'a Sampling,
}

/// What a call returned.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    pub text: String,
    /// `Finish::Open` when the client stopped reading early.
    pub finish: Option<Finish>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// False when usage was not reported (a stream cut short without
    /// continuous usage): then `completion_tokens` counts streamed chunks,
    /// a lower bound, and `prompt_tokens` is 0.
    pub usage_exact: bool,
}

pub(crate) struct Http {
    cfg: ClientConfig,
    agent: ureq::Agent,
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn finish_of(v: &Value) -> Option<Finish> {
    match v.as_str()? {
        "length" => Some(Finish::Length),
        _ => Some(Finish::Stop),
    }
}

impl Http {
    pub fn new(cfg: ClientConfig) -> Self {
        let agent = ureq::AgentBuilder::new().timeout(cfg.timeout).build();
        Http { cfg, agent }
    }

    fn body(&self, c: &CallSpec, stream: bool) -> (String, Value) {
        let mut b = json!({"model": self.cfg.model, "max_tokens": c.max_tokens, "stream": stream});
        if !c.stops.is_empty() {
            b["stop"] = json!(c.stops);
        }
        if let Some(t) = c.sampling.temperature {
            b["temperature"] = json!(t);
        }
        if let Some(p) = c.sampling.top_p {
            b["top_p"] = json!(p);
        }
        if let Some(s) = c.sampling.seed {
            b["seed"] = json!(s);
        }
        if stream {
            b["stream_options"] = json!({"include_usage": true});
            if self.cfg.continuous_usage {
                b["stream_options"]["continuous_usage_stats"] = json!(true);
            }
        }
        match &self.cfg.api {
            Api::Chat => {
                let mut msgs: Vec<Value> = c.history.iter().map(|(r, t)| json!({"role": r.as_str(), "content": t})).collect();
                if !c.prefix.is_empty() {
                    msgs.push(json!({"role": "assistant", "content": c.prefix}));
                    b["continue_final_message"] = json!(true);
                    b["add_generation_prompt"] = json!(false);
                }
                b["messages"] = json!(msgs);
                (format!("{}/chat/completions", self.cfg.base_url), b)
            }
            Api::Completions(f) => {
                b["prompt"] = json!(f.render(c.history, c.prefix));
                (format!("{}/completions", self.cfg.base_url), b)
            }
        }
    }

    fn send(&self, url: &str, body: &Value) -> Result<ureq::Response, ClientError> {
        let mut req = self.agent.post(url).set("Content-Type", "application/json");
        if let Some(k) = &self.cfg.api_key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        match req.send_string(&body.to_string()) {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let e = &v["error"];
                let s = |k: &str| e[k].as_str().map(str::to_string);
                Err(ClientError::Api {
                    status,
                    message: s("message").unwrap_or_else(|| text.chars().take(300).collect()),
                    kind: s("type").unwrap_or_else(|| "unknown".into()),
                    code: s("code"),
                    param: s("param"),
                })
            }
            Err(ureq::Error::Transport(t)) if is_timeout(&t) => Err(ClientError::Timeout(self.cfg.timeout)),
            Err(ureq::Error::Transport(t)) => Err(ClientError::Transport(t.to_string())),
        }
    }

    fn text_of<'v>(&self, choice: &'v Value, stream: bool) -> Option<&'v str> {
        match (&self.cfg.api, stream) {
            (Api::Chat, false) => choice["message"]["content"].as_str(),
            (Api::Chat, true) => choice["delta"]["content"].as_str(),
            (Api::Completions(_), _) => choice["text"].as_str(),
        }
    }

    /// One non-streaming call.
    pub fn complete(&self, c: &CallSpec) -> Result<Reply, ClientError> {
        let (url, body) = self.body(c, false);
        let resp = self.send(&url, &body)?;
        let text = resp.into_string().map_err(|e| if is_timeout(&e) { ClientError::Timeout(self.cfg.timeout) } else { ClientError::Transport(e.to_string()) })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ClientError::Protocol(format!("{e}: {}", text.chars().take(200).collect::<String>())))?;
        let choice = &v["choices"][0];
        let out = self.text_of(choice, false).ok_or_else(|| ClientError::Protocol(format!("no text in choices[0]: {}", text.chars().take(200).collect::<String>())))?;
        Ok(Reply {
            text: out.to_string(),
            finish: finish_of(&choice["finish_reason"]).or(Some(Finish::Stop)),
            prompt_tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            completion_tokens: v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
            usage_exact: v["usage"].is_object(),
        })
    }

    /// One streaming call; `on_text` sees the whole text so far after each
    /// chunk and returns false to stop reading (the connection is dropped,
    /// which aborts the request on servers that notice disconnects).
    pub fn stream(&self, c: &CallSpec, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Reply, ClientError> {
        let (url, body) = self.body(c, true);
        let resp = self.send(&url, &body)?;
        let reader = std::io::BufReader::new(resp.into_reader());
        let mut r = Reply::default();
        let mut chunks = 0u64;
        for line in reader.lines() {
            let line = line.map_err(|e| if is_timeout(&e) { ClientError::Timeout(self.cfg.timeout) } else { ClientError::Transport(e.to_string()) })?;
            let Some(data) = line.strip_prefix("data:").map(str::trim) else { continue };
            if data == "[DONE]" {
                break;
            }
            let v: Value = serde_json::from_str(data).map_err(|e| ClientError::Protocol(format!("bad stream chunk ({e}): {}", data.chars().take(200).collect::<String>())))?;
            if v.get("error").is_some() {
                let e = &v["error"];
                return Err(ClientError::Api {
                    status: 200,
                    message: e["message"].as_str().unwrap_or("error in stream").to_string(),
                    kind: e["type"].as_str().unwrap_or("unknown").to_string(),
                    code: e["code"].as_str().map(str::to_string),
                    param: None,
                });
            }
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                r.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
                r.completion_tokens = u["completion_tokens"].as_u64().unwrap_or(0);
                r.usage_exact = true;
            }
            let Some(choice) = v["choices"].get(0) else { continue };
            if let Some(f) = finish_of(&choice["finish_reason"]) {
                r.finish = Some(f);
            }
            if let Some(t) = self.text_of(choice, true).filter(|t| !t.is_empty()) {
                chunks += 1;
                r.text.push_str(t);
                if !on_text(&r.text) {
                    r.finish = Some(Finish::Open);
                    if !r.usage_exact {
                        r.completion_tokens = chunks;
                    }
                    return Ok(r);
                }
            }
        }
        if r.finish.is_none() {
            return Err(ClientError::Protocol("the stream ended without a finish_reason".into()));
        }
        if !r.usage_exact {
            r.completion_tokens = chunks;
        }
        Ok(r)
    }
}

/// An OpenAI base URL up to its API path: a URL naming only a host (and
/// port) gets `/v1`, one with a path keeps it; a trailing `/` is dropped.
/// `http://h:1` and `http://h:1/` → `http://h:1/v1`; `http://h:1/v1/` →
/// `http://h:1/v1`; `http://h/proxy/v1` stays.
pub fn openai_base_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    if after_scheme.contains('/') {
        url.to_string()
    } else {
        format!("{url}/v1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_history_and_an_open_assistant_turn() {
        let h = [(Role::System, "S".to_string()), (Role::User, "Q".to_string())];
        assert_eq!(PromptFormat::chatml().render(&h, "Name:"), "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nName:");
    }

    #[test]
    fn base_urls_work_with_or_without_the_api_path() {
        for (given, want) in [
            ("http://x:1", "http://x:1/v1"),
            ("http://x:1/", "http://x:1/v1"),
            ("http://x:1/v1", "http://x:1/v1"),
            ("http://x:1/v1/", "http://x:1/v1"),
            ("https://h/proxy/openai/v1", "https://h/proxy/openai/v1"),
            ("http://[::1]:8080", "http://[::1]:8080/v1"),
        ] {
            assert_eq!(openai_base_url(given), want, "{given}");
        }
        assert_eq!(ClientConfig::new("http://x:1", "m").base_url, "http://x:1/v1");
    }

    #[test]
    fn chat_bodies_continue_the_final_message_only_when_there_is_one() {
        let http = Http::new(ClientConfig::new("http://x/v1/", "m"));
        let h = [(Role::User, "Q".to_string())];
        let s = Sampling { temperature: Some(0.0), top_p: None, seed: Some(3) };
        let stops = vec!["\n".to_string()];
        let (url, b) = http.body(&CallSpec { history: &h, prefix: "Name:", max_tokens: 8, stops: &stops, sampling: &s }, true);
        assert_eq!(url, "http://x/v1/chat/completions");
        assert_eq!(b["messages"][1], json!({"role": "assistant", "content": "Name:"}));
        assert_eq!(b["continue_final_message"], true);
        assert_eq!(b["add_generation_prompt"], false);
        assert_eq!(b["stop"], json!(["\n"]));
        assert_eq!(b["seed"], 3);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert!(b.get("top_p").is_none());
        let (_, b) = http.body(&CallSpec { history: &h, prefix: "", max_tokens: 8, stops: &[], sampling: &s }, false);
        assert!(b.get("continue_final_message").is_none() && b.get("stop").is_none());
        assert_eq!(b["messages"].as_array().unwrap().len(), 1);
    }
}
