//! `aerie.v1.TargetService`: validation, draft pairing and admission. The
//! work itself happens on the scheduler thread.

use crate::config::TargetConfig;
use crate::error::TargetError;
use crate::remote_draft::DraftLink;
use crate::scheduler::{self, Job, Shared, TREE_SLACK};
use aerie_engine::spec::{NoProposer, Proposer};
use aerie_engine::{ConstraintSpec, Engine, GrammarCompiler, Model, Processors, SamplingParams};
use aerie_proto::v1::constraint::Kind as ConstraintKind;
use aerie_proto::metric_names as m;
use aerie_proto::v1::target_service_server::TargetService;
use aerie_proto::v1::{
    AbortRequest, AbortResponse, GenerateRequest, GenerateResponse, HealthRequest, HealthResponse, InfoRequest, LoadRequest, LoadResponse, TargetInfo,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};

/// Most choices (`n`) one request may ask for.
pub const MAX_CHOICES: usize = 32;

/// Most `top_logprobs` a request may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// Default `max_tokens` when a request leaves it unset.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// The session to one draft address, if open.
type DraftSlot = Arc<tokio::sync::Mutex<Option<Arc<DraftLink>>>>;

/// The target worker's gRPC service.
pub struct TargetServer {
    model: Arc<Model>,
    tokenizer_hash: String,
    eos_ids: Vec<u32>,
    cfg: TargetConfig,
    shared: Arc<Shared>,
    /// One slot per draft address. The map lock is held only to find a
    /// slot; connecting holds just that address's slot, so a dead draft
    /// worker's connect timeout never delays requests paired elsewhere.
    drafts: tokio::sync::Mutex<HashMap<String, DraftSlot>>,
    host_id: String,
    next_id: AtomicU64,
    /// Compiles requests' output constraints over the model's tokenizer.
    grammars: Arc<GrammarCompiler>,
}

impl TargetServer {
    /// Starts the scheduler thread for `engine`'s model.
    pub fn start(engine: &Engine, cfg: TargetConfig) -> std::io::Result<TargetServer> {
        let shared = Shared::new(&cfg);
        let eos = engine.tokenizer.eos_ids.first().copied().unwrap_or(0);
        let grammars = GrammarCompiler::new(&engine.tokenizer, eos).map_err(|e| std::io::Error::other(format!("building the constrained-decoding token trie: {e}")))?;
        scheduler::spawn(engine.model.clone(), shared.clone())?;
        Ok(TargetServer {
            model: engine.model.clone(),
            tokenizer_hash: engine.tokenizer.hash().to_string(),
            eos_ids: engine.tokenizer.eos_ids.clone(),
            cfg,
            shared,
            drafts: tokio::sync::Mutex::new(HashMap::new()),
            host_id: aerie_proto::transport::host_id(),
            next_id: AtomicU64::new(1),
            grammars: Arc::new(grammars),
        })
    }

    /// The scheduler state, for draining and load reports.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The session to `addr`, opened on first use and reopened when lost.
    async fn draft_link(&self, addr: &str) -> Result<Arc<DraftLink>, String> {
        let slot = self.drafts.lock().await.entry(addr.to_string()).or_default().clone();
        // Requests for the same address wait for one connect, not one each.
        let mut link = slot.lock().await;
        if let Some(l) = link.as_ref().filter(|l| l.is_alive()) {
            return Ok(l.clone());
        }
        *link = None;
        let c = &self.model.config;
        let device = self.model.cuda().map(|m| m.device());
        let fresh = DraftLink::connect(addr, &self.model.fingerprint, c.num_layers, c.vocab_size, device, &self.cfg).await?;
        *link = Some(fresh.clone());
        Ok(fresh)
    }

