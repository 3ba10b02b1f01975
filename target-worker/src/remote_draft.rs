//! The target's side of a draft session.
//!
//! Strategy. One [`DraftLink`] per draft worker address: a gRPC
//! `DraftService.Session` stream opened once and shared by every request that
//! names that worker. Each request gets a [`RemoteProposer`], which
//! implements the engine's `Proposer` trait by sending Begin / Commit /
//! Propose / Release messages tagged with its sequence id; a reader task
//! routes each `Proposal` back to the proposer that asked.
//!
//! Commits are fire-and-forget; only `propose` waits. The scheduler asks all
//! of a step's proposers first (`request_proposal`), then collects.
//!
//! Deferred commits. A request the adaptive budget holds at depth 0 drafts
//! nothing for many steps, and the draft worker only buffers what it is
//! sent until the next proposal anyway. So a proposer keeps its commits
//! (tokens and feature rows) and sends them as one message just before its
//! next `Propose`, or when [`MAX_DEFERRED_TOKENS`] have gathered: a request
//! at depth 0 costs no message, no ring write and no wake-up of the draft
//! worker per step.
//!
//! Failure. Any trouble — the stream ends (the draft worker died), an error
//! for the sequence, a malformed tree, no answer within `propose_timeout` —
//! switches that request to root-only trees for the rest of its life. A
//! root-only tree makes the verify step a plain decode step, so greedy output
//! is unchanged and sampling keeps the target distribution. Each switch is
//! counted in `aerie_target_draft_fallbacks_total{reason}`.
//!
//! Lifetime. A link that fails (stream error, a proposal past the timeout)
//! is closed on this side at once: its request stream ends and its reader
//! stops, so the draft worker ends the session and frees every sequence in
//! it, even if it was frozen when the link gave up. Nothing waits on a dead
//! link; the next request opens a fresh one.
//!
//! Features. The session's open offers a CUDA IPC device ring when the draft
//! worker reports the target's GPU (`--feature-transport auto|cuda-ipc`) and
//! a shared-memory ring when it reports the same host; the connect waits for
//! the draft's `ready`, which says which it mapped, and sends every block
//! through that one (inline when neither). The shared-memory ring's name is
//! unlinked at once, the unused ring freed.

use crate::config::{FeatureTransportMode, TargetConfig};
use aerie_engine::spec::{DraftTree, FeatureKind, Features, Proposer};
use aerie_engine::{EngineError, Result};
use aerie_proto::metric_names as m;
use aerie_proto::transport::{host_id, CudaIpcSender, FeatureSender, InlineSender, ShmRingSender};
use aerie_proto::v1::draft_service_client::DraftServiceClient;
use aerie_proto::v1::session_request::Msg;
use aerie_proto::v1::session_response::Msg as Reply;
use aerie_proto::v1::{InfoRequest, Proposal, ProposeRequest, SequenceBegin, SequenceCommit, SequenceRelease, SessionOpen, SessionRequest, SessionResponse};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// Most tree nodes a proposal may hold: the KV slack each request reserves.
pub const MAX_TREE_NODES: usize = crate::scheduler::TREE_SLACK;

/// Most committed tokens a proposer holds back before it sends them without
/// waiting for a proposal: bounds the memory a long stretch at depth 0 holds
/// (64 rows of EAGLE-3's three aux layers at a hidden size of 4,096 is 3 MiB)
/// and the size of the message that catches the draft up.
pub const MAX_DEFERRED_TOKENS: usize = 64;

/// What a proposer receives from the reader task.
enum Answer {
    Tree(Proposal),
    Failed(String),
}

/// One session with one draft worker.
pub struct DraftLink {
    pub addr: String,
    /// The session's request stream; taken (ending the stream) on close.
    tx: Mutex<Option<mpsc::UnboundedSender<SessionRequest>>>,
    routes: Mutex<HashMap<u64, std_mpsc::Sender<Answer>>>,
    alive: AtomicBool,
    /// Wakes the reader task when the link is closed from this side.
    closed: tokio::sync::Notify,
    sender: Arc<dyn FeatureSender>,
    features: FeatureKind,
    next_seq: AtomicU64,
    propose_timeout: Duration,
    /// Token ids in proposals must be below this.
    vocab_size: usize,
}

