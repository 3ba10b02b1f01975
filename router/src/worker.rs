//! Workers as the router sees them, and the registry that health-checks them.
//!
//! A [`Worker`] is anything the router can send work to: its address, host,
//! health and load. Target handles also carry a gRPC client; draft handles
//! only an address, because targets, not the router, talk to drafts.
//! The registry probes every worker each `health_interval` (targets: `Info`
//! once, then `Health` and `GetLoad`; drafts: `Info` and `Health`) and marks
//! a worker unhealthy on the first failed probe, healthy on the first good one.

use crate::metrics_names as m;
use aerie_proto::v1::draft_service_client::DraftServiceClient;
use aerie_proto::v1::target_service_client::TargetServiceClient;
use aerie_proto::v1::{HealthRequest, InfoRequest, LoadRequest};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use aerie_discovery::{Change, Discovery, Role, StaticDiscovery, Status, WorkerRecord};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// What routing needs to know about any worker.
pub trait Worker: Send + Sync {
    /// The discovery id: unique per role within a cluster.
    fn id(&self) -> &str;
    fn addr(&self) -> &str;
    /// Answering probes and not draining: eligible for new work.
    fn is_healthy(&self) -> bool;
    fn is_draining(&self) -> bool;
    fn set_draining(&self, draining: bool);
    /// Requests running or waiting there, as last reported plus those this
    /// router sent since.
    fn load(&self) -> usize;
    /// Host identity reported by the worker (empty until known).
    fn host_id(&self) -> String;
}

/// A target worker.
pub struct TargetHandle {
    /// The discovery id (etcd key segment, or the address for static lists).
    id: String,
    addr: String,
    /// Announced by the worker on SIGTERM: finish in-flight work, take no new.
    draining: AtomicBool,
    client: TargetServiceClient<Channel>,
    healthy: AtomicBool,
    reported_load: AtomicUsize,
    in_flight: AtomicUsize,
    host: Mutex<String>,
    /// The tokenizer hash the worker reported; checked against the router's.
    tokenizer_ok: AtomicBool,
}

impl TargetHandle {
    pub fn new(addr: &str) -> Result<Arc<Self>, String> {
        Self::with_id(addr, addr)
    }

    pub fn with_id(id: &str, addr: &str) -> Result<Arc<Self>, String> {
        let ep = Endpoint::from_shared(addr.to_string())
            .map_err(|e| format!("bad target address `{addr}`: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(aerie_proto::KEEPALIVE_INTERVAL)
            .keep_alive_timeout(aerie_proto::KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let client = TargetServiceClient::new(ep.connect_lazy())
            .max_decoding_message_size(aerie_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(aerie_proto::MAX_MESSAGE_BYTES);
        Ok(Arc::new(TargetHandle {
            id: id.to_string(),
            addr: addr.to_string(),
            draining: AtomicBool::new(false),
            client,
            healthy: AtomicBool::new(false),
            reported_load: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            host: Mutex::new(String::new()),
            tokenizer_ok: AtomicBool::new(false),
        }))
    }

    pub fn client(&self) -> TargetServiceClient<Channel> {
        self.client.clone()
    }

    /// Counts a request this router sent, until the guard drops.
    pub fn track(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    pub fn mark_unhealthy(&self) {
        self.healthy.store(false, Ordering::Release);
    }

    /// What a successful probe learnt: host, load, tokenizer agreement.
    /// Health itself is set by the caller.
    pub(crate) fn record_probe(&self, host: String, reported_load: usize, tokenizer_ok: bool) {
        *self.host.lock().unwrap_or_else(|e| e.into_inner()) = host;
        self.reported_load.store(reported_load, Ordering::Release);
        self.tokenizer_ok.store(tokenizer_ok, Ordering::Release);
    }

    #[cfg(test)]
    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Release);
    }
}

/// Decrements a target's in-flight count on drop.
pub struct InFlight(Arc<TargetHandle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Worker for TargetHandle {
    fn id(&self) -> &str {
        &self.id
    }
    fn addr(&self) -> &str {
        &self.addr
    }
    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire) && self.tokenizer_ok.load(Ordering::Acquire) && !self.is_draining()
    }
    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
    fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Release);
    }
    fn load(&self) -> usize {
        self.reported_load.load(Ordering::Acquire) + self.in_flight.load(Ordering::Acquire)
    }
    fn host_id(&self) -> String {
        self.host.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A draft worker.
pub struct DraftHandle {
    id: String,
    addr: String,
    draining: AtomicBool,
    client: DraftServiceClient<Channel>,
    healthy: AtomicBool,
    host: Mutex<String>,
    assigned: AtomicUsize,
}

impl DraftHandle {
    pub fn new(addr: &str) -> Result<Arc<Self>, String> {
        Self::with_id(addr, addr)
    }

    pub fn with_id(id: &str, addr: &str) -> Result<Arc<Self>, String> {
        let ep = Endpoint::from_shared(addr.to_string()).map_err(|e| format!("bad draft address `{addr}`: {e}"))?.connect_timeout(Duration::from_secs(2));
        Ok(Arc::new(DraftHandle {
            id: id.to_string(),
            addr: addr.to_string(),
            draining: AtomicBool::new(false),
            client: DraftServiceClient::new(ep.connect_lazy()),
            healthy: AtomicBool::new(false),
            host: Mutex::new(String::new()),
            assigned: AtomicUsize::new(0),
        }))
    }

    /// What a successful probe learnt: the host.
    pub(crate) fn record_probe(&self, host: String) {
        *self.host.lock().unwrap_or_else(|e| e.into_inner()) = host;
    }

    #[cfg(test)]
    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Release);
    }
}

