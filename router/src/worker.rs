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
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// What routing needs to know about any worker.
pub trait Worker: Send + Sync {
    fn addr(&self) -> &str;
    fn is_healthy(&self) -> bool;
    /// Requests running or waiting there, as last reported plus those this
    /// router sent since.
    fn load(&self) -> usize;
    /// Host identity reported by the worker (empty until known).
    fn host_id(&self) -> String;
}

/// A target worker.
pub struct TargetHandle {
    addr: String,
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
            addr: addr.to_string(),
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
    fn addr(&self) -> &str {
        &self.addr
    }
    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire) && self.tokenizer_ok.load(Ordering::Acquire)
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
    addr: String,
    client: DraftServiceClient<Channel>,
    healthy: AtomicBool,
    host: Mutex<String>,
    assigned: AtomicUsize,
}

impl DraftHandle {
    pub fn new(addr: &str) -> Result<Arc<Self>, String> {
        let ep = Endpoint::from_shared(addr.to_string()).map_err(|e| format!("bad draft address `{addr}`: {e}"))?.connect_timeout(Duration::from_secs(2));
        Ok(Arc::new(DraftHandle {
            addr: addr.to_string(),
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
    fn addr(&self) -> &str {
        &self.addr
    }
    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
    fn load(&self) -> usize {
        self.assigned.load(Ordering::Acquire)
    }
    fn host_id(&self) -> String {
        self.host.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Every worker the router knows.
pub struct Registry {
    pub targets: Vec<Arc<TargetHandle>>,
    pub drafts: Vec<Arc<DraftHandle>>,
    tokenizer_hash: String,
}

impl Registry {
    pub fn new(targets: &[String], drafts: &[String], tokenizer_hash: &str) -> Result<Arc<Self>, String> {
        Ok(Arc::new(Registry {
            targets: targets.iter().map(|a| TargetHandle::new(a)).collect::<Result<_, _>>()?,
            drafts: drafts.iter().map(|a| DraftHandle::new(a)).collect::<Result<_, _>>()?,
            tokenizer_hash: tokenizer_hash.to_string(),
        }))
    }

    pub fn healthy_targets(&self) -> Vec<Arc<TargetHandle>> {
        self.targets.iter().filter(|t| t.is_healthy()).cloned().collect()
    }

    /// A draft worker for a request going to `target`: a healthy one on the
    /// same host if any, else any healthy one; the least assigned wins.
    pub fn pair_draft(&self, target: &TargetHandle) -> Option<Arc<DraftHandle>> {
        let host = target.host_id();
        let healthy: Vec<&Arc<DraftHandle>> = self.drafts.iter().filter(|d| d.is_healthy()).collect();
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

    /// Probes every worker once.
    pub async fn probe_all(&self) {
        // Sequential: a few workers, each probe bounded by its timeout.
        for t in &self.targets {
            self.probe_target(t).await;
        }
        for d in &self.drafts {
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
        Registry { targets: vec![], drafts, tokenizer_hash: String::new() }
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
        let b1 = reg.drafts[1].clone();
        let before = b1.load();
        reg.unpair(&b1);
        assert_eq!(b1.load(), before - 1);
    }

    #[tokio::test]
    async fn pairing_skips_unhealthy_drafts_and_gives_none_when_none_is_healthy() {
        let reg = registry(vec![draft("http://a:1", "host-a", false), draft("http://b:1", "host-b", true)]);
        assert_eq!(reg.pair_draft(&target_on("host-a")).unwrap().addr(), "http://b:1");
        reg.drafts[1].set_healthy(false);
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
}