impl DraftLink {
    /// Connects, checks the draft was built for this target, and opens the session.
    /// `device` is the target's GPU, when it has one: a draft on the same
    /// GPU gets the features through a CUDA IPC ring.
    pub async fn connect(
        addr: &str,
        fingerprint: &str,
        num_layers: usize,
        vocab_size: usize,
        device: Option<&Arc<dyn aerie_kernels::cuda::device::Device>>,
        cfg: &TargetConfig,
    ) -> std::result::Result<Arc<DraftLink>, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(addr.to_string())
            .map_err(|e| format!("bad draft worker address `{addr}`: {e}"))?
            .connect_timeout(cfg.draft_connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(aerie_proto::KEEPALIVE_INTERVAL)
            .keep_alive_timeout(aerie_proto::KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        // One deadline for the whole open: connect, Info, Session, ready.
        let deadline = tokio::time::Instant::now() + cfg.draft_connect_timeout;
        let channel = tokio::time::timeout_at(deadline, endpoint.connect())
            .await
            .map_err(|_| format!("draft worker {addr}: connect timed out"))?
            .map_err(|e| format!("draft worker {addr}: {e}"))?;
        let mut client = DraftServiceClient::new(channel)
            .max_decoding_message_size(aerie_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(aerie_proto::MAX_MESSAGE_BYTES);
        let info = tokio::time::timeout_at(deadline, client.info(InfoRequest {}))
            .await
            .map_err(|_| format!("draft worker {addr}: Info timed out"))?
            .map_err(|e| format!("draft worker {addr}: Info: {}", e.message()))?
            .into_inner();
        if info.target_fingerprint != fingerprint {
            return Err(format!("draft worker {addr} was built for target {} but this worker serves {fingerprint}", info.target_fingerprint));
        }
        let features: FeatureKind = info.features.parse().map_err(|e| format!("draft worker {addr}: {e}"))?;
        if let FeatureKind::Aux(l) = &features {
            if l.iter().any(|&x| x >= num_layers) {
                return Err(format!("draft worker {addr} wants aux layers {l:?}; the target has {num_layers}"));
            }
        }
        // Rings offered to the draft: it opens the device ring if it can,
        // else the shared-memory one, and its `ready` says which.
        let same_host = info.host_id == host_id();
        let wants_features = features != FeatureKind::None;
        let on_same_gpu = device.as_ref().is_some_and(|d| !info.device_uuid.is_empty() && info.device_uuid == d.uuid());
        let offer_device = wants_features
            && match cfg.feature_transport {
                FeatureTransportMode::Auto => same_host && on_same_gpu,
                FeatureTransportMode::CudaIpc => device.is_some(),
                FeatureTransportMode::Shm | FeatureTransportMode::Inline => false,
            };
        let offer_shm = wants_features
            && match cfg.feature_transport {
                FeatureTransportMode::Auto | FeatureTransportMode::CudaIpc => same_host,
                FeatureTransportMode::Shm => true,
                FeatureTransportMode::Inline => false,
            };
        let device_ring = match (offer_device, device) {
            (true, Some(dev)) => match CudaIpcSender::create(dev.clone(), cfg.shm_ring_bytes) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!("device feature ring unavailable ({e}); offering shared memory");
                    None
                }
            },
            _ => None,
        };
        let shm_ring = if offer_shm {
            match ShmRingSender::create(std::path::Path::new("/dev/shm"), cfg.shm_ring_bytes) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!("shared-memory ring unavailable ({e})");
                    None
                }
            }
        } else {
            None
        };
        let (shm_path, shm_capacity) = shm_ring.as_ref().and_then(|r| r.ring()).unwrap_or_default();
        let offer = device_ring.as_ref().and_then(|r| r.device_ring());
        let (tx, rx) = mpsc::unbounded_channel();
        let open = SessionOpen {
            target_fingerprint: fingerprint.to_string(),
            shm_path,
            shm_capacity,
            device_ring_handle: offer.as_ref().map(|o| o.handle.clone()).unwrap_or_default(),
            device_ring_capacity: offer.as_ref().map_or(0, |o| o.capacity),
            device_uuid: offer.map(|o| o.uuid).unwrap_or_default(),
        };
        tx.send(SessionRequest { msg: Some(Msg::Open(open)) }).map_err(|_| "session channel closed".to_string())?;
        let mut responses = tokio::time::timeout_at(deadline, client.session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)))
            .await
            .map_err(|_| format!("draft worker {addr}: Session timed out"))?
            .map_err(|e| format!("draft worker {addr}: Session: {}", e.message()))?
            .into_inner();
        // The draft's first answer says which ring it mapped.
        let ready = match tokio::time::timeout_at(deadline, responses.next()).await {
            Err(_) => return Err(format!("draft worker {addr}: no answer to the session's open")),
            Ok(Some(Ok(SessionResponse { msg: Some(Reply::Ready(r)) }))) => r,
            Ok(Some(Ok(SessionResponse { msg: Some(Reply::Error(e)) }))) => return Err(format!("draft worker {addr}: {} ({})", e.message, e.error_type)),
            Ok(Some(Ok(other))) => return Err(format!("draft worker {addr}: expected ready, got {other:?}")),
            Ok(Some(Err(status))) => return Err(format!("draft worker {addr}: Session: {}", status.message())),
            Ok(None) => return Err(format!("draft worker {addr}: the session ended at its open")),
        };
        let sender: Arc<dyn FeatureSender> = match (device_ring, shm_ring) {
            (Some(d), _) if ready.device_ring_mapped => d,
            (d, Some(r)) if ready.ring_mapped => {
                if d.is_some() {
                    tracing::warn!(addr, "the draft worker could not open the device ring (see its log); features go through shared memory");
                }
                r.peer_mapped();
                r
            }
            (d, r) => {
                if d.is_some() || r.is_some() {
                    tracing::warn!(addr, "the draft worker mapped no feature ring (see its log); features go inline");
                }
                Arc::new(InlineSender)
            }
        };
        let link = Arc::new(DraftLink {
            addr: addr.to_string(),
            tx: Mutex::new(Some(tx)),
            routes: Mutex::new(HashMap::new()),
            alive: AtomicBool::new(true),
            closed: tokio::sync::Notify::new(),
            sender,
            features,
            next_seq: AtomicU64::new(1),
            propose_timeout: cfg.propose_timeout,
            vocab_size,
        });
        tracing::info!(addr, transport = link.sender.name(), "draft session open");
        metrics::gauge!(m::TARGET_DRAFT_SESSIONS).increment(1.0);
        metrics::gauge!(m::TARGET_DRAFT_SESSION_TRANSPORT, "transport" => link.sender.name()).increment(1.0);
        metrics::gauge!(m::TARGET_SHM_BYTES).increment(link.ring_bytes() as f64);
        tokio::spawn(read_answers(link.clone(), responses));
        Ok(link)
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn ring_bytes(&self) -> u64 {
        self.sender.ring().map_or(0, |r| r.1)
    }

    /// Closes the link: the session's request stream ends (the draft then
    /// frees the session and its sequences), the reader stops, and every
    /// waiting proposer wakes with a disconnect.
    fn mark_dead(&self, why: &str) {
        if self.alive.swap(false, Ordering::AcqRel) {
            tracing::warn!(addr = %self.addr, "draft session lost: {why}");
            metrics::gauge!(m::TARGET_DRAFT_SESSIONS).decrement(1.0);
            metrics::gauge!(m::TARGET_DRAFT_SESSION_TRANSPORT, "transport" => self.sender.name()).decrement(1.0);
        }
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        self.closed.notify_one();
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        metrics::gauge!(m::TARGET_DRAFT_SEQUENCES).decrement(routes.len() as f64);
        routes.clear();
    }

    /// Queues a message; false when the link is closed.
    fn send(&self, msg: Msg) -> bool {
        let kind = match &msg {
            Msg::Open(_) => "open",
            Msg::Begin(_) => "begin",
            Msg::Commit(_) => "commit",
            Msg::Propose(_) => "propose",
            Msg::Release(_) => "release",
        };
        metrics::counter!(m::TARGET_DRAFT_MESSAGES, "kind" => kind).increment(1);
        match self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(tx) => tx.send(SessionRequest { msg: Some(msg) }).is_ok(),
            None => false,
        }
    }

    fn route(&self, seq: u64, a: Answer) {
        if let Some(tx) = self.routes.lock().unwrap_or_else(|e| e.into_inner()).get(&seq) {
            let _ = tx.send(a);
        }
    }

    /// A proposer for one request. `fallback` is raised if it ever drops
    /// speculation; `constraint` (the request's) goes to the draft worker so
    /// that it drafts only what the grammar admits.
    pub fn proposer(self: &Arc<Self>, fallback: Arc<AtomicBool>, constraint: Option<aerie_proto::v1::Constraint>) -> RemoteProposer {
        let seq_id = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std_mpsc::channel();
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).insert(seq_id, tx);
        metrics::gauge!(m::TARGET_DRAFT_SEQUENCES).increment(1.0);
        let mut p = RemoteProposer {
            link: self.clone(),
            seq_id,
            answers: rx,
            root: None,
            pending: false,
            stale: 0,
            fallback,
            failed: false,
            constraint,
            deferred: Vec::new(),
            deferred_feats: Features::empty(),
        };
        if !self.is_alive() {
            p.fail("draft_down");
        }
        p
    }
}

