//! Continuous batching at step granularity.
//!
//! Strategy. One scheduler thread owns the model's forward passes. Each loop
//! it (1) drops requests whose client went away or that were aborted,
//! (2) admits waiting requests in FIFO order while `max_running_requests`
//! and the KV budget allow, prefilling each, and (3) runs one speculative
//! step for every running request together: all drafters are asked first,
//! then every tree is verified in a single batched forward
//! ([`aerie_engine::spec::step_batch`]). Requests join and leave between
//! steps. Requests without speculation take part with root-only trees,
//! which is a plain decode step in the same forward.
//!
//! Parameters: `max_running_requests`, `max_total_tokens` (KV budget; each
//! request reserves `min(prompt + max_tokens, context) + TREE_SLACK` at
//! admission, so running requests never run out), `max_queued_requests`
//! (beyond it `submit` refuses with `QueueFull`).

use crate::config::TargetConfig;
use crate::error::TargetError;
use aerie_engine::generate::{FinishReason, GenerateRequest};
use aerie_engine::spec::budget::{self, Acceptance, BudgetConfig, CostModel};
use aerie_engine::spec::{step_batch, Proposer, SpecSession};
use aerie_engine::{Model, SamplingParams};
use aerie_proto::metric_names as m;
use aerie_proto::v1::{Finished, GenerateResponse, StepStats, TokenLogprob, TopLogprob};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// KV rows reserved beyond prompt + max_tokens for the tree being verified.
pub const TREE_SLACK: usize = 64;

pub type ChunkSender = UnboundedSender<Result<GenerateResponse, tonic::Status>>;

/// One admitted-to-queue request.
pub struct Job {
    pub id: String,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_ids: Vec<u32>,
    /// One proposer per choice (OpenAI's `n`); the choices share the prefill.
    pub proposers: Vec<Box<dyn Proposer>>,
    /// Whether per-step speculation stats are reported.
    pub speculative: bool,
    /// Raised when the request lost (or never got) its draft worker.
    pub fallback: Arc<AtomicBool>,
    pub out: ChunkSender,
    pub cancel: Arc<AtomicBool>,
    /// KV tokens reserved while running, for all choices together.
    pub reserve: usize,
}

/// State shared by the gRPC handlers and the scheduler thread.
pub struct Shared {
    queue: Mutex<VecDeque<Job>>,
    wake: Condvar,
    max_running: usize,
    max_total_tokens: usize,
    max_queued: usize,
    running: AtomicUsize,
    kv_used: AtomicUsize,
    draining: AtomicBool,
    cancels: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Mean τ of recent speculative requests (an EWMA), as f64 bits.
    tau_bits: AtomicU64,
    adaptive: bool,
    /// Step half the running requests at a time while the draft workers
    /// draft for the other half (`--speculative-overlap`).
    overlap: bool,
    /// The adaptive budget's state as JSON, refreshed by the scheduler
    /// (`GET /debug/spec_budget` on the metrics port).
    budget_view: Mutex<serde_json::Value>,
    /// Why the worker can no longer serve (a tensor-parallel rank died or
    /// stalled): every request has been failed, and the process should exit.
    fatal: Mutex<Option<String>>,
}

