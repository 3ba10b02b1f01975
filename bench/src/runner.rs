//! Load generation: streaming chat requests against OpenAI-compatible
//! servers, one [`RequestRecord`] per request.
//!
//! Strategy. Each request is a streamed `/v1/chat/completions` call with
//! `stream_options.include_usage`, read line by line so every content chunk
//! gets its arrival time: TTFT is the first content chunk, inter-token
//! latency (ITL) the gap between successive content chunks, divided over
//! the tokens the chunk carried when the count is known (a speculative
//! server sends several tokens per chunk). Token counts come from the usage
//! chunk; a server that sends none is counted by content chunks, and the
//! record says so.
//!
//! Parameters ([`LoadSpec`]): the load is C closed-loop workers (C = 1 is a
//! single stream) or Poisson arrivals at R requests/s; a run is bounded by
//! its prompt count and by `time_limit` (no request starts after it; the
//! ones in flight finish or hit their `timeout`). Several servers are
//! compared *interleaved*: the prompts are cut into rounds and each round
//! runs on every server in turn, the first server rotating, so slow drift
//! of a shared machine lands on all of them alike.

use crate::dataset::Prompt;
use crate::error::{BenchError, Result};
use crate::schedule::poisson_arrivals;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One server under test.
#[derive(Debug, Clone)]
pub struct Server {
    /// The name figures are reported under.
    pub label: String,
    /// Up to and including `/v1`, e.g. `http://127.0.0.1:30000/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    /// Extra request-body fields (e.g. `repeat_penalty` for llama.cpp).
    pub extra: serde_json::Map<String, Value>,
}

/// How requests are offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// C closed-loop workers; 1 is a single stream.
    Concurrency(usize),
    /// Poisson arrivals at this many requests/s (∞: all at once).
    Rate(f64),
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Load::Concurrency(c) => write!(f, "concurrency {c}"),
            Load::Rate(r) => write!(f, "rate {r}/s"),
        }
    }
}

/// What every request asks for and how the run is bounded.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub load: Load,
    pub max_tokens: usize,
    pub temperature: f64,
    /// No request starts after this much time (per server).
    pub time_limit: Option<Duration>,
    /// One request's longest time.
    pub timeout: Duration,
    /// Seed of the Poisson schedule.
    pub seed: u64,
}

impl Default for LoadSpec {
    /// Single stream, 128 greedy tokens, no time limit, 300 s per request.
    fn default() -> Self {
        LoadSpec { load: Load::Concurrency(1), max_tokens: 128, temperature: 0.0, time_limit: None, timeout: Duration::from_secs(300), seed: 0 }
    }
}

/// One request's measurements: a JSONL line of `bench serve --output`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestRecord {
    /// Always "request" (the summary lines say "summary").
    #[serde(rename = "type")]
    pub kind: String,
    pub label: String,
    /// The load it ran under, e.g. "concurrency 8".
    pub load: String,
    pub prompt_id: String,
    pub category: String,
    pub ok: bool,
    pub error: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// "usage" or "chunks": where `completion_tokens` came from.
    pub token_count_source: String,
    /// Sent this long after its server's run began.
    pub sent_at_s: f64,
    pub ttft_s: Option<f64>,
    pub e2e_s: f64,
    /// Per-token gaps after the first chunk, seconds.
    pub itl_s: Vec<f64>,
    pub finish_reason: Option<String>,
    /// Speculation counters from the usage extension, when reported.
    pub spec_verify_ct: Option<u64>,
    pub spec_accept_length: Option<f64>,
    pub spec_accept_rate: Option<f64>,
    /// Mean depth budget per verification (`spec_mean_budget`), when reported.
    #[serde(default)]
    pub spec_mean_budget: Option<f64>,
    pub text: String,
}

impl RequestRecord {
    /// A request that has not been sent yet (or failed before any reply).
    fn new(server: &Server, load: Load, p: &Prompt, sent_at_s: f64) -> Self {
        RequestRecord {
            kind: "request".into(),
            label: server.label.clone(),
            load: load.to_string(),
            prompt_id: p.id.clone(),
            category: p.category.clone(),
            ok: false,
            error: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            token_count_source: "chunks".into(),
            sent_at_s,
            ttft_s: None,
            e2e_s: 0.0,
            itl_s: Vec::new(),
            finish_reason: None,
            spec_verify_ct: None,
            spec_accept_length: None,
            spec_accept_rate: None,
            spec_mean_budget: None,
            text: String::new(),
        }
    }
}

