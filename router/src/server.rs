//! The HTTP surface: OpenAI endpoints, `/health`, `/metrics`.
//!
//! Per request: authenticate, parse (unknown fields refused), template and
//! tokenize (bounded: a prompt past the context is refused after counting
//! about a context's worth of tokens, never tokenized whole, and at most
//! `max_concurrent_tokenizations` prompts are tokenized at once), hold one
//! of the API key's request slots, check the context, pick a target (the policy) and pair a draft
//! worker, then relay the target's token stream as text. Retries go to the
//! next healthy target only while nothing has been sent to the client, i.e.
//! when `Generate` itself fails with UNAVAILABLE or RESOURCE_EXHAUSTED. A
//! client that goes away drops the relay, which drops the gRPC stream, which
//! makes the target abort the request and free its KV.

use crate::config::RouterConfig;
use crate::error::{from_status, ApiError};
use crate::metrics_names as m;
use crate::logprobs::Logprobs;
use crate::openai::{ChatRequest, CompletionRequest, LogprobsStyle, Sampling, MAX_CHOICES};
use crate::policies::{self, RoutingPolicy};
use crate::text::TextStream;
use crate::tools::{Call, ToolFormat, ToolParser, Tools};
use crate::worker::{DraftHandle, InFlight, Registry, TargetHandle, Worker};
use aerie_engine::{ChatMessage, ChatTemplate, Tokenizer};
use aerie_proto::v1::{GenerateRequest, GenerateResponse, SamplingParams as WireSampling};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_stream::StreamExt;

/// Everything the handlers share.
pub struct RouterState {
    pub cfg: RouterConfig,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    context_length: usize,
    pub registry: Arc<Registry>,
    policy: Box<dyn RoutingPolicy>,
    next_id: AtomicU64,
    metrics: Option<Box<dyn Fn() -> String + Send + Sync>>,
    tokenize_permits: tokio::sync::Semaphore,
    /// Requests in flight per API key (only with a per-key limit).
    key_slots: Arc<Mutex<HashMap<String, usize>>>,
    /// How the model writes tool calls.
    tool_format: ToolFormat,
}