impl Drop for DraftLink {
    fn drop(&mut self) {
        // The ring's memory goes with the last mapping; this was ours.
        metrics::gauge!(m::TARGET_SHM_BYTES).decrement(self.ring_bytes() as f64);
    }
}

async fn read_answers(link: Arc<DraftLink>, mut stream: tonic::Streaming<aerie_proto::v1::SessionResponse>) {
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = link.closed.notified() => return,
        };
        match next {
            Some(Ok(resp)) => match resp.msg {
                Some(Reply::Ready(_)) => {}
                Some(Reply::Proposal(p)) => {
                    link.sender.consumed(p.ring_consumed);
                    link.route(p.seq_id, Answer::Tree(p));
                }
                Some(Reply::Error(e)) if e.seq_id == 0 => {
                    link.mark_dead(&format!("{} ({})", e.message, e.error_type));
                    return;
                }
                Some(Reply::Error(e)) => link.route(e.seq_id, Answer::Failed(format!("{} ({})", e.message, e.error_type))),
                None => {}
            },
            Some(Err(status)) => {
                link.mark_dead(&format!("stream error: {}", status.message()));
                return;
            }
            None => {
                link.mark_dead("stream ended");
                return;
            }
        }
    }
}

/// A [`Proposer`] whose drafts come from a draft worker.
pub struct RemoteProposer {
    link: Arc<DraftLink>,
    seq_id: u64,
    answers: std_mpsc::Receiver<Answer>,
    /// The last committed token: the next tree's root.
    root: Option<u32>,
    /// A Propose was sent and its answer not yet read.
    pending: bool,
    /// Answers to requests withdrawn since ([`Proposer::cancel_request`]),
    /// read and dropped before the next answer that counts.
    stale: usize,
    fallback: Arc<AtomicBool>,
    failed: bool,
    /// The request's output constraint, sent with the sequence's begin.
    constraint: Option<aerie_proto::v1::Constraint>,
    /// Committed tokens not yet sent, and their feature rows (see
    /// "Deferred commits" above).
    deferred: Vec<u32>,
    deferred_feats: Features,
}

