//! A worker's registration: one lease for the life of the process.
//!
//! Strategy: grant a lease (TTL 10 s), put the worker's record under it, and
//! renew it every TTL/2. The key lives exactly as long as the process keeps
//! renewing: kill -9 the worker and etcd deletes the key within one TTL, and
//! every router's watch sees the delete.
//!
//! The renewals run on a thread of their own with its own single-threaded
//! runtime, so a worker whose async runtime is saturated (a long forward
//! pass, a burst of streams) cannot starve them and lose its lease while it
//! is in fact healthy.
//!
//! When renewing fails (etcd restarting, a network cut), the loop reconnects
//! every 500 ms and first tries to keep the same lease; etcd restores leases
//! across a restart. If the lease expired meanwhile it grants a new one and
//! puts the record again. Requests never wait on any of this: losing the
//! lease only hides the worker from routers until it re-registers.
//!
//! Parameters ([`RegistrationConfig`]): endpoints, cluster, TTL (10 s),
//! per-call timeout (3 s).

use crate::error::{bounded, DiscoveryError};
use crate::etcd_watch::connect;
use crate::keys::{check_segment, worker_key};
use crate::{Status, WorkerRecord};
use etcd_client::{Client, PutOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// The cluster name (key prefix segment). Default `default`.
    pub cluster: String,
    /// Lease time to live, seconds. Default 10.
    pub ttl_secs: i64,
    /// Longest wait for one etcd call. Default 3 s.
    pub call_timeout: Duration,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig { endpoints: vec!["http://127.0.0.1:2379".into()], cluster: "default".into(), ttl_secs: 10, call_timeout: Duration::from_secs(3) }
    }
}

/// A live registration. Dropping it without [`deregister`](Self::deregister)
/// also ends it: the lease thread revokes the lease on its way out.
pub struct Registration {
    status: watch::Sender<Status>,
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
    registered: Arc<AtomicBool>,
    key: String,
}

impl Registration {
    /// Starts registering `record` in the background and returns at once; a
    /// worker started while etcd is down keeps serving and registers when
    /// etcd comes back.
    pub fn start(cfg: RegistrationConfig, record: WorkerRecord) -> Result<Registration, DiscoveryError> {
        check_segment("cluster", &cfg.cluster).map_err(DiscoveryError::Config)?;
        check_segment("worker id", &record.id).map_err(DiscoveryError::Config)?;
        if cfg.endpoints.is_empty() {
            return Err(DiscoveryError::Config("no etcd endpoints given".into()));
        }
        if cfg.ttl_secs < 3 {
            return Err(DiscoveryError::Config(format!("lease TTL {} s is too short: renewals every TTL/2 need at least 3 s", cfg.ttl_secs)));
        }
        // A renewal, its reply and a retry must fit in one TTL, or one slow
        // answer would cost a healthy worker its lease.
        let cfg = RegistrationConfig { call_timeout: cfg.call_timeout.min(Duration::from_millis(cfg.ttl_secs as u64 * 1000 / 3)), ..cfg };
        let key = worker_key(&cfg.cluster, record.role, &record.id);
        let (status_tx, status_rx) = watch::channel(record.status);
        let (stop_tx, stop_rx) = oneshot::channel();
        let registered = Arc::new(AtomicBool::new(false));
        let flag = registered.clone();
        let k = key.clone();
        std::thread::Builder::new()
            .name("aerie-lease".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("lease thread: cannot start its runtime: {e}");
                        return;
                    }
                };
                rt.block_on(hold(cfg, record, k, status_rx, stop_rx, flag));
            })
            .map_err(|e| DiscoveryError::Config(format!("cannot start the lease thread: {e}")))?;
        Ok(Registration { status: status_tx, stop: Some(stop_tx), registered, key })
    }

    /// The key this worker is registered under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the record is in etcd under a live lease right now.
    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Acquire)
    }

    /// Publishes a new status (e.g. draining); routers see it at once.
    pub fn set_status(&self, status: Status) {
        self.status.send_replace(status);
    }

    /// Revokes the lease, so the key disappears now rather than after a TTL,
    /// and waits (bounded by `limit`; give it more than the call timeout, as
    /// a reconnect may come first) for etcd to confirm.
    pub async fn deregister(mut self, limit: Duration) {
        if let Some(stop) = self.stop.take() {
            let (done_tx, done_rx) = oneshot::channel();
            if stop.send(done_tx).is_ok() {
                let _ = tokio::time::timeout(limit, done_rx).await;
            }
        }
    }
}