/// One of an API key's request slots, returned when the response ends.
struct KeySlot {
    slots: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Drop for KeySlot {
    fn drop(&mut self) {
        let mut m = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl RouterState {
    /// `tokenizer` and `template` come from the served model; the router
    /// keeps no weights.
    pub fn new(
        cfg: RouterConfig,
        tokenizer: Tokenizer,
        template: Option<ChatTemplate>,
        context_length: usize,
        metrics: Option<Box<dyn Fn() -> String + Send + Sync>>,
    ) -> Result<Arc<Self>, String> {
        // Empty lists are fine: with etcd discovery workers arrive later.
        let registry = Registry::new(&cfg.targets, &cfg.drafts, tokenizer.hash())?;
        let policy = policies::by_name(&cfg.policy, cfg.prefix_tokens)?;
        let tokenize_permits = tokio::sync::Semaphore::new(cfg.max_concurrent_tokenizations.max(1));
        let tool_format = match (&cfg.tool_call_parser, &template) {
            (Some(name), _) => ToolFormat::from_name(name)?,
            (None, Some(t)) => ToolFormat::detect(t),
            (None, None) => ToolFormat::Hermes,
        };
        Ok(Arc::new(RouterState {
            tool_format,
            cfg,
            tokenizer,
            template,
            context_length,
            registry,
            policy,
            next_id: AtomicU64::new(1),
            metrics,
            tokenize_permits,
            key_slots: Arc::new(Mutex::new(HashMap::new())),
        }))
    }

    /// Prompt ids, or the context-length error once the prompt is known to
    /// be too long (without tokenizing the rest). `asked`: max_tokens.
    fn encode(&self, text: &str, asked: Option<u64>) -> Result<Vec<u32>, ApiError> {
        // The prompt plus at least one generated token must fit.
        let limit = self.context_length.saturating_sub(1);
        match self.tokenizer.prompt_ids_within(text, limit) {
            Ok(aerie_engine::BoundedIds::Ids(ids)) => Ok(ids),
            Ok(aerie_engine::BoundedIds::TooLong { at_least }) => {
                metrics::counter!(m::PROMPTS_CUT_SHORT).increment(1);
                Err(ApiError::context_length(at_least.saturating_add(asked.unwrap_or(1).min(usize::MAX as u64) as usize), self.context_length))
            }
            Err(e) => Err(ApiError::invalid(format!("cannot tokenize the prompt: {e}"), None)),
        }
    }

    /// Takes one of the key's request slots, or 429 when it has none left.
    fn take_key_slot(&self, headers: &HeaderMap) -> Result<Option<KeySlot>, ApiError> {
        let limit = self.cfg.max_concurrent_requests_per_key;
        if limit == 0 {
            return Ok(None);
        }
        let key = bearer(headers).unwrap_or_default().to_string();
        let mut m = self.key_slots.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(key.clone()).or_insert(0);
        if *n >= limit {
            return Err(ApiError::key_busy(limit));
        }
        *n += 1;
        Ok(Some(KeySlot { slots: self.key_slots.clone(), key }))
    }
}

/// The axum app.
pub fn router_app(state: Arc<RouterState>) -> axum::Router {
    let limit = state.cfg.max_body_bytes;
    let body_timeout = state.cfg.body_read_timeout;
    axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/live", get(|| async { "ok" }))
        .route("/workers", get(workers))
        .route("/metrics", get(metrics_page))
        .fallback(|uri: Uri| async move { ApiError::not_found(uri.path()) })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(move |req, next| crate::http::read_body(body_timeout, limit, req, next)))
        .with_state(state)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is
/// matched without regard to case (RFC 9110 §11.1).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get("authorization")?.to_str().ok()?.trim_start();
    let (scheme, token) = v.split_once(char::is_whitespace)?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn authorize(state: &RouterState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.cfg.api_key else { return Ok(()) };
    if bearer(headers) == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

fn request_id(state: &RouterState, headers: &HeaderMap, prefix: &str) -> String {
    match headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        Some(v) if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()) => v.to_string(),
        _ => format!("{prefix}-{:x}-{}", now_secs(), state.next_id.fetch_add(1, Ordering::Relaxed)),
    }
}

/// Parses a body into `T`, naming the offending field on failure.
fn parse<T: serde::de::DeserializeOwned>(state: &RouterState, body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|e| if e.status() == StatusCode::PAYLOAD_TOO_LARGE { ApiError::too_large(state.cfg.max_body_bytes) } else { ApiError::invalid(e.body_text(), None) })?;
    serde_json::from_slice::<T>(&body).map_err(|e| {
        let msg = e.to_string();
        let param = msg.split('`').nth(1).filter(|_| msg.starts_with("unknown field")).map(str::to_string);
        let code = if param.is_some() { "unknown_parameter" } else { "invalid_json" };
        ApiError { param, ..ApiError::invalid(format!("invalid request body: {msg}"), None).with_code(code) }
    })
}

fn check_model(state: &RouterState, model: &str) -> Result<(), ApiError> {
    if model == state.cfg.served_model_name {
        Ok(())
    } else {
        Err(ApiError::model_not_found(model))
    }
}

/// `logit_bias` and `stop_token_ids` must name tokens of the vocabulary.
fn check_token_ids(state: &RouterState, s: &Sampling) -> Result<(), ApiError> {
    let vocab = state.tokenizer.vocab_size() as u32;
    if let Some(t) = s.logit_bias.keys().find(|&&t| t >= vocab) {
        return Err(ApiError::invalid(format!("logit_bias names token {t}; the vocabulary has {vocab} tokens"), Some("logit_bias")));
    }
    if let Some(t) = s.stop_token_ids.iter().find(|&&t| t >= vocab) {
        return Err(ApiError::invalid(format!("stop_token_ids holds {t}; the vocabulary has {vocab} tokens"), Some("stop_token_ids")));
    }
    Ok(())
}

/// Tokens to generate, after the context check.
fn budget(state: &RouterState, prompt_len: usize, asked: Option<u64>) -> Result<usize, ApiError> {
    let ctx = state.context_length;
    match asked {
        Some(m) if (prompt_len as u64).saturating_add(m) > ctx as u64 => Err(ApiError::context_length(prompt_len.saturating_add(m.min(usize::MAX as u64) as usize), ctx)),
        Some(m) => Ok(m as usize),
        None if prompt_len >= ctx => Err(ApiError::context_length(prompt_len + 1, ctx)),
        None => Ok(ctx - prompt_len),
    }
}

/// Which endpoint a relay serves; it shapes the JSON.
#[derive(Clone, Copy, PartialEq)]
enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    fn label(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completion => "completions",
        }
    }

    fn logprobs_style(self) -> LogprobsStyle {
        match self {
            Endpoint::Chat => LogprobsStyle::Chat,
            Endpoint::Completion => LogprobsStyle::Completion,
        }
    }
}

/// An admitted request: where it runs and what it asked for.
struct Job {
    id: String,
    endpoint: Endpoint,
    model: String,
    prompt_len: usize,
    sampling: Sampling,
    stream: tonic::Streaming<GenerateResponse>,
    started: Instant,
    /// `started` plus the request timeout.
    deadline: Instant,
    timeout: Duration,
    _in_flight: InFlight,
    pairing: Option<Pairing>,
    target: String,
    /// Held until the last byte is sent (a streamed response outlives `run`).
    _key_slot: Option<KeySlot>,
}