impl RemoteProposer {
    /// Drops speculation for the rest of this request.
    fn fail(&mut self, reason: &'static str) {
        if self.failed {
            return;
        }
        self.failed = true;
        self.fallback.store(true, Ordering::Release);
        metrics::counter!(m::TARGET_DRAFT_FALLBACKS, "reason" => reason).increment(1);
        tracing::warn!(addr = %self.link.addr, seq = self.seq_id, reason, "continuing without speculation");
        self.release();
    }

    fn release(&mut self) {
        if self.link.routes.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.seq_id).is_some() {
            metrics::gauge!(m::TARGET_DRAFT_SEQUENCES).decrement(1.0);
        }
        self.link.send(Msg::Release(SequenceRelease { seq_id: self.seq_id }));
    }

    fn send(&mut self, msg: Msg) {
        if self.failed {
            return;
        }
        if !self.link.is_alive() || !self.link.send(msg) {
            self.fail("draft_down");
        }
    }

    /// The features as a payload, or `None` (and this request drops
    /// speculation) when they could not travel in one message: failing one
    /// sequence beats the draft refusing the message and losing the session.
    fn payload(&mut self, feats: &Features) -> Option<aerie_proto::v1::FeaturePayload> {
        let (p, via) = self.link.sender.encode(feats.width, &feats.data);
        if via == "inline" && feats.data.len() * 4 + (1 << 20) > aerie_proto::MAX_MESSAGE_BYTES {
            self.fail("features_too_large");
            return None;
        }
        metrics::counter!(m::TARGET_FEATURE_BYTES, "transport" => via).increment((feats.data.len() * 4) as u64);
        Some(p)
    }

    /// Sends the deferred commits as one message.
    fn flush(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let tokens = std::mem::take(&mut self.deferred);
        let feats = std::mem::take(&mut self.deferred_feats);
        if !self.failed {
            if let Some(p) = self.payload(&feats) {
                self.send(Msg::Commit(SequenceCommit { seq_id: self.seq_id, tokens, features: Some(p) }));
            }
        }
    }

    fn to_tree(&self, p: Proposal, root: u32) -> std::result::Result<DraftTree, String> {
        let parents: std::result::Result<Vec<Option<usize>>, String> = p
            .parents
            .iter()
            .map(|&x| match x {
                -1 => Ok(None),
                x if x >= 0 => Ok(Some(x as usize)),
                x => Err(format!("parent index {x}")),
            })
            .collect();
        if p.tokens.len() > MAX_TREE_NODES {
            return Err(format!("{} nodes; at most {MAX_TREE_NODES} are verified", p.tokens.len()));
        }
        if let Some(t) = p.tokens.iter().find(|&&t| t as usize >= self.link.vocab_size) {
            return Err(format!("token {t} is outside the vocabulary (size {})", self.link.vocab_size));
        }
        let tree = DraftTree::from_parents(p.tokens, parents?).map_err(|e| e.to_string())?;
        if tree.tokens[0] != root {
            return Err(format!("tree rooted at {} but the last committed token is {root}", tree.tokens[0]));
        }
        Ok(tree)
    }
}

