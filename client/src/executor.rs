//! Running a program: normal mode (one call per gen) and speculative mode
//! (SGLang's `num_api_spec_tokens`: one call writes the whole turn).
//!
//! Speculative strategy, with parameter `num_api_spec_tokens` (N):
//! 1. Literals at the start of the turn are written into the assistant
//!    message (continued, not regenerated), then one streaming call of at
//!    most N tokens writes the rest of the turn.
//! 2. The reply is matched as it streams ([`crate::matcher`]). A field is
//!    delivered as soon as its stop string arrives; on the first mismatch,
//!    or once every field is filled, the stream is dropped, so no tokens
//!    are spent past that point.
//! 3. Fields that matched are kept. From the first unmatched term on, the
//!    program continues with per-field calls whose prefix is the turn so
//!    far (literals plus the values already filled). A field the budget cut
//!    off is continued from its partial text rather than regenerated.
//!
//! Unlike SGLang's version there are no blind retries of the whole call,
//! partial text is never returned as if it were complete (each field says
//! whether it reached its stop), and streaming works in both modes.

use crate::api::{CallSpec, ClientConfig, Http, Reply};
use crate::error::{ClientError, ProgramError};
use crate::matcher::{match_reply, Finish, Outcome};
use crate::program::{Program, Role, Term};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How a program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One call per gen.
    Normal,
    /// One call of at most `num_api_spec_tokens` for the whole turn, then
    /// per-field calls from the first point that did not match.
    Speculative { num_api_spec_tokens: u32 },
}

/// Which call filled a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The speculative call, matched.
    Speculative,
    /// A per-field call after the speculative reply stopped matching.
    Fallback,
    /// A per-field call in normal mode.
    Normal,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Speculative => "speculative",
            Source::Fallback => "fallback",
            Source::Normal => "normal",
        }
    }
}

/// A filled field.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    /// The text, trimmed of surrounding whitespace.
    pub value: String,
    pub source: Source,
    /// False when the field ran out of tokens before its stop string (or,
    /// for a last gen without one, before the model ended its turn).
    pub complete: bool,
}

/// A program's result: fields, and what it cost.
#[derive(Debug, Clone)]
pub struct ProgramResult {
    pub fields: Vec<Field>,
    /// API calls made.
    pub calls: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// False when some call's usage was not reported (a speculative stream
    /// the client cut short, without `ClientConfig::continuous_usage`): its
    /// completion tokens are counted as streamed chunks and its prompt
    /// tokens are missing.
    pub usage_exact: bool,
    pub elapsed: Duration,
    /// The assistant turn as the program wrote it: literals and values.
    pub assistant_text: String,
    history: Vec<(Role, String)>,
}

impl ProgramResult {
    /// A field's value by name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|f| f.name == name).map(|f| f.value.as_str())
    }
    /// Names of the fields that came from fallback calls.
    pub fn fallback_fields(&self) -> Vec<&str> {
        self.fields.iter().filter(|f| f.source == Source::Fallback).map(|f| f.name.as_str()).collect()
    }
    /// The conversation including the finished assistant turn, to start a
    /// follow-up program with [`ProgramBuilder::history`](crate::ProgramBuilder::history).
    pub fn history(&self) -> Vec<(Role, String)> {
        let mut h = self.history.clone();
        h.push((Role::Assistant, self.assistant_text.clone()));
        h
    }
    pub fn to_json(&self) -> Value {
        let fields: serde_json::Map<String, Value> = self.fields.iter().map(|f| (f.name.clone(), json!(f.value))).collect();
        let sources: serde_json::Map<String, Value> = self.fields.iter().map(|f| (f.name.clone(), json!(f.source.as_str()))).collect();
        json!({
            "fields": fields,
            "sources": sources,
            "fallback_fields": self.fallback_fields(),
            "incomplete_fields": self.fields.iter().filter(|f| !f.complete).map(|f| f.name.as_str()).collect::<Vec<_>>(),
            "api_calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "usage_exact": self.usage_exact,
            "elapsed_ms": self.elapsed.as_secs_f64() * 1e3,
        })
    }
}

/// Runs programs against one OpenAI-compatible endpoint.
pub struct Client {
    http: Http,
}

/// Per-run bookkeeping.
struct Run<'p, 'f> {
    program: &'p Program,
    /// Filled fields by term index.
    filled: Vec<Option<Field>>,
    transcript: String,
    calls: u32,
    prompt_tokens: u64,
    completion_tokens: u64,
    usage_exact: bool,
    on_field: &'f mut dyn FnMut(&Field),
}

impl Run<'_, '_> {
    fn count(&mut self, r: &Reply) {
        self.calls += 1;
        self.prompt_tokens += r.prompt_tokens;
        self.completion_tokens += r.completion_tokens;
        self.usage_exact &= r.usage_exact;
    }
    /// Records term `k`'s value; `notify` is false for a field the caller
    /// already handed to `on_field` while streaming.
    fn fill(&mut self, k: usize, value: String, source: Source, complete: bool, notify: bool) {
        let Term::Gen(g) = &self.program.turn[k] else { return };
        let f = Field { name: g.name.clone(), value, source, complete };
        self.transcript.push_str(&f.value);
        if notify {
            (self.on_field)(&f);
        }
        self.filled[k] = Some(f);
    }
    /// The prefix a call continues: the turn so far, without trailing
    /// whitespace, which the model writes itself (its tokenizer usually
    /// glues a space to the next word).
    fn prefix(&self) -> &str {
        self.transcript.trim_end()
    }
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Self {
        Client { http: Http::new(cfg) }
    }