impl Job {
    /// The worker's next message; once the deadline has passed, the
    /// timeout error (the caller then drops the stream, which cancels the
    /// request on the worker).
    async fn next(&mut self) -> Option<Result<GenerateResponse, ApiError>> {
        match tokio::time::timeout_at(self.deadline.into(), self.stream.next()).await {
            Ok(m) => m.map(|r| r.map_err(|st| from_status(&st))),
            Err(_) => Some(Err(ApiError::deadline(self.timeout))),
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        metrics::gauge!(m::IN_FLIGHT).decrement(1.0);
    }
}

/// A draft worker assigned to a request, released on drop (also when the
/// client leaves while the request is being dispatched).
struct Pairing {
    registry: Arc<Registry>,
    draft: Arc<DraftHandle>,
}

impl Drop for Pairing {
    fn drop(&mut self) {
        self.registry.unpair(&self.draft);
    }
}

async fn dispatch(state: &Arc<RouterState>, id: String, endpoint: Endpoint, p: Prepared) -> Result<Job, ApiError> {
    let Prepared { model, sampling, prompt, max_tokens } = p;
    let started = Instant::now();
    let timeout = state.cfg.request_timeout;
    let deadline = started + timeout;
    let mut tried: Vec<String> = Vec::new();
    let mut last: Option<ApiError> = None;
    loop {
        let candidates: Vec<Arc<TargetHandle>> = state.registry.healthy_targets().into_iter().filter(|t| !tried.iter().any(|a| a == t.addr())).collect();
        if candidates.is_empty() {
            return Err(last.unwrap_or_else(|| ApiError::unavailable("no target worker is available")));
        }
        let target = candidates[state.policy.pick(&candidates, &prompt)].clone();
        let draft = state.registry.pair_draft(&target).map(|draft| Pairing { registry: state.registry.clone(), draft });
        metrics::counter!(m::ROUTING_DECISIONS, "policy" => state.policy.name(), "speculative" => if draft.is_some() { "true" } else { "false" }, "worker" => target.addr().to_string()).increment(1);
        let req = GenerateRequest {
            // Unique per attempt: a client reusing its x-request-id, or a
            // retry, never collides with a request still live on a worker.
            request_id: format!("{id}#{}", state.next_id.fetch_add(1, Ordering::Relaxed)),
            prompt_ids: prompt.clone(),
            max_tokens: Some(max_tokens.min(u32::MAX as usize) as u32),
            sampling: Some(WireSampling {
                temperature: sampling.temperature,
                top_p: sampling.top_p,
                top_k: sampling.top_k,
                min_p: sampling.min_p,
                seed: sampling.seed,
                presence_penalty: sampling.presence_penalty,
                frequency_penalty: sampling.frequency_penalty,
                repetition_penalty: sampling.repetition_penalty,
                logit_bias: sampling.logit_bias.clone(),
                min_tokens: sampling.min_tokens,
            }),
            stop_ids: sampling.stop_token_ids.clone(),
            draft_worker: draft.as_ref().map(|d| d.draft.addr().to_string()).unwrap_or_default(),
            ignore_eos: sampling.ignore_eos,
            // best_of ranks choices by their logprobs.
            logprobs: sampling.logprobs.is_some() || sampling.best_of.is_some(),
            top_logprobs: sampling.logprobs.unwrap_or(0),
            n: sampling.best_of.unwrap_or(sampling.n),
            constraint: sampling.constraint.clone().map(|k| aerie_proto::v1::Constraint { kind: Some(k) }),
        };
        let in_flight = target.track();
        let mut call = tonic::Request::new(req);
        // The target sees the deadline too (grpc-timeout).
        call.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let answer = match tokio::time::timeout_at(deadline.into(), target.client().generate(call)).await {
            Ok(a) => a,
            Err(_) => return Err(ApiError::deadline(timeout)),
        };
        match answer {
            Ok(resp) => {
                metrics::gauge!(m::IN_FLIGHT).increment(1.0);
                return Ok(Job {
                    id,
                    endpoint,
                    model,
                    prompt_len: prompt.len(),
                    sampling,
                    stream: resp.into_inner(),
                    started,
                    deadline,
                    timeout,
                    _in_flight: in_flight,
                    pairing: draft,
                    target: target.addr().to_string(),
                    _key_slot: None,
                });
            }
            Err(st) => {
                drop(draft);
                match st.code() {
                    tonic::Code::Unavailable | tonic::Code::ResourceExhausted | tonic::Code::Unknown | tonic::Code::Cancelled => {
                        if st.code() != tonic::Code::ResourceExhausted {
                            target.mark_unhealthy();
                        }
                        tracing::warn!(request_id = %id, worker = target.addr(), "retrying elsewhere: {}", st.message());
                        tried.push(target.addr().to_string());
                        last = Some(from_status(&st));
                    }
                    _ => return Err(from_status(&st)),
                }
            }
        }
    }
}

/// Speculation counters, accumulated from step chunks and replaced by the
/// workers' own totals once every choice has sent its final message.
#[derive(Default)]
struct Usage {
    completion_tokens: usize,
    verify_ct: u32,
    correct: u32,
    proposed: u32,
    step_tokens: usize,
    finished: Vec<aerie_proto::v1::Finished>,
}

impl Usage {
    fn add(&mut self, m: &GenerateResponse) {
        self.completion_tokens += m.token_ids.len();
        if let Some(s) = &m.step {
            self.verify_ct += 1;
            self.correct += s.accepted_drafts;
            self.proposed += s.proposed_depth;
            self.step_tokens += m.token_ids.len();
        }
        if let Some(f) = &m.finished {
            self.finished.push(f.clone());
        }
    }