impl Drop for RemoteProposer {
    fn drop(&mut self) {
        if !self.failed {
            self.release();
        }
    }
}

impl Proposer for RemoteProposer {
    fn name(&self) -> &'static str {
        "remote"
    }

    fn features(&self) -> FeatureKind {
        self.link.features.clone()
    }

    fn reset(&mut self) {
        self.root = None;
        self.deferred.clear();
        self.deferred_feats = Features::empty();
    }

    fn begin(&mut self, tokens: &[u32], feats: &Features) -> Result<()> {
        self.reset();
        self.root = tokens.last().copied();
        if !self.failed {
            if let Some(p) = self.payload(feats) {
                let constraint = self.constraint.take();
                self.send(Msg::Begin(SequenceBegin { seq_id: self.seq_id, tokens: tokens.to_vec(), features: Some(p), constraint }));
            }
        }
        Ok(())
    }

    fn commit(&mut self, tokens: &[u32], feats: &Features) -> Result<()> {
        if let Some(&t) = tokens.last() {
            self.root = Some(t);
        }
        if self.failed || tokens.is_empty() {
            return Ok(());
        }
        if self.deferred_feats.data.is_empty() {
            self.deferred_feats.width = feats.width;
        } else if feats.width != self.deferred_feats.width && !feats.data.is_empty() {
            // Not expected (one feature kind per session); send what was
            // held so each message stays of one width.
            self.flush();
            self.deferred_feats.width = feats.width;
        }
        self.deferred.extend_from_slice(tokens);
        self.deferred_feats.data.extend_from_slice(&feats.data);
        if self.deferred.len() >= MAX_DEFERRED_TOKENS {
            self.flush();
        }
        Ok(())
    }

    fn request_proposal(&mut self, max_depth: usize) -> Result<()> {
        self.flush();
        if !self.failed && !self.pending {
            self.send(Msg::Propose(ProposeRequest { seq_id: self.seq_id, max_depth: max_depth.min(u32::MAX as usize) as u32 }));
            self.pending = !self.failed;
        }
        Ok(())
    }

    fn cancel_request(&mut self) {
        if self.pending {
            self.pending = false;
            self.stale += 1;
        }
    }

    fn propose(&mut self, max_depth: usize) -> Result<DraftTree> {
        let root = self.root.ok_or_else(|| EngineError::InvalidInput("propose before begin".into()))?;
        // Answers to withdrawn requests come first (the draft answers a
        // sequence in order): read past them.
        while self.stale > 0 && !self.failed {
            match self.answers.recv_timeout(self.link.propose_timeout) {
                Ok(_) => self.stale -= 1,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    self.link.mark_dead("a proposal timed out");
                    self.fail("timeout");
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => self.fail("draft_down"),
            }
        }
        self.request_proposal(max_depth)?;
        if self.pending {
            self.pending = false;
            match self.answers.recv_timeout(self.link.propose_timeout) {
                Ok(Answer::Tree(p)) => match self.to_tree(p, root) {
                    Ok(tree) => return Ok(tree),
                    Err(e) => {
                        tracing::warn!(seq = self.seq_id, "malformed proposal: {e}");
                        self.fail("bad_proposal");
                    }
                },
                Ok(Answer::Failed(e)) => {
                    tracing::warn!(seq = self.seq_id, "draft error: {e}");
                    self.fail("draft_error");
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    // A stalled draft would stall every step: later requests
                    // reconnect instead of waiting on it again.
                    self.link.mark_dead("a proposal timed out");
                    self.fail("timeout");
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => self.fail("draft_down"),
            }
        }
        Ok(DraftTree::chain(root, &[]))
    }
}