impl Shared {
    pub fn new(cfg: &TargetConfig) -> Arc<Shared> {
        metrics::gauge!(m::TARGET_KV_CAPACITY).set(cfg.max_total_tokens as f64);
        Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            max_running: cfg.max_running_requests.max(1),
            max_total_tokens: cfg.max_total_tokens,
            max_queued: cfg.max_queued_requests,
            running: AtomicUsize::new(0),
            kv_used: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            cancels: Mutex::new(HashMap::new()),
            tau_bits: AtomicU64::new(0f64.to_bits()),
            adaptive: cfg.speculative_adaptive,
            overlap: cfg.speculative_overlap,
            budget_view: Mutex::new(serde_json::json!({ "adaptive": cfg.speculative_adaptive })),
            fatal: Mutex::new(None),
        })
    }

    /// The adaptive budget's cost model, acceptance prior and each running
    /// request's choice, as JSON (refreshed at most every 250 ms).
    pub fn spec_budget_view(&self) -> serde_json::Value {
        self.budget_view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn max_total_tokens(&self) -> usize {
        self.max_total_tokens
    }

    /// Queues a job, or refuses it when the queue is full or the worker drains.
    pub fn submit(&self, job: Job) -> Result<(), TargetError> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the queue lock, so a drain that saw the queue empty
        // never has a job slip in behind it.
        if self.is_draining() {
            return Err(TargetError::Draining);
        }
        // Requests whose clients left do not hold queue places.
        self.purge_abandoned(&mut q);
        // Every request waits at least until the scheduler's next loop, so
        // the queue bound counts requests not yet running.
        if q.len() >= self.max_queued {
            metrics::counter!(m::TARGET_REQUESTS, "outcome" => "rejected").increment(1);
            return Err(TargetError::QueueFull { waiting: q.len(), limit: self.max_queued });
        }
        {
            let mut c = self.cancels.lock().unwrap_or_else(|e| e.into_inner());
            if c.contains_key(&job.id) {
                return Err(TargetError::InvalidRequest(format!("request_id `{}` is already live on this worker", job.id)));
            }
            c.insert(job.id.clone(), job.cancel.clone());
        }
        q.push_back(job);
        metrics::gauge!(m::TARGET_QUEUE_LENGTH).set(q.len() as f64);
        self.wake.notify_one();
        Ok(())
    }

    /// Marks a live request for abort; true if it was found.
    pub fn abort(&self, id: &str) -> bool {
        match self.cancels.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            Some(c) => {
                c.store(true, Ordering::Release);
                self.wake.notify_one();
                true
            }
            None => false,
        }
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    pub fn waiting(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn kv_used(&self) -> usize {
        self.kv_used.load(Ordering::Acquire)
    }

    /// No request running or waiting.
    pub fn is_idle(&self) -> bool {
        // Under the queue lock: admission moves a job from the queue to
        // `running` while holding it, so no job is ever in neither.
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        self.running() == 0 && q.is_empty()
    }

    /// Drops queued jobs whose client went away or that were aborted.
    fn purge_abandoned(&self, q: &mut VecDeque<Job>) {
        q.retain(|j| {
            let gone = j.cancel.load(Ordering::Acquire) || j.out.is_closed();
            if gone {
                self.forget(&j.id);
                metrics::counter!(m::TARGET_REQUESTS, "outcome" => "aborted").increment(1);
                let _ = j.out.send(Err(tonic::Status::cancelled("aborted")));
            }
            !gone
        });
    }

    /// After a scheduler failure: refuse new work and fail what waits.
    fn fail_everything(&self, why: &str) {
        self.start_draining();
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        for j in q.drain(..) {
            self.forget(&j.id);
            let _ = j.out.send(Err(tonic::Status::internal(why.to_string())));
        }
    }

    /// The worker cannot serve any more (its tensor-parallel group broke):
    /// refuses new requests, fails the queued ones now and the running ones
    /// at the scheduler's next loop. The first reason given is kept.
    pub fn fail_group(&self, why: &str) {
        {
            let mut f = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
            if f.is_none() {
                tracing::error!("{why}");
                *f = Some(why.to_string());
            }
        }
        self.fail_everything(why);
        self.wake.notify_all();
    }

    /// Why the worker can no longer serve, once it cannot.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn mean_tau(&self) -> f64 {
        f64::from_bits(self.tau_bits.load(Ordering::Relaxed))
    }

    fn record_tau(&self, tau: f64) {
        let old = self.mean_tau();
        let new = if old == 0.0 { tau } else { 0.9 * old + 0.1 * tau };
        self.tau_bits.store(new.to_bits(), Ordering::Relaxed);
    }

    fn forget(&self, id: &str) {
        self.cancels.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// One choice of a request being decoded.
struct Running {
    id: String,
    /// Which choice (0 for a request with one).
    index: u32,
    /// Choices of this request still running; the last one to end forgets
    /// the request id and counts the request.
    siblings: Arc<AtomicUsize>,
    session: SpecSession<'static>,
    speculative: bool,
    fallback: Arc<AtomicBool>,
    out: ChunkSender,
    cancel: Arc<AtomicBool>,
    reserve: usize,
    /// Entries of `session.logprobs` already sent.
    logprobs_sent: usize,
    /// This choice's acceptance by depth (adaptive budgets).
    acceptance: Acceptance,
    /// The deepest tree its drafter has proposed, and its trees' mean
    /// nodes per level.
    deepest: usize,
    rows_per_level: f64,
    /// Its half of the batch under `--speculative-overlap`.
    lane: bool,
    /// Sampled with a seed: the adaptive budget leaves its tree whole, since
    /// the tokens a seed draws depend on each step's depth, and a depth
    /// chosen from timings would make the seed's text vary run to run.
    seeded: bool,
}

impl Running {
    /// Whether a drafter still proposes for this choice.
    fn drafts(&self) -> bool {
        self.speculative && !self.fallback.load(Ordering::Acquire)
    }

    fn gone(&self) -> bool {
        self.cancel.load(Ordering::Acquire) || self.out.is_closed()
    }

    /// Marks this choice ended; true for the request's last choice, which
    /// forgets the request id and counts the request.
    fn leave(&self) -> bool {
        self.siblings.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// The logprobs of tokens emitted since the last chunk, on the wire.
    fn new_logprobs(&mut self) -> Vec<TokenLogprob> {
        let fresh = &self.session.logprobs[self.logprobs_sent..];
        self.logprobs_sent = self.session.logprobs.len();
        fresh
            .iter()
            .map(|l| TokenLogprob {
                token_id: l.token,
                logprob: l.logprob,
                top: l.top.iter().map(|&(token_id, logprob)| TopLogprob { token_id, logprob }).collect(),
            })
            .collect()
    }
}

/// Starts the scheduler thread.
pub fn spawn(model: Arc<Model>, shared: Arc<Shared>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("aerie-scheduler".into()).spawn(move || {
        // A panic here is a bug, but it must not leave requests hanging: the
        // running ones lose their senders (their streams end in an error at
        // the router), the queued ones are failed, and the worker stops
        // taking work, so Health fails and routers move on.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&model, &shared))).is_err() {
            tracing::error!("the scheduler thread panicked; failing all requests and refusing new ones");
            shared.fail_everything("the target worker's scheduler failed");
        }
    })
}

fn finished_message(r: &mut Running) -> GenerateResponse {
    r.session.finalize();
    let s = &r.session;
    let finish_reason = match s.finish.unwrap_or(FinishReason::Length) {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    };
    GenerateResponse {
        token_ids: Vec::new(),
        step: None,
        logprobs: Vec::new(),
        index: r.index,
        finished: Some(Finished {
            finish_reason: finish_reason.into(),
            prompt_tokens: s.stats.prompt_tokens as u32,
            completion_tokens: s.tokens.len() as u32,
            spec_verify_ct: s.spec.spec_verify_ct as u32,
            spec_num_correct_drafts: s.spec.spec_num_correct_drafts as u32,
            spec_accept_length: s.spec.spec_accept_length,
            spec_accept_rate: s.spec.spec_accept_rate,
            spec_mean_budget: s.spec.spec_mean_budget,
            draft_fallback: r.fallback.load(Ordering::Acquire),
        }),
    }
}

/// The adaptive budget's state on the scheduler thread.
struct Adaptive {
    cfg: BudgetConfig,
    cost: CostModel,
    /// Every request's acceptance together: the prior of new requests.
    prior: Acceptance,
    /// When the debug view was last refreshed.
    viewed: Option<Instant>,
    steps: u64,
}

impl Adaptive {
    fn start(model: &Model) -> Adaptive {
        let cfg = BudgetConfig { max_depth: usize::MAX, ..Default::default() };
        let cost = CostModel::calibrate(model, cfg.decay).unwrap_or_else(|e| {
            tracing::warn!("cost model calibration failed ({e}); learning from the first steps");
            CostModel::new([(1.0, 0.0), (9.0, 0.0)], cfg.decay)
        });
        let c = cost.costs();
        tracing::info!(fixed_ms = c.fixed * 1e3, per_row_ms = c.per_row * 1e3, "adaptive speculation: cost model calibrated");
        Adaptive { cfg, cost, prior: Acceptance::default(), viewed: None, steps: 0 }
    }

    /// Sets each speculative choice's depth cap for the next step.
    fn plan(&self, running: &mut [Running]) {
        // The verify cost near this batch's plain rows (one per request).
        let costs = self.cost.costs_at(running.len());
        for r in running.iter_mut().filter(|r| r.seeded) {
            r.session.depth_cap = None;
        }
        let spec: Vec<usize> = (0..running.len()).filter(|&i| running[i].speculative && !running[i].seeded).collect();
        let cands: Vec<budget::Candidate> = spec
            .iter()
            .map(|&i| {
                let r = &running[i];
                // Never deeper than its drafter has gone (until it has
                // drafted once, the cap is lifted below).
                budget::Candidate { acceptance: &r.acceptance, rows_per_level: r.rows_per_level, max_depth: r.deepest }
            })
            .collect();
        let depths = budget::choose(&self.cfg, costs, &self.prior, &cands);
        for (&i, d) in spec.iter().zip(depths) {
            let r = &mut running[i];
            if r.deepest == 0 {
                r.session.depth_cap = None;
                continue;
            }
            r.session.depth_cap = Some(d);
            metrics::histogram!(m::TARGET_SPEC_BUDGET).record(d as f64);
            metrics::histogram!(m::TARGET_PREDICTED_ACCEPT_LENGTH).record(r.acceptance.expected_tokens(d, &self.prior, self.cfg.prior_weight));
        }
    }

    /// Publishes the state for `/debug/spec_budget`, at most every 250 ms.
    fn publish(&mut self, shared: &Shared, running: &[Running]) {
        self.steps += 1;
        if self.viewed.is_some_and(|t| t.elapsed() < Duration::from_millis(250)) {
            return;
        }
        self.viewed = Some(Instant::now());
        let c = self.cost.costs();
        let w = self.cfg.prior_weight;
        let prior_depth = self.prior.tried().len();
        let requests: Vec<serde_json::Value> = running
            .iter()
            .filter(|r| r.speculative)
            .map(|r| {
                let s = &r.session.spec;
                serde_json::json!({
                    "id": r.id,
                    "index": r.index,
                    "budget": r.session.depth_cap,
                    "deepest_proposed": r.deepest,
                    "rows_per_level": r.rows_per_level,
                    "acceptance_by_depth": r.acceptance.rates(r.deepest, &self.prior, w),
                    "predicted_accept_length": r.acceptance.expected_tokens(r.session.depth_cap.unwrap_or(0), &self.prior, w),
                    "verifies": s.spec_verify_ct,
                    "mean_budget": if s.spec_verify_ct > 0 { s.spec_budget_sum as f64 / s.spec_verify_ct as f64 } else { 0.0 },
                    "accept_length": if s.spec_verify_ct > 0 { r.session.tokens.len().saturating_sub(1) as f64 / s.spec_verify_ct as f64 } else { 0.0 },
                })
            })
            .collect();
        let view = serde_json::json!({
            "adaptive": true,
            "steps": self.steps,
            "cost_model_seconds": { "fixed": c.fixed, "per_row": c.per_row, "per_draft_level": c.per_level, "draft_round": c.draft_round },
            "acceptance_prior_by_depth": self.prior.rates(prior_depth, &Acceptance::default(), 0.0),
            "prior_weight": w,
            "decay": self.cfg.decay,
            "probe_every": self.cfg.probe_every,
            "probe_every_hopeless": self.cfg.probe_every_hopeless,
            "running": requests,
        });
        *shared.budget_view.lock().unwrap_or_else(|e| e.into_inner()) = view;
    }

    /// Learns from one step: the rows verified, the times, and each
    /// choice's (depth, accepted, nodes).
    fn learn(&mut self, rows: usize, verify_secs: f64, draft_secs: f64, steps: &mut [(&mut Running, usize, usize, usize)]) {
        let levels = steps.iter().map(|s| s.1).sum();
        self.cost.observe(rows, verify_secs, levels, draft_secs);
        for (r, depth, accepted, nodes) in steps.iter_mut() {
            if !r.speculative {
                continue;
            }
            r.acceptance.observe(*depth, *accepted, self.cfg.decay);
            self.prior.observe(*depth, *accepted, self.cfg.decay);
            if *depth > 0 {
                r.deepest = r.deepest.max(*depth);
                r.rows_per_level = 0.8 * r.rows_per_level + 0.2 * (*nodes as f64 / *depth as f64);
            }
        }
        let c = self.cost.costs();
        metrics::gauge!(m::TARGET_COST_MODEL, "term" => "fixed").set(c.fixed);
        metrics::gauge!(m::TARGET_COST_MODEL, "term" => "per_row").set(c.per_row);
        metrics::gauge!(m::TARGET_COST_MODEL, "term" => "per_draft_level").set(c.per_level);
        metrics::gauge!(m::TARGET_COST_MODEL, "term" => "draft_round").set(c.draft_round);
    }
}

fn run(model: &Model, shared: &Shared) {
    let mut running: Vec<Running> = Vec::new();
    let mut adaptive = shared.adaptive.then(|| Adaptive::start(model));
    // The lane stepped last (`--speculative-overlap`).
    let mut lane = false;
    loop {
        if let Some(why) = shared.fatal() {
            fail_all(shared, &mut running, &why);
            return;
        }
        // 1. Drop requests nobody waits for.
        running.retain(|r| {
            if r.gone() {
                shared.kv_used.fetch_sub(r.reserve, Ordering::AcqRel);
                if r.leave() {
                    shared.forget(&r.id);
                    metrics::counter!(m::TARGET_REQUESTS, "outcome" => "aborted").increment(1);
                    // An Abort RPC ends the stream with CANCELLED, never silently.
                    let _ = r.out.send(Err(tonic::Status::cancelled("aborted")));
                }
                false
            } else {
                true
            }
        });
        // 2. Admit.
        let mut admitted = Vec::new();
        {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            if running.is_empty() && q.is_empty() {
                q = shared.wake.wait_timeout(q, Duration::from_millis(200)).unwrap_or_else(|e| e.into_inner()).0;
            }
            shared.purge_abandoned(&mut q);
            while running.len() + admitted.len() < shared.max_running {
                let Some(front) = q.front() else { break };
                if shared.kv_used() + front.reserve > shared.max_total_tokens {
                    break;
                }
                let j = q.pop_front().expect("front exists");
                shared.kv_used.fetch_add(j.reserve, Ordering::AcqRel);
                admitted.push(j);
            }
            metrics::gauge!(m::TARGET_QUEUE_LENGTH).set(q.len() as f64);
            // Counted as running before the queue lock is released, so a
            // drain never sees an admitted request as neither.
            shared.running.store(running.len() + admitted.len(), Ordering::Release);
        }
        for j in admitted {
            let req = GenerateRequest { prompt_ids: &j.prompt, max_tokens: j.max_tokens, sampling: j.sampling.clone(), stop_ids: &j.stop_ids };
            let n = j.proposers.len();
            // Choice i samples with seed + i, so each is reproducible alone.
            let choices: Vec<_> = j.proposers.into_iter().enumerate().map(|(i, p)| (p, j.sampling.seed.map(|s| s.wrapping_add(i as u64)))).collect();
            match SpecSession::start_many(model, choices, &req) {
                Ok(sessions) => {
                    metrics::counter!(m::TARGET_PREFILL_TOKENS).increment(j.prompt.len() as u64);
                    let siblings = Arc::new(AtomicUsize::new(n));
                    for (index, session) in sessions.into_iter().enumerate() {
                        let mut r = Running {
                            id: j.id.clone(),
                            index: index as u32,
                            siblings: siblings.clone(),
                            session,
                            speculative: j.speculative,
                            fallback: j.fallback.clone(),
                            out: j.out.clone(),
                            cancel: j.cancel.clone(),
                            reserve: j.reserve / n,
                            logprobs_sent: 0,
                            acceptance: Acceptance::default(),
                            deepest: 0,
                            rows_per_level: 1.0,
                            lane: false,
                            seeded: j.sampling.seed.is_some() && !j.sampling.is_greedy(),
                        };
                        let first = r.session.tokens.clone();
                        metrics::counter!(m::TARGET_GENERATED_TOKENS).increment(first.len() as u64);
                        if !first.is_empty() {
                            let logprobs = r.new_logprobs();
                            let _ = r.out.send(Ok(GenerateResponse { token_ids: first, step: None, finished: None, logprobs, index: r.index }));
                        }
                        if r.session.is_finished() {
                            finish(shared, r);
                        } else {
                            running.push(r);
                        }
                    }
                    // What integer division left over is released now.
                    shared.kv_used.fetch_sub(j.reserve % n, Ordering::AcqRel);
                }
                Err(e) => {
                    shared.kv_used.fetch_sub(j.reserve, Ordering::AcqRel);
                    shared.forget(&j.id);
                    metrics::counter!(m::TARGET_REQUESTS, "outcome" => "failed").increment(1);
                    if e.error_type() == "tensor_parallel" {
                        shared.fail_group(&e.to_string());
                    }
                    let _ = j.out.send(Err(TargetError::from(e).into()));
                }
            }
        }
        shared.running.store(running.len(), Ordering::Release);
        metrics::gauge!(m::TARGET_RUNNING).set(running.len() as f64);
        metrics::gauge!(m::TARGET_KV_USED).set(shared.kv_used() as f64);
        if let Some(c) = model.cuda() {
            let (used, total) = c.device().memory();
            metrics::gauge!(m::TARGET_DEVICE_MEMORY_USED).set(used as f64);
            metrics::gauge!(m::TARGET_DEVICE_MEMORY_TOTAL).set(total as f64);
            let free = c.pool.free_pages() * aerie_engine::cuda::kv::PAGE_SIZE;
            metrics::gauge!(m::TARGET_DEVICE_KV_POOL_USED).set(c.pool.slots().saturating_sub(free) as f64);
            metrics::gauge!(m::TARGET_DEVICE_KV_POOL_CAPACITY).set(c.pool.slots() as f64);
        }
        if running.is_empty() {
            continue;
        }
        // 3. One step: for everyone, or under `--speculative-overlap` for
        // one lane while the draft workers draft for the other.
        let mut resting = Vec::new();
        if shared.overlap && running.iter().filter(|r| r.drafts()).count() >= 2 {
            lane = !lane;
            let (now, later) = split_lanes(std::mem::take(&mut running), lane);
            running = now;
            resting = later;
            metrics::counter!(m::TARGET_OVERLAPPED_STEPS).increment(1);
            for r in resting.iter_mut() {
                // A failure here shows again, and is handled, when this
                // session's own step asks for the same tree.
                let _ = r.session.request_ahead(model);
            }
        }
        if let Some(a) = &adaptive {
            a.plan(&mut running);
        }
        // Each session's counters before the step: correct, proposed,
        // verify ms, refused, draft ms, verified nodes.
        let before: Vec<(usize, usize, f64, usize, f64, usize)> = running
            .iter()
            .map(|r| {
                let s = &r.session.spec;
                (s.spec_num_correct_drafts, s.spec_num_proposed_drafts, s.verify_ms, s.spec_refused_drafts, s.draft_ms, s.spec_verified_nodes)
            })
            .collect();
        let batch = running.len();
        let t = Instant::now();
        let result = {
            let mut refs: Vec<&mut SpecSession<'static>> = running.iter_mut().map(|r| &mut r.session).collect();
            step_batch(model, &mut refs)
        };
        metrics::histogram!(m::TARGET_STEP_DURATION).record(t.elapsed().as_secs_f64());
        metrics::histogram!(m::TARGET_BATCH_SIZE).record(batch as f64);
        let news = match result {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("verify step failed: {e}");
                if e.error_type() == "tensor_parallel" {
                    shared.fail_group(&e.to_string());
                }
                running.append(&mut resting);
                fail_all(shared, &mut running, &format!("verify step failed: {e}"));
                continue;
            }
        };
        let verify_secs = running.first().map_or(0.0, |r| (r.session.spec.verify_ms - before[0].2).max(0.0) / 1e3);
        if !running.is_empty() {
            metrics::histogram!(m::TARGET_VERIFY_DURATION).record(verify_secs);
        }
        if let Some(a) = adaptive.as_mut() {
            let mut rows = 0;
            let mut draft_secs = 0.0;
            let mut steps = Vec::with_capacity(running.len());
            for (r, &(c0, p0, _, _, d0, n0)) in running.iter_mut().zip(&before) {
                let s = &r.session.spec;
                let (depth, accepted, nodes) = (s.spec_num_proposed_drafts - p0, s.spec_num_correct_drafts - c0, s.spec_verified_nodes - n0);
                draft_secs += (s.draft_ms - d0).max(0.0) / 1e3;
                rows += 1 + nodes;
                steps.push((r, depth, accepted, nodes));
            }
            a.learn(rows, verify_secs, draft_secs, &mut steps);
            a.publish(shared, &running);
        }
        let mut still = Vec::with_capacity(running.len());
        for ((mut r, new), (c0, p0, _, f0, _, _)) in running.drain(..).zip(news).zip(before) {
            let accepted = r.session.spec.spec_num_correct_drafts - c0;
            let depth = r.session.spec.spec_num_proposed_drafts - p0;
            metrics::counter!(m::TARGET_VERIFY_STEPS).increment(1);
            metrics::counter!(m::TARGET_GENERATED_TOKENS).increment(new.len() as u64);
            if r.speculative {
                metrics::counter!(m::TARGET_DRAFT_TOKENS_PROPOSED).increment(depth as u64);
                metrics::counter!(m::TARGET_DRAFT_TOKENS_ACCEPTED).increment(accepted as u64);
                metrics::counter!(m::TARGET_DRAFT_TOKENS_REFUSED).increment((r.session.spec.spec_refused_drafts - f0) as u64);
                metrics::histogram!(m::TARGET_ACCEPT_LENGTH).record((accepted + 1) as f64);
                for pos in 1..=accepted.min(64) {
                    metrics::counter!(m::TARGET_ACCEPTED_BY_POSITION, "position" => pos.to_string()).increment(1);
                }
            }
            let step = r.speculative.then_some(StepStats { accepted_drafts: accepted as u32, proposed_depth: depth as u32, batch_size: batch as u32 });
            let logprobs = r.new_logprobs();
            if !new.is_empty() && r.out.send(Ok(GenerateResponse { token_ids: new, step, finished: None, logprobs, index: r.index })).is_err() {
                r.cancel.store(true, Ordering::Release);
            }
            if r.session.is_finished() {
                finish(shared, r);
            } else {
                still.push(r);
            }
        }
        running = still;
        running.append(&mut resting);
        shared.running.store(running.len(), Ordering::Release);
    }
}