    fn json(&self, prompt_len: usize, choices: usize) -> Value {
        let mut u = json!({
            "prompt_tokens": prompt_len,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt_len + self.completion_tokens,
        });
        if self.verify_ct > 0 {
            let ct: u32 = self.finished.iter().map(|f| f.spec_verify_ct).sum();
            let (ct, correct, len, rate) = if self.finished.len() == choices && ct > 0 {
                // The workers' totals; over several choices, τ is weighted
                // by each choice's verifications.
                let correct = self.finished.iter().map(|f| f.spec_num_correct_drafts).sum();
                let len = self.finished.iter().map(|f| f.spec_accept_length * f.spec_verify_ct as f64).sum::<f64>() / ct as f64;
                let rate = if self.finished.len() == 1 {
                    self.finished[0].spec_accept_rate
                } else if self.proposed > 0 {
                    self.correct as f64 / self.proposed as f64
                } else {
                    0.0
                };
                (ct, correct, len, rate)
            } else {
                (
                    self.verify_ct,
                    self.correct,
                    self.step_tokens as f64 / self.verify_ct as f64,
                    if self.proposed > 0 { self.correct as f64 / self.proposed as f64 } else { 0.0 },
                )
            };
            u["spec_verify_ct"] = json!(ct);
            u["spec_num_correct_drafts"] = json!(correct);
            u["spec_accept_length"] = json!(len);
            u["spec_accept_rate"] = json!(rate);
            if self.finished.len() == choices && ct > 0 {
                let budget = self.finished.iter().map(|f| f.spec_mean_budget * f.spec_verify_ct as f64).sum::<f64>() / ct as f64;
                u["spec_mean_budget"] = json!(budget);
            }
        }
        u
    }
}

/// One choice's relay state.
struct Choice {
    text: TextStream,
    logprobs: Option<Logprobs>,
    /// The whole text (non-streaming responses only).
    out: String,
    finish: Option<String>,
    /// No chunk sent yet (chat's first delta carries the role).
    first: bool,
    /// Splits the text into content and tool calls, when tools are offered.
    tools: Option<ToolParser>,
    /// The calls found (non-streaming responses only).
    calls: Vec<Call>,
    /// Sum of the emitted tokens' logprobs (ranks `best_of` choices).
    cum_logprob: f64,
}

impl Choice {
    fn all(job: &Job) -> Vec<Choice> {
        (0..job.sampling.best_of.unwrap_or(job.sampling.n))
            .map(|_| Choice {
                text: TextStream::new(job.sampling.stops.clone()),
                logprobs: job.sampling.logprobs.map(|_| Logprobs::new(job.endpoint.logprobs_style())),
                out: String::new(),
                finish: None,
                first: true,
                tools: job.sampling.tools.as_deref().map(ToolParser::new),
                calls: Vec::new(),
                cum_logprob: 0.0,
            })
            .collect()
    }

    /// Released text as content and whole tool calls; `end` releases what
    /// the parser still holds.
    fn parse(&mut self, text: &str, end: bool) -> (String, Vec<Call>) {
        let Some(p) = self.tools.as_mut() else { return (text.to_string(), Vec::new()) };
        let mut got = p.push(text);
        if end {
            let rest = p.finish();
            got.content.push_str(&rest.content);
            got.calls.extend(rest.calls);
        }
        (got.content, got.calls)
    }

    /// The finish reason to report: a turn that ended after calling tools
    /// is `tool_calls`, as in OpenAI's API.
    fn reason(&self) -> String {
        let r = self.finish.clone().unwrap_or_default();
        let called = self.tools.as_ref().is_some_and(|p| p.calls > 0);
        if called && r == "stop" {
            "tool_calls".into()
        } else {
            r
        }
    }

    /// Adds one worker message; returns the text it releases.
    fn push(&mut self, tok: &Tokenizer, m: &GenerateResponse) -> String {
        if self.finish.is_some() {
            // Past a stop string: the worker's later tokens are dropped.
            return String::new();
        }
        let mut out = String::new();
        for &t in &m.token_ids {
            out.push_str(&self.text.push(tok, t));
        }
        if let Some(lp) = self.logprobs.as_mut() {
            lp.extend(tok, &m.logprobs);
        }
        self.cum_logprob += m.logprobs.iter().map(|l| l.logprob as f64).sum::<f64>();
        if self.text.stopped {
            self.finish = Some("stop".into());
        } else if let Some(f) = &m.finished {
            self.finish = Some(f.finish_reason.clone());
        }
        out
    }