impl Worker for DraftHandle {
    fn id(&self) -> &str {
        &self.id
    }
    fn addr(&self) -> &str {
        &self.addr
    }
    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire) && !self.is_draining()
    }
    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
    fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Release);
    }
    fn load(&self) -> usize {
        self.assigned.load(Ordering::Acquire)
    }
    fn host_id(&self) -> String {
        self.host.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Every worker the router knows, kept current by a [`Discovery`] source
/// (see [`follow`](Registry::follow)) and by the router's own probes.
///
/// Discovery says which workers exist and whether they are draining; probes
/// say whether each answers. A worker is routable only when both agree, so a
/// worker that died between discovery updates is skipped at the next failed
/// probe, and one that etcd dropped is gone even if it still answers.
pub struct Registry {
    targets: RwLock<Vec<Arc<TargetHandle>>>,
    drafts: RwLock<Vec<Arc<DraftHandle>>>,
    tokenizer_hash: String,
    /// `static` or `etcd`, for `/workers`.
    source: Mutex<&'static str>,
    /// Workers listed on the command line: every snapshot keeps them, since
    /// a discovery source cannot know about them.
    pinned: Vec<WorkerRecord>,
}

/// Handles that an applied change created; they need a first probe.
#[derive(Default)]
pub struct Added {
    pub targets: Vec<Arc<TargetHandle>>,
    pub drafts: Vec<Arc<DraftHandle>>,
}

fn read<T: Clone>(l: &RwLock<Vec<T>>) -> Vec<T> {
    l.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Applies one role's part of a change to `list`; returns the new handles.
fn apply_role<H: Worker + ?Sized>(list: &RwLock<Vec<Arc<H>>>, change: &Change, role: Role, make: impl Fn(&WorkerRecord) -> Result<Arc<H>, String>) -> Vec<Arc<H>> {
    let mut list = list.write().unwrap_or_else(|e| e.into_inner());
    let mut added = Vec::new();
    let mut upsert = |list: &mut Vec<Arc<H>>, r: &WorkerRecord| {
        if let Some(pos) = list.iter().position(|h| h.id() == r.id) {
            if list[pos].addr() == r.addr {
                list[pos].set_draining(r.status == Status::Draining);
                return;
            }
            // Same id at a new address (a restarted pod): a fresh handle.
            list.remove(pos);
        }
        match make(r) {
            Ok(h) => {
                h.set_draining(r.status == Status::Draining);
                tracing::info!(role = role.as_str(), id = %r.id, addr = %r.addr, "worker joined");
                list.push(h.clone());
                added.push(h);
            }
            Err(e) => tracing::warn!(role = role.as_str(), id = %r.id, "ignoring worker: {e}"),
        }
    };
    match change {
        Change::Snapshot(all) => {
            let mine: Vec<&WorkerRecord> = all.iter().filter(|r| r.role == role).collect();
            list.retain(|h| {
                let keep = mine.iter().any(|r| r.id == h.id());
                if !keep {
                    tracing::info!(role = role.as_str(), id = h.id(), "worker left (resync)");
                }
                keep
            });
            for r in mine {
                upsert(&mut list, r);
            }
        }
        Change::Put(r) if r.role == role => upsert(&mut list, r),
        Change::Delete { role: r, id } if *r == role => {
            list.retain(|h| h.id() != id);
            tracing::info!(role = role.as_str(), id, "worker left");
        }
        _ => {}
    }
    added
}

impl Registry {
    /// An empty registry; workers arrive through [`apply`](Self::apply).
    pub fn empty(tokenizer_hash: &str) -> Arc<Self> {
        Self::with_pinned(tokenizer_hash, Vec::new())
    }

    fn with_pinned(tokenizer_hash: &str, pinned: Vec<WorkerRecord>) -> Arc<Self> {
        Arc::new(Registry { targets: RwLock::new(Vec::new()), drafts: RwLock::new(Vec::new()), tokenizer_hash: tokenizer_hash.to_string(), source: Mutex::new("static"), pinned })
    }

    /// A registry holding a fixed list (ids are the addresses).
    pub fn new(targets: &[String], drafts: &[String], tokenizer_hash: &str) -> Result<Arc<Self>, String> {
        for a in targets.iter().chain(drafts) {
            Endpoint::from_shared(a.to_string()).map_err(|e| format!("bad worker address `{a}`: {e}"))?;
        }
        let all = StaticDiscovery { targets: targets.to_vec(), drafts: drafts.to_vec() }.records();
        let reg = Self::with_pinned(tokenizer_hash, all.clone());
        reg.apply(&Change::Snapshot(all));
        Ok(reg)
    }

    /// Applies a discovery change; returns the handles it created.
    pub fn apply(&self, change: &Change) -> Added {
        let with_pinned;
        let change = match change {
            Change::Snapshot(all) if !self.pinned.is_empty() => {
                with_pinned = Change::Snapshot(all.iter().chain(&self.pinned).cloned().collect());
                &with_pinned
            }
            c => c,
        };
        Added {
            targets: apply_role(&self.targets, change, Role::Target, |r| TargetHandle::with_id(&r.id, &r.addr)),
            drafts: apply_role(&self.drafts, change, Role::Draft, |r| DraftHandle::with_id(&r.id, &r.addr)),
        }
    }

    /// Follows `source` until it closes: applies each change and probes new
    /// workers at once, so a worker is routable within a probe's round trip
    /// of registering rather than at the next health tick.
    pub fn follow(self: &Arc<Self>, source: Box<dyn Discovery>) -> tokio::task::JoinHandle<()> {
        *self.source.lock().unwrap_or_else(|e| e.into_inner()) = source.kind();
        let mut rx = source.start();
        let reg = self.clone();
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                let added = reg.apply(&change);
                for t in &added.targets {
                    let (reg, t) = (reg.clone(), t.clone());
                    tokio::spawn(async move { reg.probe_target(&t).await });
                }
                for d in added.drafts {
                    tokio::spawn(async move { probe_draft(&d).await });
                }
            }
        })
    }

    pub fn targets(&self) -> Vec<Arc<TargetHandle>> {
        read(&self.targets)
    }

    pub fn drafts(&self) -> Vec<Arc<DraftHandle>> {
        read(&self.drafts)
    }

    pub fn healthy_targets(&self) -> Vec<Arc<TargetHandle>> {
        self.targets().into_iter().filter(|t| t.is_healthy()).collect()
    }

    /// A draft worker for a request going to `target`: a healthy one on the
    /// same host if any, else any healthy one; the least assigned wins.
    pub fn pair_draft(&self, target: &TargetHandle) -> Option<Arc<DraftHandle>> {
        let host = target.host_id();
        let drafts = self.drafts();
        let healthy: Vec<&Arc<DraftHandle>> = drafts.iter().filter(|d| d.is_healthy()).collect();
        let local: Vec<&Arc<DraftHandle>> = healthy.iter().copied().filter(|d| !host.is_empty() && d.host_id() == host).collect();
        let pool = if local.is_empty() { healthy } else { local };
        let d = pool.into_iter().min_by_key(|d| d.load())?;
        d.assigned.fetch_add(1, Ordering::AcqRel);
        Some(d.clone())
    }

    /// Releases a pairing made by [`pair_draft`](Self::pair_draft).
    pub fn unpair(&self, d: &DraftHandle) {
        d.assigned.fetch_sub(1, Ordering::AcqRel);
    }

    /// The router's current view, for `GET /workers`.
    pub fn view(&self) -> serde_json::Value {
        fn one(w: &dyn Worker) -> serde_json::Value {
            serde_json::json!({"id": w.id(), "addr": w.addr(), "healthy": w.is_healthy(), "status": if w.is_draining() { "draining" } else { "ready" }, "host": w.host_id(), "load": w.load()})
        }
        let source = *self.source.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "discovery": source,
            "targets": self.targets().iter().map(|t| one(t.as_ref())).collect::<Vec<_>>(),
            "drafts": self.drafts().iter().map(|d| one(d.as_ref())).collect::<Vec<_>>(),
        })
    }

    /// Probes every worker once.
    pub async fn probe_all(&self) {
        // Sequential: a few workers, each probe bounded by its timeout.
        for t in &self.targets() {
            self.probe_target(t).await;
        }
        for d in &self.drafts() {
            probe_draft(d).await;
        }
    }

    async fn probe_target(&self, t: &Arc<TargetHandle>) {
        let mut c = t.client.clone();
        let r = tokio::time::timeout(Duration::from_secs(2), async {
            let info = c.info(InfoRequest {}).await?.into_inner();
            c.health(HealthRequest {}).await?;
            let load = c.get_load(LoadRequest {}).await?.into_inner();
            Ok::<_, tonic::Status>((info, load))
        })
        .await;
        let healthy = match r {
            Ok(Ok((info, load))) => {
                let tok_ok = info.tokenizer_hash == self.tokenizer_hash;
                if !tok_ok && t.tokenizer_ok.load(Ordering::Acquire) {
                    tracing::error!(worker = %t.addr, "target's tokenizer differs from the router's; not routing to it");
                }
                t.record_probe(info.host_id, (load.running + load.waiting) as usize, tok_ok);
                true
            }
            _ => false,
        };
        set_health(&t.healthy, healthy, "target", &t.addr);
    }

    /// Probes forever, every `every`.
    pub fn spawn_health_checks(self: &Arc<Self>, every: Duration) {
        let reg = self.clone();
        tokio::spawn(async move {
            loop {
                reg.probe_all().await;
                tokio::time::sleep(every).await;
            }
        });
    }
}

