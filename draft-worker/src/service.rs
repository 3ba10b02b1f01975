//! `aerie.v1.DraftService`: the draft worker's gRPC surface.
//!
//! Strategy. Each `Session` stream (one per target worker) gets its own OS
//! thread that handles the stream's messages strictly in order: drafters are
//! synchronous, CPU-bound and keep per-sequence state (their own KV), and
//! in-order handling is what lets the target reuse shared-memory ring space
//! below the `ring_consumed` offset each proposal reports. A session holds
//! one proposer per sequence, built from the worker's single loaded drafter.
//!
//! Bounds. A worker holds at most `max_sessions` sessions and each at most
//! `max_sequences_per_session` sequences; past either cap the least
//! recently used one is evicted (a session, preferring one with no
//! sequences; a sequence, with an error so its target stops speculating on
//! it). A session with no sequences and no message for `idle_timeout` is
//! closed. An evicted or closed session ends its response stream, and the
//! target opens a new one when it next needs it. Both are counted in
//! `aerie_draft_evictions_total{reason}`.
//!
//! Nothing from the wire is trusted: token ids are checked against the
//! vocabulary, feature blocks against the shape the drafter needs and (for
//! the ring) against bounds and checksum. A bad message fails its sequence
//! with a `SessionError`; the session and the worker stay up.

use crate::eagle::{catch_up_many, EagleProposer};
use crate::{DraftError, ProposerFactory};
use aerie_engine::grammar::{ConstraintSpec, Grammar, GrammarCompiler, GrammarState};
use aerie_engine::spec::{FeatureKind, Features, Proposer};
use aerie_engine::Model;
use aerie_proto::metric_names as m;
use aerie_proto::transport::{DeviceRingOffer, FeatureReceiver, TransportError};
use aerie_proto::v1::draft_service_server::DraftService;
use aerie_proto::v1::session_request::Msg;
use aerie_proto::v1::session_response::Msg as Out;
use aerie_proto::v1::{
    DraftInfo, FeaturePayload, HealthRequest, HealthResponse, InfoRequest, Proposal, SessionError,
    SessionReady, SessionRequest, SessionResponse,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// How many sessions and sequences a draft worker keeps, and for how long.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Sessions held at once (`--max-sessions`). Default 64.
    pub max_sessions: usize,
    /// Sequences per session (`--max-sequences-per-session`). Default 256.
    pub max_sequences_per_session: usize,
    /// A session with no sequences and no traffic this long is closed
    /// (`--session-idle-timeout-secs`). Default 300 s.
    pub idle_timeout: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits { max_sessions: 64, max_sequences_per_session: 256, idle_timeout: Duration::from_secs(300) }
    }
}

/// A running session as the registry and the session's thread share it.
struct SessionSlot {
    id: u64,
    /// Milliseconds since the server started, at the last message.
    last_active: AtomicU64,
    sequences: AtomicUsize,
    /// Set to make the session end at its next poll.
    evict: AtomicBool,
}

/// How often a session thread looks at its eviction flag and idle time.
const POLL: Duration = Duration::from_millis(200);

/// The draft worker's gRPC service.
pub struct DraftServer {
    factory: Arc<ProposerFactory>,
    target: Arc<Model>,
    info: DraftInfo,
    limits: SessionLimits,
    sessions: Arc<Mutex<Vec<Arc<SessionSlot>>>>,
    next_session: AtomicU64,
    started: Instant,
    /// Compiles requests' output constraints, so trees hold only what they
    /// admit; without it constraints are ignored here (the target still
    /// prunes and masks).
    grammars: Option<Arc<GrammarCompiler>>,
}

impl DraftServer {
    pub fn new(factory: ProposerFactory, target: Arc<Model>, draft_model: String) -> DraftServer {
        Self::with_limits(factory, target, draft_model, SessionLimits::default())
    }

    pub fn with_limits(factory: ProposerFactory, target: Arc<Model>, draft_model: String, limits: SessionLimits) -> DraftServer {
        let probe = factory.proposer();
        let info = DraftInfo {
            kind: probe.name().to_string(),
            target_fingerprint: target.fingerprint.clone(),
            features: probe.features().to_string(),
            host_id: aerie_proto::transport::host_id(),
            draft_model,
            device_uuid: factory.device().map(|d| d.uuid()).unwrap_or_default(),
        };
        DraftServer {
            factory: Arc::new(factory),
            target,
            info,
            limits,
            sessions: Arc::new(Mutex::new(Vec::new())),
            next_session: AtomicU64::new(1),
            started: Instant::now(),
            grammars: None,
        }
    }