    /// The logprobs of the tokens since the last chunk, or null.
    fn take_logprobs(&mut self) -> Value {
        self.logprobs.as_mut().map_or(Value::Null, Logprobs::take)
    }
}

fn chunk_json(job: &Job, created: u64, index: u32, text: Option<&str>, finish: Option<&str>, first: bool) -> Value {
    match job.endpoint {
        Endpoint::Chat => {
            let mut delta = json!({});
            if first {
                delta["role"] = json!("assistant");
            }
            if let Some(t) = text {
                delta["content"] = json!(t);
            }
            json!({"id": job.id, "object": "chat.completion.chunk", "created": created, "model": job.model,
                   "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        }
        Endpoint::Completion => json!({"id": job.id, "object": "text_completion", "created": created, "model": job.model,
                   "choices": [{"index": index, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}]}),
    }
}

/// The id of a choice's `k`th call: unique within the request, and
/// across requests through the request id.
fn call_id(job: &Job, index: u32, k: usize) -> String {
    let tail = job.id.split_once('-').map_or(job.id.as_str(), |(_, t)| t);
    format!("call_{tail}_{index}_{k}")
}

/// A streamed call, as OpenAI sends it: its id, type and name with empty
/// arguments, then the arguments.
fn tool_call_chunks(job: &Job, created: u64, index: u32, first_k: usize, calls: &[Call]) -> Vec<Value> {
    let mut out = Vec::with_capacity(2 * calls.len());
    for (j, c) in calls.iter().enumerate() {
        let k = first_k + j;
        let head = json!([{"index": k, "id": call_id(job, index, k), "type": "function", "function": {"name": c.name, "arguments": ""}}]);
        let args = json!([{"index": k, "function": {"arguments": c.arguments}}]);
        for tc in [head, args] {
            let mut chunk = chunk_json(job, created, index, None, None, false);
            chunk["choices"][0]["delta"]["tool_calls"] = tc;
            out.push(chunk);
        }
    }
    out
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn record(endpoint: Endpoint, status: u16, started: Instant) {
    metrics::counter!(m::REQUESTS, "endpoint" => endpoint.label(), "status" => status.to_string()).increment(1);
    metrics::histogram!(m::E2E).record(started.elapsed().as_secs_f64());
}

/// Relays a job as Server-Sent Events.
fn stream_response(state: Arc<RouterState>, mut job: Job) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    let id = job.id.clone();
    tokio::spawn(async move {
        let created = now_secs();
        let mut choices = Choice::all(&job);
        let n = choices.len();
        let mut usage = Usage::default();
        let mut last = Instant::now();
        if job.endpoint == Endpoint::Chat {
            for (i, c) in choices.iter_mut().enumerate() {
                if tx.send(Ok(sse(&chunk_json(&job, created, i as u32, Some(""), None, true)))).await.is_err() {
                    return;
                }
                c.first = false;
            }
        }
        let mut failed: Option<ApiError> = None;
        while let Some(msg) = job.next().await {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let Some(c) = choices.get_mut(msg.index as usize) else {
                failed = Some(ApiError::internal(&format!("the target worker sent choice {} of a request with {n}", msg.index)));
                break;
            };
            if c.finish.is_some() {
                continue;
            }
            usage.add(&msg);
            let out = c.push(&state.tokenizer, &msg);
            if !msg.token_ids.is_empty() {
                let h = if usage.completion_tokens == msg.token_ids.len() { m::TTFT } else { m::ITL };
                let since = if h == m::TTFT { job.started } else { last };
                metrics::histogram!(h).record(since.elapsed().as_secs_f64());
                last = Instant::now();
            }
            // Logprobs ride with the text their tokens produced; tokens whose
            // text is still held back wait for the next chunk.
            let end = c.finish.is_some();
            let mut released = out;
            if end {
                released.push_str(&c.text.finish(&state.tokenizer));
            }
            let called_before = c.tools.as_ref().map_or(0, |p| p.calls);
            let (content, calls) = c.parse(&released, end);
            let mut chunks = Vec::new();
            if !content.is_empty() || (end && c.logprobs.as_ref().is_some_and(|l| !l.is_empty())) {
                let mut chunk = chunk_json(&job, created, msg.index, Some(&content), None, c.first);
                c.first = false;
                chunk["choices"][0]["logprobs"] = c.take_logprobs();
                if job.sampling.continuous_usage {
                    chunk["usage"] = usage.json(job.prompt_len, n);
                }
                chunks.push(chunk);
            }
            chunks.extend(tool_call_chunks(&job, created, msg.index, called_before, &calls));
            for chunk in &chunks {
                if tx.send(Ok(sse(chunk))).await.is_err() {
                    return; // the client left; dropping the stream aborts the request
                }
            }
            if end {
                let reason = c.reason();
                let mut fin = chunk_json(&job, created, msg.index, None, Some(&reason), false);
                if job.endpoint == Endpoint::Completion {
                    fin["choices"][0]["text"] = json!("");
                }
                let _ = tx.send(Ok(sse(&fin))).await;
                if choices.iter().all(|c| c.finish.is_some()) {
                    break;
                }
            }
        }
        if failed.is_none() && choices.iter().any(|c| c.finish.is_none()) {
            failed = Some(ApiError::internal("the target worker ended the stream without finishing the request"));
        }
        if let Some(e) = failed {
            tracing::warn!(request_id = %job.id, "stream failed: {}", e.message);
            let _ = tx.send(Ok(sse(&e.body()))).await;
            let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
            record(job.endpoint, e.status.as_u16(), job.started);
            return;
        }
        if job.sampling.include_usage {
            let u = json!({"id": job.id, "object": if job.endpoint == Endpoint::Chat { "chat.completion.chunk" } else { "text_completion" },
                           "created": created, "model": job.model, "choices": [], "usage": usage.json(job.prompt_len, n)});
            let _ = tx.send(Ok(sse(&u))).await;
        }
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
        let reason = choices[0].finish.clone().unwrap_or_default();
        finish_log(&job, &usage, &reason, 200);
    });
    let mut r = Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)));
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("text/event-stream"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert("x-request-id", v);
    }
    r
}

fn finish_log(job: &Job, usage: &Usage, reason: &str, status: u16) {
    record(job.endpoint, status, job.started);
    metrics::counter!(m::PROMPT_TOKENS).increment(job.prompt_len as u64);
    metrics::counter!(m::COMPLETION_TOKENS).increment(usage.completion_tokens as u64);
    let draft = job.pairing.as_ref().map(|p| p.draft.addr().to_string()).unwrap_or_default();
    tracing::info!(
        request_id = %job.id, endpoint = job.endpoint.label(), status, finish = reason,
        prompt_tokens = job.prompt_len, completion_tokens = usage.completion_tokens,
        ms = job.started.elapsed().as_millis() as u64, target = %job.target, draft = %draft,
        "request done"
    );
}

/// Collects a job into one JSON response.
async fn whole_response(state: Arc<RouterState>, mut job: Job) -> Response {
    let mut choices = Choice::all(&job);
    let n = choices.len();
    let mut usage = Usage::default();
    while let Some(msg) = job.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                record(job.endpoint, e.status.as_u16(), job.started);
                return e.into_response();
            }
        };
        let Some(c) = choices.get_mut(msg.index as usize) else {
            let e = ApiError::internal(&format!("the target worker sent choice {} of a request with {n}", msg.index));
            record(job.endpoint, e.status.as_u16(), job.started);
            return e.into_response();
        };
        if c.finish.is_some() {
            continue;
        }
        usage.add(&msg);
        let mut out = c.push(&state.tokenizer, &msg);
        let end = c.finish.is_some();
        if end {
            out.push_str(&c.text.finish(&state.tokenizer));
        }
        let (content, calls) = c.parse(&out, end);
        c.out.push_str(&content);
        c.calls.extend(calls);
        if end {
            if choices.iter().all(|c| c.finish.is_some()) {
                break;
            }
        }
    }
    if choices.iter().any(|c| c.finish.is_none()) {
        let e = ApiError::internal("the target worker ended the stream without finishing the request");
        record(job.endpoint, e.status.as_u16(), job.started);
        return e.into_response();
    }
    let created = now_secs();
    if job.sampling.best_of.is_some() {
        // The n most likely of the best_of choices, most likely first.
        choices.sort_by(|a, b| b.cum_logprob.total_cmp(&a.cum_logprob));
        choices.truncate(job.sampling.n as usize);
    }
    let body_choices: Vec<Value> = choices
        .iter_mut()
        .enumerate()
        .map(|(i, c)| {
            let lp = c.take_logprobs();
            let reason = c.reason();
            match job.endpoint {
                Endpoint::Chat if !c.calls.is_empty() => {
                    let calls: Vec<Value> = c.calls.iter().enumerate().map(|(k, call)| call.json(&call_id(&job, i as u32, k))).collect();
                    let content = if c.out.trim().is_empty() { Value::Null } else { json!(c.out.trim_end()) };
                    json!({"index": i, "message": {"role": "assistant", "content": content, "tool_calls": calls}, "logprobs": lp, "finish_reason": reason})
                }
                Endpoint::Chat => json!({"index": i, "message": {"role": "assistant", "content": c.out}, "logprobs": lp, "finish_reason": reason}),
                Endpoint::Completion => json!({"index": i, "text": c.out, "logprobs": lp, "finish_reason": reason}),
            }
        })
        .collect();
    let object = match job.endpoint {
        Endpoint::Chat => "chat.completion",
        Endpoint::Completion => "text_completion",
    };
    let body = json!({"id": job.id, "object": object, "created": created, "model": job.model, "choices": body_choices, "usage": usage.json(job.prompt_len, n)});
    let reason = choices[0].finish.clone().unwrap_or_default();
    finish_log(&job, &usage, &reason, 200);
    let mut r = axum::Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&job.id) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