/// The lease loop; returns after a stop request.
async fn hold(cfg: RegistrationConfig, record: WorkerRecord, key: String, mut status: watch::Receiver<Status>, mut stop: oneshot::Receiver<oneshot::Sender<()>>, registered: Arc<AtomicBool>) {
    let mut lease: Option<i64> = None;
    let mut client: Option<Client> = None;
    let renew_every = Duration::from_millis(cfg.ttl_secs as u64 * 500);
    loop {
        let attempt = async {
            let c = match client.as_mut() {
                Some(c) => c,
                None => client.insert(connect(&cfg.endpoints, cfg.call_timeout).await?),
            };
            let id = ensure_lease(c, &cfg, lease).await?;
            lease = Some(id);
            let rec = WorkerRecord { status: *status.borrow_and_update(), ..record.clone() };
            bounded(cfg.call_timeout, c.put(key.as_str(), rec.to_json(), Some(PutOptions::new().with_lease(id)))).await?;
            registered.store(true, Ordering::Release);
            tracing::info!(key, lease = format!("{id:x}"), status = ?rec.status, "registered in etcd");
            renew(c, &cfg, id, &key, &record, &mut status, renew_every).await
        };
        let err = tokio::select! {
            r = attempt => match r {
                Err(e) => e,
                Ok(()) => DiscoveryError::Config("renewal ended".into()),
            },
            done = &mut stop => {
                finish(&mut client, &cfg, lease, &key, &registered, done.ok()).await;
                return;
            }
        };
        registered.store(false, Ordering::Release);
        if let DiscoveryError::LeaseLost(_) = err {
            lease = None;
        } else {
            // A fresh connection: the old one may be half-dead.
            client = None;
        }
        tracing::warn!(key, error = %err, "etcd registration interrupted; retrying");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            done = &mut stop => {
                finish(&mut client, &cfg, lease, &key, &registered, done.ok()).await;
                return;
            }
        }
    }
}

/// Revokes the lease (connecting first if the last connection was dropped)
/// and tells [`Registration::deregister`] it is done.
async fn finish(client: &mut Option<Client>, cfg: &RegistrationConfig, lease: Option<i64>, key: &str, registered: &AtomicBool, done: Option<oneshot::Sender<()>>) {
    registered.store(false, Ordering::Release);
    if let Some(id) = lease {
        let revoked = async {
            let c = match client.as_mut() {
                Some(c) => c,
                None => client.insert(connect(&cfg.endpoints, cfg.call_timeout).await?),
            };
            bounded(cfg.call_timeout, c.lease_revoke(id)).await
        };
        match revoked.await {
            Ok(_) => tracing::info!(key, "deregistered (lease revoked)"),
            Err(e) => tracing::warn!(key, error = %e, "could not revoke the lease; the key expires with it"),
        }
    }
    if let Some(done) = done {
        let _ = done.send(());
    }
}

/// Keeps `current` if etcd still knows it, else grants a new lease.
async fn ensure_lease(c: &mut Client, cfg: &RegistrationConfig, current: Option<i64>) -> Result<i64, DiscoveryError> {
    if let Some(id) = current {
        let ttl = bounded(cfg.call_timeout, c.lease_time_to_live(id, None)).await?;
        if ttl.ttl() > 0 {
            return Ok(id);
        }
        tracing::info!(lease = format!("{id:x}"), "lease expired while etcd was unreachable; granting a new one");
    }
    Ok(bounded(cfg.call_timeout, c.lease_grant(cfg.ttl_secs, None)).await?.id())
}

/// Renews every `every` and republishes status changes; returns the reason
/// it stopped (never `Ok`: a registration only ends by being stopped).
async fn renew(c: &mut Client, cfg: &RegistrationConfig, id: i64, key: &str, record: &WorkerRecord, status: &mut watch::Receiver<Status>, every: Duration) -> Result<(), DiscoveryError> {
    let (mut keeper, mut responses) = bounded(cfg.call_timeout, c.lease_keep_alive(id)).await.map_err(|e| match e {
        DiscoveryError::Etcd(etcd_client::Error::LeaseKeepAliveError(_)) => DiscoveryError::LeaseLost(id),
        e => e,
    })?;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                bounded(cfg.call_timeout, keeper.keep_alive()).await?;
                match tokio::time::timeout(cfg.call_timeout, responses.message()).await {
                    Err(_) => return Err(DiscoveryError::Timeout(cfg.call_timeout)),
                    Ok(Err(e)) => return Err(e.into()),
                    Ok(Ok(None)) => return Err(DiscoveryError::Config("keep-alive stream ended".into())),
                    Ok(Ok(Some(r))) if r.ttl() <= 0 => return Err(DiscoveryError::LeaseLost(id)),
                    Ok(Ok(Some(_))) => {}
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    // The Registration was dropped: stop renewing; the key expires.
                    std::future::pending::<()>().await;
                }
                let rec = WorkerRecord { status: *status.borrow_and_update(), ..record.clone() };
                bounded(cfg.call_timeout, c.put(key, rec.to_json(), Some(PutOptions::new().with_lease(id)))).await?;
                tracing::info!(key, status = ?rec.status, "status published");
            }
        }
    }
}