    /// Drafts under requests' output constraints, compiled with `grammars`
    /// (built over the target's tokenizer).
    pub fn with_grammars(mut self, grammars: GrammarCompiler) -> DraftServer {
        self.grammars = Some(Arc::new(grammars));
        self
    }

    /// Registers a new session, evicting the least recently used one when
    /// the worker is full (one with no sequences first).
    fn register(&self) -> Arc<SessionSlot> {
        let mut reg = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        while reg.len() >= self.limits.max_sessions.max(1) {
            let victim = (0..reg.len())
                .min_by_key(|&i| (reg[i].sequences.load(Ordering::Acquire) > 0, reg[i].last_active.load(Ordering::Acquire)))
                .expect("non-empty");
            let v = reg.swap_remove(victim);
            v.evict.store(true, Ordering::Release);
            metrics::counter!(m::DRAFT_EVICTIONS, "reason" => "session_cap").increment(1);
        }
        let slot = Arc::new(SessionSlot {
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            last_active: AtomicU64::new(self.started.elapsed().as_millis() as u64),
            sequences: AtomicUsize::new(0),
            evict: AtomicBool::new(false),
        });
        reg.push(slot.clone());
        slot
    }

    pub fn info(&self) -> &DraftInfo {
        &self.info
    }
}

#[tonic::async_trait]
impl DraftService for DraftServer {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<DraftInfo>, Status> {
        Ok(Response::new(self.info.clone()))
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            status: "serving".into(),
        }))
    }

    type SessionStream = UnboundedReceiverStream<Result<SessionResponse, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
        let (in_tx, in_rx) = std::sync::mpsc::channel::<SessionRequest>();
        tokio::spawn(async move {
            // A transport error or a closed session thread ends the bridge;
            // dropping `in_tx` then ends the thread's loop.
            while let Some(Ok(msg)) = inbound.next().await {
                if in_tx.send(msg).is_err() {
                    break;
                }
            }
        });
        let slot = self.register();
        let session = Session {
            factory: self.factory.clone(),
            target: self.target.clone(),
            expected: self.factory.proposer().features(),
            receiver: FeatureReceiver::inline_only(),
            seqs: HashMap::new(),
            out: out_tx,
            limits: self.limits.clone(),
            registry: self.sessions.clone(),
            slot,
            started: self.started,
            grammars: self.grammars.clone(),
            compiled: Vec::new(),
        };
        std::thread::Builder::new()
            .name("aerie-draft-session".into())
            .spawn(move || session.run(in_rx))
            .map_err(|e| Status::internal(format!("cannot start a session thread: {e}")))?;
        Ok(Response::new(UnboundedReceiverStream::new(out_rx)))
    }
}