    fn validate(&self, r: &GenerateRequest) -> Result<(usize, SamplingParams), TargetError> {
        let ctx = self.model.config.max_position_embeddings;
        let vocab = self.model.config.vocab_size as u32;
        if r.prompt_ids.is_empty() {
            return Err(TargetError::InvalidRequest("prompt_ids is empty".into()));
        }
        if r.prompt_ids.len() >= ctx {
            return Err(TargetError::InvalidRequest(format!("prompt has {} tokens; the context holds {ctx}, and one must be left to generate", r.prompt_ids.len())));
        }
        if let Some((i, t)) = r.prompt_ids.iter().enumerate().find(|(_, &t)| t >= vocab) {
            return Err(TargetError::InvalidRequest(format!("prompt_ids[{i}] = {t} is outside the vocabulary (size {vocab})")));
        }
        if let Some(t) = r.stop_ids.iter().find(|&&t| t >= vocab) {
            return Err(TargetError::InvalidRequest(format!("stop id {t} is outside the vocabulary (size {vocab})")));
        }
        let max_tokens = r.max_tokens.map(|x| x as usize).unwrap_or(DEFAULT_MAX_TOKENS);
        let s = r.sampling.clone().unwrap_or_default();
        let d = SamplingParams::default();
        let sampling = SamplingParams {
            temperature: s.temperature.unwrap_or(d.temperature),
            top_p: s.top_p.unwrap_or(d.top_p),
            top_k: s.top_k.map(|x| x as usize).unwrap_or(d.top_k),
            min_p: s.min_p.unwrap_or(d.min_p),
            seed: s.seed,
            processors: Processors {
                presence_penalty: s.presence_penalty.unwrap_or(0.0),
                frequency_penalty: s.frequency_penalty.unwrap_or(0.0),
                repetition_penalty: s.repetition_penalty.unwrap_or(1.0),
                logit_bias: {
                    let mut b: Vec<(u32, f32)> = s.logit_bias.iter().map(|(&t, &v)| (t, v)).collect();
                    b.sort_by_key(|x| x.0);
                    b
                },
                min_tokens: s.min_tokens.unwrap_or(0) as usize,
            },
            logprobs: if r.logprobs {
                if r.top_logprobs > MAX_TOP_LOGPROBS {
                    return Err(TargetError::InvalidRequest(format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {}", r.top_logprobs)));
                }
                Some(r.top_logprobs as usize)
            } else {
                None
            },
            grammar: None,
        };
        sampling.validate().map_err(TargetError::InvalidRequest)?;
        sampling.processors.validate(vocab as usize).map_err(TargetError::InvalidRequest)?;
        Ok((max_tokens, sampling))
    }
}

#[tonic::async_trait]
impl TargetService for TargetServer {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<TargetInfo>, Status> {
        let c = &self.model.config;
        Ok(Response::new(TargetInfo {
            model_id: self.cfg.model_id.clone(),
            model_fingerprint: self.model.fingerprint.clone(),
            context_length: c.max_position_embeddings as u32,
            tokenizer_hash: self.tokenizer_hash.clone(),
            supported_draft_kinds: ["eagle", "eagle3", "ngram", "standalone"].map(String::from).to_vec(),
            vocab_size: c.vocab_size as u32,
            host_id: self.host_id.clone(),
        }))
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        if self.shared.is_draining() {
            return Err(Status::unavailable("draining"));
        }
        Ok(Response::new(HealthResponse { status: "serving".into() }))
    }

    type GenerateStream = UnboundedReceiverStream<Result<GenerateResponse, Status>>;

    async fn generate(&self, request: Request<GenerateRequest>) -> Result<Response<Self::GenerateStream>, Status> {
        let r = request.into_inner();
        if self.shared.is_draining() {
            return Err(TargetError::Draining.into());
        }
        let (max_tokens, mut sampling) = self.validate(&r)?;
        if let Some(kind) = r.constraint.as_ref().and_then(|c| c.kind.clone()) {
            let spec = match kind {
                ConstraintKind::JsonObject(_) => ConstraintSpec::JsonObject,
                ConstraintKind::JsonSchema(s) => ConstraintSpec::JsonSchema(
                    serde_json::from_str(&s).map_err(|e| TargetError::InvalidRequest(format!("the JSON Schema is not valid JSON: {e}")))?,
                ),
                ConstraintKind::Regex(s) => ConstraintSpec::Regex(s),
                ConstraintKind::Ebnf(s) => ConstraintSpec::Ebnf(s),
            };
            // Compiling can take milliseconds; keep it off the async workers.
            let compiler = self.grammars.clone();
            let grammar = tokio::task::spawn_blocking(move || compiler.compile(&spec))
                .await
                .map_err(|e| Status::internal(format!("compiling the constraint: {e}")))?
                .map_err(|e| TargetError::InvalidRequest(format!("invalid constraint: {e}")))?;
            sampling.grammar = Some(grammar);
        }
        let ctx = self.model.config.max_position_embeddings;
        let n = r.n.max(1) as usize;
        if n > MAX_CHOICES {
            return Err(TargetError::InvalidRequest(format!("n = {n} choices; at most {MAX_CHOICES} are allowed")).into());
        }
        let reserve = ((r.prompt_ids.len() + max_tokens).min(ctx) + TREE_SLACK) * n;
        if reserve > self.shared.max_total_tokens() {
            return Err(TargetError::InvalidRequest(format!(
                "the request needs {reserve} KV tokens ((prompt + max_tokens + tree slack) × n = {n}); this worker's budget is {}",
                self.shared.max_total_tokens()
            ))
            .into());
        }
        let fallback = Arc::new(AtomicBool::new(false));
        let speculative = !r.draft_worker.is_empty();
        // One proposer per choice: each is its own sequence on the draft worker.
        let proposers: Vec<Box<dyn Proposer>> = if speculative && !self.model.batch_invariant() {
            // Library GEMMs (`--gemm-mode library`): a row's logits depend on
            // its batch, so verified drafts would not give plain decoding's
            // tokens. This worker decodes plainly instead.
            metrics::counter!(m::TARGET_DRAFT_FALLBACKS, "reason" => "not_batch_invariant").increment(1);
            fallback.store(true, Ordering::Release);
            (0..n).map(|_| Box::new(NoProposer::default()) as Box<dyn Proposer>).collect()
        } else if speculative {
            match self.draft_link(&r.draft_worker).await {
                Ok(link) => (0..n).map(|_| Box::new(link.proposer(fallback.clone(), r.constraint.clone())) as Box<dyn Proposer>).collect(),
                Err(e) => {
                    tracing::warn!("no speculation for this request: {e}");
                    metrics::counter!(m::TARGET_DRAFT_FALLBACKS, "reason" => "connect").increment(1);
                    fallback.store(true, Ordering::Release);
                    (0..n).map(|_| Box::new(NoProposer::default()) as Box<dyn Proposer>).collect()
                }
            }
        } else {
            (0..n).map(|_| Box::new(NoProposer::default()) as Box<dyn Proposer>).collect()
        };
        let id = if r.request_id.is_empty() { format!("req-{}", self.next_id.fetch_add(1, Ordering::Relaxed)) } else { r.request_id };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let job = Job {
            id,
            prompt: r.prompt_ids,
            max_tokens,
            sampling,
            stop_ids: {
                let mut stop = r.stop_ids;
                if !r.ignore_eos {
                    stop.extend(self.eos_ids.iter().filter(|e| !stop.contains(e)).copied().collect::<Vec<_>>());
                }
                stop
            },
            proposers,
            speculative,
            fallback,
            out: tx,
            cancel: Arc::new(AtomicBool::new(false)),
            reserve,
        };
        self.shared.submit(job)?;
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn abort(&self, request: Request<AbortRequest>) -> Result<Response<AbortResponse>, Status> {
        Ok(Response::new(AbortResponse { found: self.shared.abort(&request.into_inner().request_id) }))
    }

    async fn get_load(&self, _: Request<LoadRequest>) -> Result<Response<LoadResponse>, Status> {
        Ok(Response::new(LoadResponse {
            running: self.shared.running() as u32,
            waiting: self.shared.waiting() as u32,
            kv_tokens_used: self.shared.kv_used() as u64,
            kv_tokens_total: self.shared.max_total_tokens() as u64,
            mean_accept_length: self.shared.mean_tau(),
        }))
    }
}