    /// Runs `program`; fields are only returned at the end.
    pub fn run(&self, program: &Program, mode: Mode) -> Result<ProgramResult, ClientError> {
        self.run_streaming(program, mode, &mut |_| {})
    }

    /// Runs `program`, handing each field to `on_field` as soon as it is
    /// complete, in program order.
    pub fn run_streaming(&self, program: &Program, mode: Mode, on_field: &mut dyn FnMut(&Field)) -> Result<ProgramResult, ClientError> {
        let started = Instant::now();
        let mut run = Run {
            program,
            filled: vec![None; program.turn.len()],
            transcript: String::new(),
            calls: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            usage_exact: true,
            on_field,
        };
        match mode {
            Mode::Normal => self.per_field(&mut run, 0, Source::Normal)?,
            Mode::Speculative { num_api_spec_tokens } => self.speculative(&mut run, num_api_spec_tokens)?,
        }
        let Run { filled, transcript, calls, prompt_tokens, completion_tokens, usage_exact, .. } = run;
        Ok(ProgramResult {
            fields: filled.into_iter().flatten().collect(),
            calls,
            prompt_tokens,
            completion_tokens,
            usage_exact,
            elapsed: started.elapsed(),
            assistant_text: transcript,
            history: program.history.clone(),
        })
    }

    /// Per-field calls for terms `from..`.
    fn per_field(&self, run: &mut Run, from: usize, source: Source) -> Result<(), ClientError> {
        let p = run.program;
        for k in from..p.turn.len() {
            match &p.turn[k] {
                Term::Text(t) => run.transcript.push_str(t),
                Term::Gen(g) => {
                    let r = self.http.complete(&CallSpec { history: &p.history, prefix: run.prefix(), max_tokens: g.max_tokens, stops: &g.stops, sampling: &g.sampling })?;
                    run.count(&r);
                    run.fill(k, r.text.trim().to_string(), source, r.finish != Some(Finish::Length), true);
                }
            }
        }
        Ok(())
    }

    fn speculative(&self, run: &mut Run, budget: u32) -> Result<(), ClientError> {
        let p = run.program;
        if budget == 0 {
            return Err(ProgramError::ZeroSpecTokens.into());
        }
        let first = p.gens().next().ok_or(ProgramError::NoGen)?;
        if let Some(g) = p.gens().find(|g| g.sampling != first.sampling) {
            return Err(ProgramError::MixedSampling { name: g.name.clone() }.into());
        }
        // Leading literals are written, not generated.
        let start = p.turn.iter().position(|t| matches!(t, Term::Gen(_))).unwrap_or(p.turn.len());
        for t in &p.turn[..start] {
            if let Term::Text(s) = t {
                run.transcript.push_str(s);
            }
        }
        let prefix = run.prefix().to_string();
        let mut delivered = 0;
        let mut latest = None;
        let reply = {
            let on_field = &mut run.on_field;
            let turn = &p.turn;
            self.http.stream(&CallSpec { history: &p.history, prefix: &prefix, max_tokens: budget, stops: &[], sampling: &first.sampling }, &mut |text| {
                let m = match_reply(turn, start, text, Finish::Open);
                for (k, v) in &m.fields[delivered..] {
                    if let Term::Gen(g) = &turn[*k] {
                        on_field(&Field { name: g.name.clone(), value: v.clone(), source: Source::Speculative, complete: true });
                    }
                }
                delivered = m.fields.len();
                let more = matches!(m.outcome, Outcome::NeedMore { .. });
                latest = Some(m);
                more
            })?
        };
        run.count(&reply);
        let m = match reply.finish {
            Some(Finish::Open) | None => latest.unwrap_or_else(|| match_reply(&p.turn, start, &reply.text, Finish::Open)),
            Some(f) => match_reply(&p.turn, start, &reply.text, f),
        };
        // Record what matched; the fields already delivered are not repeated.
        let stop_at = match &m.outcome {
            Outcome::Complete => p.turn.len(),
            Outcome::Mismatch { term } | Outcome::EndedBefore { term } | Outcome::Truncated { term, .. } | Outcome::NeedMore { term } => *term,
        };
        for k in start..stop_at {
            match &p.turn[k] {
                Term::Text(t) => run.transcript.push_str(t),
                Term::Gen(_) => {
                    // Every gen before the stopping point has a value.
                    let Some(idx) = m.fields.iter().position(|(i, _)| *i == k) else { continue };
                    run.fill(k, m.fields[idx].1.clone(), Source::Speculative, true, idx >= delivered);
                }
            }
        }
        match m.outcome {
            Outcome::Complete => Ok(()),
            Outcome::Truncated { term, partial } => {
                // Continue the cut-off field from its partial text.
                let Term::Gen(g) = &p.turn[term] else { return self.per_field(run, term, Source::Fallback) };
                let prefix = format!("{}{}", run.transcript, partial);
                let r = self.http.complete(&CallSpec { history: &p.history, prefix: prefix.trim_end(), max_tokens: g.max_tokens, stops: &g.stops, sampling: &g.sampling })?;
                run.count(&r);
                let joined = format!("{partial}{}", r.text);
                run.fill(term, joined.trim().to_string(), Source::Fallback, r.finish != Some(Finish::Length), true);
                self.per_field(run, term + 1, Source::Fallback)
            }
            Outcome::Mismatch { term } | Outcome::EndedBefore { term } | Outcome::NeedMore { term } => self.per_field(run, term, Source::Fallback),
        }
    }
}