/// Refuses a base URL that is not on this machine: a benchmark is load,
/// and load belongs on servers the operator runs here.
pub fn require_loopback(base_url: &str) -> Result<()> {
    let rest = base_url.strip_prefix("http://").or_else(|| base_url.strip_prefix("https://")).ok_or_else(|| BenchError::Config(format!("{base_url}: expected an http:// URL")))?;
    let host = rest.split('/').next().unwrap_or("");
    let host = if let Some(h) = host.strip_prefix('[') { h.split(']').next().unwrap_or("") } else { host.rsplit_once(':').map_or(host, |(h, _)| h) };
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(BenchError::Config(format!("{base_url}: benchmarks run against loopback servers only (localhost, 127.0.0.0/8, ::1)")))
    }
}

/// The model name to send: `explicit` when given, else the server's first.
pub fn model_name(explicit: Option<&str>, base_url: &str, api_key: Option<&str>) -> Result<String> {
    match explicit {
        Some(m) => Ok(m.to_string()),
        None => served_model(base_url, api_key),
    }
}

/// The first model `GET {base_url}/models` lists.
pub fn served_model(base_url: &str, api_key: Option<&str>) -> Result<String> {
    let url = format!("{}/models", base_url.trim_end_matches('/'));
    let mut req = agent(Duration::from_secs(10)).get(&url);
    if let Some(k) = api_key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let fail = |msg: String| BenchError::Startup { what: base_url.to_string(), msg };
    let text = req.call().map_err(|e| fail(format!("GET {url}: {e}")))?.into_string().map_err(|e| fail(format!("GET {url}: {e}")))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| fail(format!("GET {url}: {e}")))?;
    v["data"][0]["id"].as_str().map(str::to_string).ok_or_else(|| fail(format!("{url} lists no model")))
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(timeout).build()
}

/// Sends one streamed chat request and measures it. Never fails: errors
/// land in the record.
pub fn send(agent: &ureq::Agent, server: &Server, spec: &LoadSpec, p: &Prompt, sent_at_s: f64) -> RequestRecord {
    let mut rec = RequestRecord::new(server, spec.load, p, sent_at_s);
    let mut body = json!({
        "model": server.model,
        "messages": [{"role": "user", "content": p.text}],
        "max_tokens": spec.max_tokens,
        "temperature": spec.temperature,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    for (k, v) in &server.extra {
        body[k] = v.clone();
    }
    let t0 = Instant::now();
    let mut req = agent.post(&format!("{}/chat/completions", server.base_url.trim_end_matches('/'))).set("Content-Type", "application/json");
    if let Some(key) = &server.api_key {
        req = req.set("Authorization", &format!("Bearer {key}"));
    }
    let resp = match req.send_string(&body.to_string()) {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["error"]["message"].as_str().map(str::to_string)).unwrap_or(text);
            rec.error = Some(format!("HTTP {code}: {msg}"));
            rec.e2e_s = t0.elapsed().as_secs_f64();
            return rec;
        }
        Err(e) => {
            rec.error = Some(e.to_string());
            rec.e2e_s = t0.elapsed().as_secs_f64();
            return rec;
        }
    };
    let mut chunk_times: Vec<f64> = Vec::new();
    let mut usage: Option<Value> = None;
    let mut done = false;
    for line in BufReader::new(resp.into_reader()).lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                rec.error = Some(format!("reading the stream: {e}"));
                break;
            }
        };
        let Some(data) = line.strip_prefix("data:").map(str::trim) else { continue };
        if data == "[DONE]" {
            done = true;
            break;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            rec.error = Some(format!("unreadable chunk: {data}"));
            break;
        };
        if let Some(err) = v.get("error") {
            rec.error = Some(err["message"].as_str().unwrap_or("error chunk").to_string());
            break;
        }
        if let Some(choice) = v["choices"].get(0) {
            if let Some(t) = choice["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
                chunk_times.push(t0.elapsed().as_secs_f64());
                rec.text.push_str(t);
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                rec.finish_reason = Some(f.to_string());
            }
        }
        if v["usage"].is_object() {
            usage = Some(v["usage"].clone());
        }
    }
    rec.e2e_s = t0.elapsed().as_secs_f64();
    if rec.error.is_none() && !done {
        rec.error = Some("the stream ended without [DONE]".into());
    }
    rec.ttft_s = chunk_times.first().copied();
    rec.completion_tokens = chunk_times.len() as u64;
    if let Some(u) = &usage {
        if let Some(n) = u["completion_tokens"].as_u64() {
            rec.completion_tokens = n;
            rec.token_count_source = "usage".into();
        }
        rec.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
        rec.spec_verify_ct = u["spec_verify_ct"].as_u64().filter(|&n| n > 0);
        rec.spec_accept_length = u["spec_accept_length"].as_f64().filter(|_| rec.spec_verify_ct.is_some());
        rec.spec_accept_rate = u["spec_accept_rate"].as_f64().filter(|_| rec.spec_verify_ct.is_some());
        rec.spec_mean_budget = u["spec_mean_budget"].as_f64().filter(|_| rec.spec_verify_ct.is_some());
    }
    // Gaps between chunks, spread over the tokens after the first chunk.
    if chunk_times.len() > 1 {
        let per_chunk = (rec.completion_tokens.saturating_sub(1) as f64 / (chunk_times.len() - 1) as f64).max(1.0);
        for w in chunk_times.windows(2) {
            let gap = (w[1] - w[0]) / per_chunk;
            rec.itl_s.resize(rec.itl_s.len() + per_chunk.round() as usize, gap);
        }
    }
    rec.ok = rec.error.is_none();
    rec
}