/// A sequence-level failure: its label and message.
struct SeqError(&'static str, String);

impl From<DraftError> for SeqError {
    fn from(e: DraftError) -> SeqError {
        SeqError(e.error_type(), e.to_string())
    }
}

impl From<aerie_engine::EngineError> for SeqError {
    fn from(e: aerie_engine::EngineError) -> SeqError {
        SeqError(e.error_type(), e.to_string())
    }
}

/// One sequence's drafter and when it was last used.
struct Seq {
    prop: Box<dyn Proposer>,
    last_used: Instant,
    /// The request's output constraint, following the committed output.
    grammar: Option<GrammarState>,
}

/// Compiled constraints a session keeps for reuse (the choices of one
/// request, and repeated schemas, compile once).
const COMPILED_CACHE: usize = 8;

struct Session {
    factory: Arc<ProposerFactory>,
    target: Arc<Model>,
    expected: FeatureKind,
    receiver: FeatureReceiver,
    seqs: HashMap<u64, Seq>,
    out: UnboundedSender<Result<SessionResponse, Status>>,
    limits: SessionLimits,
    registry: Arc<Mutex<Vec<Arc<SessionSlot>>>>,
    slot: Arc<SessionSlot>,
    started: Instant,
    grammars: Option<Arc<GrammarCompiler>>,
    /// Recently compiled constraints by their wire form, newest last.
    compiled: Vec<(String, Grammar)>,
}

impl Session {
    fn run(mut self, inbound: std::sync::mpsc::Receiver<SessionRequest>) {
        metrics::gauge!(m::DRAFT_SESSIONS).increment(1.0);
        let mut opened = false;
        // A message read while gathering a batch of proposals, handled next.
        let mut carry: Option<SessionRequest> = None;
        loop {
            if self.slot.evict.load(Ordering::Acquire) {
                self.error(0, "session_evicted", "the draft worker holds too many sessions; this least recently used one was closed".into());
                break;
            }
            let req = match carry.take().map_or_else(|| inbound.recv_timeout(POLL), Ok) {
                Ok(r) => r,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let now_ms = self.started.elapsed().as_millis() as u64;
                    let quiet = Duration::from_millis(now_ms.saturating_sub(self.slot.last_active.load(Ordering::Acquire)));
                    if self.seqs.is_empty() && quiet >= self.limits.idle_timeout {
                        metrics::counter!(m::DRAFT_EVICTIONS, "reason" => "idle").increment(1);
                        self.error(0, "session_idle", format!("no sequences and no messages for {:?}; session closed", self.limits.idle_timeout));
                        break;
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            };
            self.slot.last_active.store(self.started.elapsed().as_millis() as u64, Ordering::Release);
            let msg = match req.msg {
                Some(m) => m,
                None => {
                    self.error(
                        0,
                        "empty_message",
                        "a session message with no content".into(),
                    );
                    continue;
                }
            };
            match msg {
                Msg::Open(o) => {
                    if o.target_fingerprint != self.target.fingerprint {
                        let why = format!(
                            "this draft worker serves target {}, not {}",
                            self.target.fingerprint, o.target_fingerprint
                        );
                        self.error(0, "fingerprint_mismatch", why);
                        break;
                    }
                    // The device ring first (the target offers it only for
                    // CUDA IPC), then the shared-memory ring; a ring that
                    // cannot be opened is logged and the next tried, so the
                    // session still opens (inline at worst).
                    if !o.device_ring_handle.is_empty() {
                        let offer = DeviceRingOffer { handle: o.device_ring_handle.clone(), capacity: o.device_ring_capacity, uuid: o.device_uuid.clone() };
                        let opened = match self.factory.device() {
                            Some(dev) => FeatureReceiver::open_device(dev.clone(), &offer),
                            None => Err(TransportError::OtherDevice { ours: "none (this drafter runs on the CPU)".into(), theirs: offer.uuid.clone() }),
                        };
                        match opened {
                            Ok(r) => self.receiver = r,
                            Err(e) => tracing::warn!("device feature ring refused: {e}"),
                        }
                    }
                    if !self.receiver.has_device_ring() && !o.shm_path.is_empty() {
                        match FeatureReceiver::open(std::path::Path::new(&o.shm_path), o.shm_capacity) {
                            Ok(r) => {
                                self.receiver = r;
                                metrics::gauge!(m::DRAFT_SHM_BYTES).increment(self.receiver.ring_bytes() as f64);
                            }
                            Err(e) => tracing::warn!("shared-memory feature ring refused: {e}"),
                        }
                    }
                    opened = true;
                    let ready = SessionReady { ring_mapped: self.receiver.has_ring(), device_ring_mapped: self.receiver.has_device_ring() };
                    let _ = self.out.send(Ok(SessionResponse { msg: Some(Out::Ready(ready)) }));
                }
                _ if !opened => {
                    self.error(
                        0,
                        "session_not_open",
                        "the first session message must be `open`".into(),
                    );
                    break;
                }
                Msg::Begin(b) => {
                    let r = self.begin(b.seq_id, &b.tokens, b.features.as_ref(), b.constraint.as_ref());
                    self.report(b.seq_id, r);
                }
                Msg::Commit(c) => {
                    let r = self.commit(c.seq_id, &c.tokens, c.features.as_ref());
                    self.report(c.seq_id, r);
                }
                Msg::Propose(p) => {
                    // A target asks for all its requests' proposals at once:
                    // those already queued are drafted together.
                    let mut batch = vec![p];
                    loop {
                        match inbound.try_recv() {
                            Ok(SessionRequest { msg: Some(Msg::Propose(q)) }) => batch.push(q),
                            Ok(other) => {
                                carry = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    metrics::histogram!(m::DRAFT_PROPOSE_BATCH).record(batch.len() as f64);
                    if batch.len() > 1 {
                        self.catch_up_together(&batch);
                    }
                    for p in batch {
                        let r = self.propose(p.seq_id, p.max_depth as usize);
                        self.report(p.seq_id, r);
                    }
                }
                Msg::Release(r) => self.forget(r.seq_id),
            }
            self.slot.sequences.store(self.seqs.len(), Ordering::Release);
        }
        metrics::gauge!(m::DRAFT_SEQUENCES).decrement(self.seqs.len() as f64);
        metrics::gauge!(m::DRAFT_SESSIONS).decrement(1.0);
        metrics::gauge!(m::DRAFT_SHM_BYTES).decrement(self.receiver.ring_bytes() as f64);
        let id = self.slot.id;
        self.registry.lock().unwrap_or_else(|e| e.into_inner()).retain(|s| s.id != id);
    }

    /// Runs the catch-ups of a batch's EAGLE sequences in one head pass
    /// ([`catch_up_many`]); each proposal then finds its draft caught up.
    /// On an error nothing is lost: each proposal catches up alone and
    /// reports its own error.
    fn catch_up_together(&mut self, batch: &[aerie_proto::v1::ProposeRequest]) {
        let ids: std::collections::HashSet<u64> = batch.iter().map(|p| p.seq_id).collect();
        let mut props: Vec<&mut EagleProposer> = self
            .seqs
            .iter_mut()
            .filter(|(id, _)| ids.contains(id))
            .filter_map(|(_, s)| s.prop.as_any_mut()?.downcast_mut::<EagleProposer>())
            .collect();
        if props.len() > 1 {
            if let Err(e) = catch_up_many(&mut props) {
                tracing::warn!("batched catch-up failed ({e}); drafting one sequence at a time");
            }
        }
    }

    fn forget(&mut self, seq_id: u64) {
        if self.seqs.remove(&seq_id).is_some() {
            metrics::gauge!(m::DRAFT_SEQUENCES).decrement(1.0);
        }
    }

    /// Makes room for one more sequence by evicting the least recently used.
    fn make_room(&mut self) {
        while self.seqs.len() >= self.limits.max_sequences_per_session.max(1) {
            let Some((&victim, _)) = self.seqs.iter().min_by_key(|(_, s)| s.last_used) else { return };
            self.forget(victim);
            metrics::counter!(m::DRAFT_EVICTIONS, "reason" => "sequence_cap").increment(1);
            self.error(victim, "sequence_evicted", format!("the session holds {} sequences, the most allowed; this least recently used one was dropped", self.limits.max_sequences_per_session));
        }
    }

    fn error(&self, seq_id: u64, error_type: &'static str, message: String) {
        metrics::counter!(m::DRAFT_ERRORS, "error_type" => error_type).increment(1);
        tracing::warn!(seq_id, error_type, "{message}");
        let _ = self.out.send(Ok(SessionResponse {
            msg: Some(Out::Error(SessionError {
                seq_id,
                message,
                error_type: error_type.into(),
            })),
        }));
    }

    /// A failed sequence is forgotten: its drafter state is unknown.
    fn report(&mut self, seq_id: u64, r: Result<(), SeqError>) {
        if let Err(SeqError(kind, msg)) = r {
            self.forget(seq_id);
            self.error(seq_id, kind, msg);
        }
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<(), SeqError> {
        let vocab = self.target.config.vocab_size as u32;
        match tokens.iter().find(|&&t| t >= vocab) {
            Some(t) => Err(SeqError(
                "bad_token",
                format!("token {t} is outside the vocabulary (size {vocab})"),
            )),
            None => Ok(()),
        }
    }

    /// Decodes a feature block and checks it has `rows` rows of the width
    /// this drafter needs.
    fn features(&mut self, p: Option<&FeaturePayload>, rows: usize) -> Result<Features, SeqError> {
        let h = self.target.config.hidden_size;
        let width = match &self.expected {
            FeatureKind::None => return Ok(Features::empty()),
            FeatureKind::Hidden => h,
            FeatureKind::Aux(l) => h * l.len(),
        };
        let p = p.ok_or_else(|| SeqError("bad_features", "features missing".into()))?;
        let (w, data, via) = self
            .receiver
            .decode(p)
            .map_err(|e| SeqError(e.error_type(), e.to_string()))?;
        metrics::counter!(m::DRAFT_FEATURE_BYTES, "transport" => via)
            .increment((data.len() * 4) as u64);
        if w != width || data.len() != rows * width {
            return Err(SeqError(
                "bad_features",
                format!(
                    "features are {} × {w}; {rows} × {width} expected",
                    data.len().checked_div(w).unwrap_or(0)
                ),
            ));
        }
        Ok(Features { width, data })
    }

    fn begin(
        &mut self,
        seq_id: u64,
        tokens: &[u32],
        p: Option<&FeaturePayload>,
        constraint: Option<&aerie_proto::v1::Constraint>,
    ) -> Result<(), SeqError> {
        if tokens.len() < 2 {
            return Err(SeqError(
                "bad_sequence",
                "begin needs the prompt and the first generated token".into(),
            ));
        }
        if self.seqs.contains_key(&seq_id) {
            return Err(SeqError(
                "duplicate_sequence",
                format!("sequence {seq_id} already exists"),
            ));
        }
        self.check_tokens(tokens)?;
        let feats = self.features(p, tokens.len() - 1)?;
        let mut prop = self.factory.proposer();
        prop.begin(tokens, &feats)?;
        let grammar = constraint.and_then(|c| self.grammar_state(c, tokens[tokens.len() - 1]));
        self.make_room();
        self.seqs.insert(seq_id, Seq { prop, last_used: Instant::now(), grammar });
        metrics::gauge!(m::DRAFT_SEQUENCES).increment(1.0);
        Ok(())
    }

    fn commit(
        &mut self,
        seq_id: u64,
        tokens: &[u32],
        p: Option<&FeaturePayload>,
    ) -> Result<(), SeqError> {
        if !self.seqs.contains_key(&seq_id) {
            return Err(SeqError(
                "unknown_sequence",
                format!("no sequence {seq_id}"),
            ));
        }
        if tokens.is_empty() {
            return Err(SeqError("bad_sequence", "commit without tokens".into()));
        }
        self.check_tokens(tokens)?;
        let feats = self.features(p, tokens.len())?;
        let seq = self.seqs.get_mut(&seq_id).expect("checked above");
        seq.last_used = Instant::now();
        seq.prop.commit(tokens, &feats)?;
        if let Some(g) = seq.grammar.as_mut() {
            g.commit(tokens);
        }
        Ok(())
    }

    /// A grammar state for `c` that has consumed the first generated
    /// token, or `None` (drafting unconstrained) when this worker cannot
    /// compile it: the target masks and prunes anyway, so that costs only
    /// acceptance.
    fn grammar_state(&mut self, c: &aerie_proto::v1::Constraint, first: u32) -> Option<GrammarState> {
        use aerie_proto::v1::constraint::Kind;
        let compiler = self.grammars.clone()?;
        let key = format!("{c:?}");
        let grammar = match self.compiled.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                let hit = self.compiled.remove(i);
                self.compiled.push(hit.clone());
                hit.1
            }
            None => {
                let spec = match c.kind.clone()? {
                    Kind::JsonObject(_) => ConstraintSpec::JsonObject,
                    Kind::JsonSchema(s) => ConstraintSpec::JsonSchema(serde_json::from_str(&s).ok()?),
                    Kind::Regex(r) => ConstraintSpec::Regex(r),
                    Kind::Ebnf(g) => ConstraintSpec::Ebnf(g),
                };
                let g = compiler.compile(&spec).map_err(|e| tracing::warn!("drafting unconstrained: cannot compile the request's constraint: {e}")).ok()?;
                if self.compiled.len() >= COMPILED_CACHE {
                    self.compiled.remove(0);
                }
                self.compiled.push((key, g.clone()));
                g
            }
        };
        let mut st = grammar.start().ok()?;
        st.commit(&[first]);
        Some(st)
    }

    fn propose(&mut self, seq_id: u64, max_depth: usize) -> Result<(), SeqError> {
        let consumed = self.receiver.consumed();
        let seq = self
            .seqs
            .get_mut(&seq_id)
            .ok_or_else(|| SeqError("unknown_sequence", format!("no sequence {seq_id}")))?;
        let t = Instant::now();
        seq.last_used = t;
        let tree = match seq.grammar.as_mut() {
            Some(g) => seq.prop.propose_within(max_depth, &mut |path, t| g.allows(path, t))?,
            None => seq.prop.propose(max_depth)?,
        };
        let took = t.elapsed();
        metrics::histogram!(m::DRAFT_PROPOSE_DURATION).record(took.as_secs_f64());
        let parents = tree
            .parents
            .iter()
            .map(|p| p.map_or(-1, |x| x as i32))
            .collect();
        let proposal = Proposal {
            seq_id,
            tokens: tree.tokens,
            parents,
            ring_consumed: consumed,
            draft_us: took.as_micros() as u64,
        };
        let _ = self.out.send(Ok(SessionResponse {
            msg: Some(Out::Proposal(proposal)),
        }));
        Ok(())
    }
}