async fn probe_draft(d: &Arc<DraftHandle>) {
    let mut c = d.client.clone();
    let ok = tokio::time::timeout(Duration::from_secs(2), async {
        let info = c.info(InfoRequest {}).await?.into_inner();
        c.health(HealthRequest {}).await?;
        Ok::<_, tonic::Status>(info)
    })
    .await;
    let healthy = match ok {
        Ok(Ok(info)) => {
            d.record_probe(info.host_id);
            true
        }
        _ => false,
    };
    set_health(&d.healthy, healthy, "draft", &d.addr);
}

fn set_health(flag: &AtomicBool, healthy: bool, role: &'static str, addr: &str) {
    let was = flag.swap(healthy, Ordering::AcqRel);
    if was != healthy {
        tracing::info!(role, worker = addr, healthy, "worker health changed");
    }
    metrics::gauge!(m::WORKER_HEALTHY, "role" => role, "worker" => addr.to_string()).set(if healthy { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(addr: &str, host: &str, healthy: bool) -> Arc<DraftHandle> {
        let d = DraftHandle::new(addr).unwrap();
        d.record_probe(host.into());
        d.set_healthy(healthy);
        d
    }

    fn target_on(host: &str) -> Arc<TargetHandle> {
        let t = TargetHandle::new("http://127.0.0.1:1").unwrap();
        t.record_probe(host.into(), 0, true);
        t
    }

    fn registry(drafts: Vec<Arc<DraftHandle>>) -> Registry {
        Registry { targets: RwLock::new(vec![]), drafts: RwLock::new(drafts), tokenizer_hash: String::new(), source: Mutex::new("static"), pinned: Vec::new() }
    }

    #[tokio::test]
    async fn pairing_prefers_a_draft_on_the_targets_host_then_the_least_assigned() {
        let reg = registry(vec![draft("http://a:1", "host-a", true), draft("http://b:1", "host-b", true), draft("http://b:2", "host-b", true)]);
        let on_b = target_on("host-b");
        // Both host-b drafts are used before any other; a third pairing
        // stays on host-b too, because same-host beats load.
        let picks: Vec<String> = (0..3).map(|_| reg.pair_draft(&on_b).unwrap().addr().to_string()).collect();
        assert_eq!(picks[..2].iter().filter(|a| a.starts_with("http://b")).count(), 2, "{picks:?}");
        assert_ne!(picks[0], picks[1]);
        assert!(picks[2].starts_with("http://b"), "{picks:?}");
        // A target on an unknown host gets the least-assigned draft anywhere.
        assert_eq!(reg.pair_draft(&target_on("host-z")).unwrap().addr(), "http://a:1");
        // Unpairing frees the slot.
        let b1 = reg.drafts()[1].clone();
        let before = b1.load();
        reg.unpair(&b1);
        assert_eq!(b1.load(), before - 1);
    }

    #[tokio::test]
    async fn pairing_skips_unhealthy_drafts_and_gives_none_when_none_is_healthy() {
        let reg = registry(vec![draft("http://a:1", "host-a", false), draft("http://b:1", "host-b", true)]);
        assert_eq!(reg.pair_draft(&target_on("host-a")).unwrap().addr(), "http://b:1");
        reg.drafts()[1].set_healthy(false);
        assert!(reg.pair_draft(&target_on("host-a")).is_none());
        // An empty host id never counts as "same host".
        let reg = registry(vec![draft("http://a:1", "", true), draft("http://b:1", "h", true)]);
        reg.pair_draft(&target_on("h")).unwrap();
        assert_eq!(reg.pair_draft(&target_on("")).unwrap().addr(), "http://a:1");
    }

    #[tokio::test]
    async fn a_target_whose_tokenizer_differs_is_not_healthy() {
        let t = target_on("h");
        t.set_healthy(true);
        assert!(t.is_healthy());
        t.record_probe("h".into(), 0, false);
        assert!(!t.is_healthy());
    }

    fn rec(role: Role, id: &str, port: u16, status: Status) -> WorkerRecord {
        WorkerRecord { id: id.into(), role, addr: format!("http://127.0.0.1:{port}"), model_fingerprint: String::new(), capacity: 1, host: String::new(), status }
    }

    fn ids<W: Worker + ?Sized>(list: &[Arc<W>]) -> Vec<String> {
        list.iter().map(|w| w.id().to_string()).collect()
    }

    #[tokio::test]
    async fn discovery_changes_add_update_and_remove_workers() {
        let reg = Registry::empty("");
        let added = reg.apply(&Change::Snapshot(vec![rec(Role::Target, "t1", 1, Status::Ready), rec(Role::Draft, "d1", 2, Status::Ready)]));
        assert_eq!((added.targets.len(), added.drafts.len()), (1, 1));
        let added = reg.apply(&Change::Put(rec(Role::Draft, "d2", 3, Status::Ready)));
        assert_eq!(ids(&added.drafts), ["d2"]);
        assert_eq!(ids(&reg.drafts()), ["d1", "d2"]);
        // A status change updates the same handle (in-flight counts survive).
        let t1 = reg.targets()[0].clone();
        t1.record_probe(String::new(), 0, true);
        t1.set_healthy(true);
        assert!(t1.is_healthy());
        assert!(reg.apply(&Change::Put(rec(Role::Target, "t1", 1, Status::Draining))).targets.is_empty());
        assert!(Arc::ptr_eq(&reg.targets()[0], &t1));
        assert!(t1.is_draining() && !t1.is_healthy(), "a draining target takes no new work");
        assert!(reg.healthy_targets().is_empty());
        // A delete of the other role's id is not confused with this one.
        reg.apply(&Change::Delete { role: Role::Target, id: "d1".into() });
        assert_eq!(ids(&reg.drafts()), ["d1", "d2"]);
        reg.apply(&Change::Delete { role: Role::Draft, id: "d1".into() });
        assert_eq!(ids(&reg.drafts()), ["d2"]);
        // Same id at a new address: a fresh handle.
        let added = reg.apply(&Change::Put(rec(Role::Draft, "d2", 9, Status::Ready)));
        assert_eq!(added.drafts[0].addr(), "http://127.0.0.1:9");
        assert_eq!(reg.drafts().len(), 1);
        // A snapshot is the whole truth: absent workers go, present ones stay.
        let added = reg.apply(&Change::Snapshot(vec![rec(Role::Target, "t1", 1, Status::Ready), rec(Role::Target, "t2", 4, Status::Ready)]));
        assert_eq!(ids(&added.targets), ["t2"]);
        assert_eq!(ids(&reg.targets()), ["t1", "t2"]);
        assert!(reg.drafts().is_empty());
        assert!(Arc::ptr_eq(&reg.targets()[0], &t1) && !t1.is_draining());
        // Statically listed workers survive snapshots that lack them.
        let pinned = Registry::new(&["http://127.0.0.1:7".to_string()], &[], "").unwrap();
        pinned.apply(&Change::Snapshot(vec![rec(Role::Target, "t9", 9, Status::Ready)]));
        assert_eq!(ids(&pinned.targets()), ["http://127.0.0.1:7", "t9"]);
        let v = reg.view();
        assert_eq!(v["targets"].as_array().unwrap().len(), 2);
        assert_eq!(v["targets"][0]["status"], "ready");
    }

    #[tokio::test]
    async fn a_draining_draft_is_not_paired() {
        let reg = registry(vec![draft("http://a:1", "h", true), draft("http://b:1", "h", true)]);
        reg.drafts()[0].set_draining(true);
        for _ in 0..3 {
            assert_eq!(reg.pair_draft(&target_on("h")).unwrap().addr(), "http://b:1");
        }
    }
}