fn refuse(endpoint: Endpoint, started: Instant, e: ApiError) -> Response {
    record(endpoint, e.status.as_u16(), started);
    e.into_response()
}

/// A parsed, checked, tokenized request, ready to dispatch.
pub struct Prepared {
    pub model: String,
    pub sampling: Sampling,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
}

impl RouterState {
    /// Everything `/v1/chat/completions` does before dispatch. Pure: no
    /// worker is contacted, so the parser can be fuzzed on its own.
    pub fn prepare_chat(&self, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Prepared, ApiError> {
        let state = self;
        authorize(state, headers)?;
        let mut req: ChatRequest = parse(state, body)?;
        let max_completion = req.max_completion_tokens;
        let (model, mut sampling) = req.take_common().check(state.cfg.max_stop_strings, LogprobsStyle::Chat)?;
        check_model(state, &model)?;
        check_token_ids(state, &sampling)?;
        if req.messages.is_empty() {
            return Err(ApiError::invalid("messages must contain at least one message", Some("messages")));
        }
        let tools = Tools::parse(req.tools.take(), req.tool_choice.take(), req.parallel_tool_calls, state.tool_format)?;
        let template = state.template.as_ref().ok_or_else(|| ApiError::invalid("this model has no chat template; use /v1/completions", None))?;
        let offered = tools.as_ref().and_then(|t| t.for_template());
        // A template that renders no tools gets them, and the history's
        // calls and results, as text in the Hermes format.
        let as_text = offered.is_some() && !template.knows_tools();
        let mut msgs = Vec::with_capacity(req.messages.len() + 1);
        for (i, m) in req.messages.iter().enumerate() {
            msgs.push(history_message(i, m, !template.knows_tools())?);
        }
        if let (true, Some(t)) = (as_text, &tools) {
            match msgs.first_mut().filter(|m| m.role == "system") {
                Some(sys) => sys.content = format!("{}\n\n{}", sys.content, t.preamble()),
                None => msgs.insert(0, ChatMessage::new("system", &t.preamble())),
            }
        }
        if let Some(g) = tools.as_ref().and_then(|t| t.grammar()) {
            if sampling.constraint.is_some() {
                return Err(ApiError::invalid("tool_choice required or a named function cannot be combined with response_format, regex or ebnf", Some("tool_choice")));
            }
            sampling.constraint = Some(aerie_proto::v1::constraint::Kind::Ebnf(g));
        }
        sampling.tools = tools.filter(|t| t.parses()).map(Arc::new);
        let continue_final = req.continue_final_message.unwrap_or(false);
        if req.add_generation_prompt.is_some_and(|g| g == continue_final) {
            let why = if continue_final { "add_generation_prompt cannot be true with continue_final_message" } else { "add_generation_prompt false needs continue_final_message" };
            return Err(ApiError::invalid(why, Some("add_generation_prompt")));
        }
        let tools_ctx = if as_text { None } else { offered.as_deref() };
        let render = |msgs: &[ChatMessage], gen: bool| template.render_with_tools(msgs, tools_ctx, gen).map_err(|e| ApiError::invalid(format!("chat template: {e}"), Some("messages")));
        let text = if continue_final { open_final_message(&msgs, render)? } else { render(&msgs, true)? };
        sampling.max_tokens = max_completion.or(sampling.max_tokens);
        if sampling.max_tokens == Some(0) {
            return Err(ApiError::invalid("max_completion_tokens must be at least 1", Some("max_completion_tokens")));
        }
        let prompt = state.encode(&text, sampling.max_tokens)?;
        let max_tokens = budget(state, prompt.len(), sampling.max_tokens)?;
        Ok(Prepared { model, sampling, prompt, max_tokens })
    }

    /// The parser's contract, checked by the fuzzer (`router/fuzz`) and the
    /// property test: any body either becomes a request that fits the
    /// context or gets a 4xx with a message. Returns the status (200 when
    /// accepted); a broken contract is an `Err` naming the body.
    pub fn check_parse(&self, chat: bool, body: &[u8]) -> Result<u16, String> {
        let headers = HeaderMap::new();
        let bytes = Ok(Bytes::copy_from_slice(body));
        let r = if chat { self.prepare_chat(&headers, bytes) } else { self.prepare_completion(&headers, bytes) };
        let show = || String::from_utf8_lossy(&body[..body.len().min(2000)]).into_owned();
        match r {
            Ok(p) if p.prompt.is_empty() || p.max_tokens == 0 || p.prompt.len() + p.max_tokens > self.context_length => {
                Err(format!("accepted a request that does not fit: {} prompt + {} new tokens (context {}): {}", p.prompt.len(), p.max_tokens, self.context_length, show()))
            }
            Ok(_) => Ok(200),
            Err(e) if !(400..500).contains(&e.status.as_u16()) => Err(format!("status {} for {}", e.status, show())),
            Err(e) if e.message.is_empty() => Err(format!("an empty error message for {}", show())),
            Err(e) => Ok(e.status.as_u16()),
        }
    }

    /// Everything `/v1/completions` does before dispatch.
    pub fn prepare_completion(&self, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Prepared, ApiError> {
        let state = self;
        authorize(state, headers)?;
        let mut req: CompletionRequest = parse(state, body)?;
        let (model, mut sampling) = req.take_common().check(state.cfg.max_stop_strings, LogprobsStyle::Completion)?;
        check_model(state, &model)?;
        check_token_ids(state, &sampling)?;
        if req.echo == Some(true) {
            return Err(ApiError::invalid("echo is not supported by Aerie", Some("echo")).with_code("unsupported_parameter"));
        }
        if req.suffix.is_some() {
            return Err(ApiError::invalid("suffix is not supported by Aerie", Some("suffix")).with_code("unsupported_parameter"));
        }
        if let Some(b) = req.best_of {
            if b < sampling.n || b > MAX_CHOICES {
                return Err(ApiError::invalid(format!("best_of must be between n ({}) and {MAX_CHOICES}, got {b}", sampling.n), Some("best_of")));
            }
            if b > sampling.n {
                if sampling.stream {
                    return Err(ApiError::invalid("best_of cannot be used with stream", Some("best_of")));
                }
                sampling.best_of = Some(b);
            }
        }
        let prompts = std::mem::replace(&mut req.prompt, crate::openai::StringOrList::Many(Vec::new())).into_vec();
        if prompts.len() != 1 {
            return Err(ApiError::invalid(format!("prompt must be a string or a list of one string; got {} prompts", prompts.len()), Some("prompt")));
        }
        let prompt = state.encode(&prompts[0], sampling.max_tokens.or(Some(16)))?;
        if prompt.is_empty() {
            return Err(ApiError::invalid("prompt is empty", Some("prompt")));
        }
        let max_tokens = budget(state, prompt.len(), sampling.max_tokens.or(Some(16)))?;
        Ok(Prepared { model, sampling, prompt, max_tokens })
    }
}

async fn chat(State(state): State<Arc<RouterState>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    handle(state, Endpoint::Chat, headers, body).await
}

async fn completions(State(state): State<Arc<RouterState>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    handle(state, Endpoint::Completion, headers, body).await
}

async fn handle(state: Arc<RouterState>, endpoint: Endpoint, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let prepared = {
        let Ok(_permit) = state.tokenize_permits.acquire().await else { return refuse(endpoint, started, ApiError::internal("shutting down")) };
        match endpoint {
            Endpoint::Chat => state.prepare_chat(&headers, body),
            Endpoint::Completion => state.prepare_completion(&headers, body),
        }
    };
    let p = match prepared {
        Ok(p) => p,
        Err(e) => return refuse(endpoint, started, e),
    };
    let slot = match state.take_key_slot(&headers) {
        Ok(s) => s,
        Err(e) => return refuse(endpoint, started, e),
    };
    let id = request_id(&state, &headers, if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" });
    run(state, id, endpoint, p, started, slot).await
}

/// One message of the history as the template sees it. With `as_text`
/// (a template that knows no tools), calls become `<tool_call>` blocks in
/// the assistant's text and results `<tool_response>` blocks in a user turn.
fn history_message(i: usize, m: &crate::openai::Message, as_text: bool) -> Result<ChatMessage, ApiError> {
    let bad = |why: String| ApiError::invalid(format!("messages[{i}]: {why}"), Some("messages"));
    if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "developer" | "tool") {
        return Err(bad(format!("role `{}` is not supported (system, developer, user, assistant, tool)", m.role)));
    }
    if m.tool_calls.is_some() && m.role != "assistant" {
        return Err(bad("only assistant messages carry tool_calls".into()));
    }
    if m.tool_call_id.is_some() && m.role != "tool" {
        return Err(bad("only tool messages carry tool_call_id".into()));
    }
    let text = m.text()?;
    let role = if m.role == "developer" { "system" } else { m.role.as_str() };
    if role == "tool" {
        let id = m.tool_call_id.as_deref().ok_or_else(|| bad("a tool message needs the tool_call_id of the call it answers".into()))?;
        if as_text {
            return Ok(ChatMessage::new("user", &format!("<tool_response>\n{text}\n</tool_response>")));
        }
        let mut msg = ChatMessage::new("tool", &text);
        msg.tool_call_id = Some(id.to_string());
        msg.name = m.name.clone();
        return Ok(msg);
    }
    let mut msg = ChatMessage::new(role, &text);
    if let Some(calls) = &m.tool_calls {
        let mut values = Vec::with_capacity(calls.len());
        for c in calls {
            if c.kind != "function" {
                return Err(bad(format!("tool call type `{}` is not supported (function)", c.kind)));
            }
            // Templates print the arguments with `tojson`, so they go in as
            // an object (a string that is not JSON stays a string).
            let args = serde_json::from_str::<Value>(&c.function.arguments).unwrap_or_else(|_| json!(c.function.arguments));
            values.push(json!({"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": args}}));
        }
        if as_text {
            let blocks: Vec<String> = values.iter().map(|v| format!("<tool_call>\n{}\n</tool_call>", json!({"name": v["function"]["name"], "arguments": v["function"]["arguments"]}))).collect();
            let sep = if text.is_empty() { "" } else { "\n" };
            msg.content = format!("{text}{sep}{}", blocks.join("\n"));
        } else {
            msg.tool_calls = Some(values);
        }
    }
    Ok(msg)
}

/// The prompt for `continue_final_message`: the conversation rendered with
/// its final assistant message, cut right after that message's text so
/// the template's end-of-turn marker is not there and the model continues
/// the message. An empty final message is the generation prompt itself.
fn open_final_message(msgs: &[ChatMessage], render: impl Fn(&[ChatMessage], bool) -> Result<String, ApiError>) -> Result<String, ApiError> {
    let last = msgs.last().filter(|m| m.role == "assistant").ok_or_else(|| ApiError::invalid("continue_final_message needs the last message to be from the assistant", Some("messages")))?;
    if last.content.is_empty() {
        return render(&msgs[..msgs.len() - 1], true);
    }
    let full = render(msgs, false)?;
    match full.rfind(&last.content) {
        Some(at) => Ok(full[..at + last.content.len()].to_string()),
        None => Err(ApiError::invalid("the chat template rewrites the final message, so it cannot be continued", Some("continue_final_message"))),
    }
}

async fn run(state: Arc<RouterState>, id: String, endpoint: Endpoint, p: Prepared, started: Instant, slot: Option<KeySlot>) -> Response {
    let stream = p.sampling.stream;
    match dispatch(&state, id, endpoint, p).await {
        Ok(mut job) if stream => {
            job._key_slot = slot;
            stream_response(state, job)
        }
        Ok(job) => whole_response(state, job).await,
        Err(e) => refuse(endpoint, started, e),
    }
}

async fn models(State(state): State<Arc<RouterState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    axum::Json(json!({"object": "list", "data": [{"id": state.cfg.served_model_name, "object": "model", "created": 0, "owned_by": "aerie"}]})).into_response()
}

async fn health(State(state): State<Arc<RouterState>>) -> Response {
    let n = state.registry.healthy_targets().len();
    if n > 0 {
        (StatusCode::OK, axum::Json(json!({"status": "ok", "healthy_targets": n}))).into_response()
    } else {
        ApiError::unavailable("no target worker is healthy").into_response()
    }
}

/// The router's current view of its workers (discovery plus probes).
async fn workers(State(state): State<Arc<RouterState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    axum::Json(state.registry.view()).into_response()
}

async fn metrics_page(State(state): State<Arc<RouterState>>) -> Response {
    match &state.metrics {
        Some(render) => render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::open_final_message;
    use aerie_engine::chat::ChatTemplate;
    use aerie_engine::ChatMessage;

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    fn open(msgs: &[ChatMessage]) -> Result<String, String> {
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        open_final_message(msgs, |m, g| t.render(m, g).map_err(|e| crate::error::ApiError::invalid(e.to_string(), None))).map_err(|e| e.message)
    }

    #[test]
    fn the_final_assistant_message_is_left_open() {
        let msgs = [ChatMessage::new("user", "Name a color."), ChatMessage::new("assistant", "Color: ")];
        assert_eq!(open(&msgs).unwrap(), "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\nColor: ");
        // Empty: exactly the generation prompt.
        let msgs = [ChatMessage::new("user", "Hi"), ChatMessage::new("assistant", "")];
        assert_eq!(open(&msgs).unwrap(), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
        // The cut is at the last occurrence: earlier equal text is kept.
        let msgs = [ChatMessage::new("user", "ab"), ChatMessage::new("assistant", "ab")];
        assert_eq!(open(&msgs).unwrap(), "<|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\nab");
    }

    #[test]
    fn continuing_needs_a_final_assistant_message() {
        let e = open(&[ChatMessage::new("user", "Hi")]).unwrap_err();
        assert!(e.contains("last message"), "{e}");
    }
}