/// Splits the running requests into those to step now and those to draft
/// for. Requests that draft are in two lanes, first evened out (requests
/// arrive in lane `false` and finish in either) so that they differ by at
/// most one, and lane `lane` steps now; with two or more drafting neither is
/// empty. Requests that do not draft (plain, or fallen back) step every time.
fn split_lanes(mut running: Vec<Running>, lane: bool) -> (Vec<Running>, Vec<Running>) {
    loop {
        let now = running.iter().filter(|r| r.drafts() && r.lane == lane).count();
        let other = running.iter().filter(|r| r.drafts() && r.lane != lane).count();
        if now.abs_diff(other) <= 1 {
            break;
        }
        let donor = if now > other { lane } else { !lane };
        if let Some(r) = running.iter_mut().rev().find(|r| r.drafts() && r.lane == donor) {
            r.lane = !donor;
        }
    }
    running.into_iter().partition(|r| !r.drafts() || r.lane == lane)
}

/// Ends every running choice with an error.
fn fail_all(shared: &Shared, running: &mut Vec<Running>, why: &str) {
    for r in running.drain(..) {
        shared.kv_used.fetch_sub(r.reserve, Ordering::AcqRel);
        if r.leave() {
            shared.forget(&r.id);
            metrics::counter!(m::TARGET_REQUESTS, "outcome" => "failed").increment(1);
        }
        let _ = r.out.send(Err(tonic::Status::internal(why.to_string())));
    }
    shared.running.store(0, Ordering::Release);
}

fn finish(shared: &Shared, mut r: Running) {
    let msg = finished_message(&mut r);
    if r.speculative && r.session.spec.spec_verify_ct > 0 {
        shared.record_tau(r.session.spec.spec_accept_length);
    }
    shared.kv_used.fetch_sub(r.reserve, Ordering::AcqRel);
    if r.leave() {
        shared.forget(&r.id);
        metrics::counter!(m::TARGET_REQUESTS, "outcome" => "finished").increment(1);
    }
    let _ = r.out.send(Ok(msg));
}