/// What one server's run gave.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub records: Vec<RequestRecord>,
    /// Time from the first send to the last reply, seconds.
    pub wall_s: f64,
}

/// Runs `prompts` against one server under `spec`; `on_done` is called
/// after each request (progress bars).
pub fn run(server: &Server, prompts: &[Prompt], spec: &LoadSpec, on_done: &(dyn Fn(&RequestRecord) + Sync)) -> RunOutcome {
    let agent = agent(spec.timeout);
    let start = Instant::now();
    let records = Mutex::new(Vec::with_capacity(prompts.len()));
    let too_late = |t: Instant| spec.time_limit.is_some_and(|lim| t.duration_since(start) > lim);
    let one = |p: &Prompt| {
        let r = send(&agent, server, spec, p, start.elapsed().as_secs_f64());
        on_done(&r);
        records.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    };
    match spec.load {
        Load::Concurrency(c) => {
            let next = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..c.max(1).min(prompts.len().max(1)) {
                    s.spawn(|| loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= prompts.len() || too_late(Instant::now()) {
                            break;
                        }
                        one(&prompts[i]);
                    });
                }
            });
        }
        Load::Rate(rate) => {
            let at = poisson_arrivals(prompts.len(), rate, spec.seed);
            std::thread::scope(|s| {
                for (p, t) in prompts.iter().zip(at) {
                    let when = start + Duration::from_secs_f64(t);
                    if too_late(when) {
                        break;
                    }
                    std::thread::sleep(when.saturating_duration_since(Instant::now()));
                    let one = &one;
                    s.spawn(move || one(p));
                }
            });
        }
    }
    let wall_s = start.elapsed().as_secs_f64();
    let mut records = records.into_inner().unwrap_or_else(|e| e.into_inner());
    records.sort_by(|a, b| a.sent_at_s.total_cmp(&b.sent_at_s));
    RunOutcome { records, wall_s }
}

/// Runs the same prompts against several servers, interleaved in rounds of
/// `round` prompts with the first server rotating (see the module
/// comment). One outcome per server, in `servers` order; each wall time is
/// the sum of that server's rounds. A time limit applies per server.
pub fn run_interleaved(servers: &[Server], prompts: &[Prompt], spec: &LoadSpec, round: usize, on_done: &(dyn Fn(&RequestRecord) + Sync)) -> Vec<RunOutcome> {
    let mut out: Vec<RunOutcome> = servers.iter().map(|_| RunOutcome { records: Vec::new(), wall_s: 0.0 }).collect();
    let round = if servers.len() == 1 { prompts.len().max(1) } else { round.max(1) };
    for (r, chunk) in prompts.chunks(round).enumerate() {
        for j in 0..servers.len() {
            let k = (r + j) % servers.len();
            if spec.time_limit.is_some_and(|lim| out[k].wall_s > lim.as_secs_f64()) {
                continue;
            }
            let mut spec_k = spec.clone();
            spec_k.time_limit = spec.time_limit.map(|lim| lim.saturating_sub(Duration::from_secs_f64(out[k].wall_s)));
            spec_k.seed = spec.seed.wrapping_add(r as u64);
            let o = run(&servers[k], chunk, &spec_k, on_done);
            let offset = out[k].wall_s;
            out[k].records.extend(o.records.into_iter().map(|mut rec| {
                rec.sent_at_s += offset;
                rec
            }));
            out[k].wall_s += o.wall_s;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_are_benchmarked() {
        for ok in ["http://127.0.0.1:30000/v1", "http://localhost/v1", "http://[::1]:8080/v1", "http://127.1.2.3:1/v1"] {
            require_loopback(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["http://10.0.0.1:30000/v1", "http://example.com/v1", "127.0.0.1:30000", "http://[2001:db8::1]:80/v1"] {
            assert!(require_loopback(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_dead_server_gives_a_failed_record_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = Server { label: "dead".into(), base_url: format!("http://127.0.0.1:{port}/v1"), api_key: None, model: "m".into(), extra: Default::default() };
        let spec = LoadSpec { timeout: Duration::from_secs(5), ..Default::default() };
        let p = Prompt { id: "1".into(), category: "c".into(), text: "hi".into() };
        let out = run(&server, &[p.clone(), p], &spec, &|_| {});
        assert_eq!(out.records.len(), 2);
        assert!(out.records.iter().all(|r| !r.ok && r.error.is_some()), "{:?}", out.records);
    }
}
