//! Discovery through an etcd prefix watch.
//!
//! Strategy: read the cluster prefix in full (a [`Change::Snapshot`]), then
//! watch it from the read's revision + 1 and forward each event. The resume
//! point advances with every event (`mod_revision + 1`) and every progress
//! notice (`header.revision + 1`), so after a broken stream (etcd restart,
//! network cut) the watch reopens exactly where it stopped and no event is
//! lost or repeated. When etcd has compacted past the resume point the watch
//! is refused; then a full read replaces it. So does finding etcd behind the
//! resume point after a reconnect (it lost its data), since etcd would accept
//! that watch and stay silent. A full read also
//! runs every `resync_interval` as a backstop against a stream that hangs
//! without breaking (a peer gone silent), and a failed resync counts as a
//! broken connection.
//!
//! Parameters ([`EtcdDiscoveryConfig`]): endpoints, cluster, resync interval
//! (30 s), per-call timeout (3 s), reconnect backoff (250 ms doubling to 2 s).
//!
//! While etcd is unreachable the router keeps the set it last knew: a
//! directory outage must not empty the router. Dead workers are still caught
//! by the router's own health probes.

use crate::error::{bounded, DiscoveryError};
use crate::keys::{cluster_prefix, parse_worker_key};
use crate::{Change, Discovery, WorkerRecord};
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct EtcdDiscoveryConfig {
    /// etcd client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// The cluster name: the key prefix segment. Default `default`.
    pub cluster: String,
    /// Full re-read period. Default 30 s.
    pub resync_interval: Duration,
    /// Longest wait for one etcd call. Default 3 s.
    pub call_timeout: Duration,
}

impl Default for EtcdDiscoveryConfig {
    fn default() -> Self {
        EtcdDiscoveryConfig { endpoints: vec!["http://127.0.0.1:2379".into()], cluster: "default".into(), resync_interval: Duration::from_secs(30), call_timeout: Duration::from_secs(3) }
    }
}

pub struct EtcdDiscovery {
    cfg: EtcdDiscoveryConfig,
}

impl EtcdDiscovery {
    pub fn new(cfg: EtcdDiscoveryConfig) -> Result<Self, DiscoveryError> {
        crate::keys::check_segment("cluster", &cfg.cluster).map_err(DiscoveryError::Config)?;
        if cfg.endpoints.is_empty() {
            return Err(DiscoveryError::Config("no etcd endpoints given".into()));
        }
        Ok(EtcdDiscovery { cfg })
    }
}

impl Discovery for EtcdDiscovery {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn start(self: Box<Self>) -> mpsc::Receiver<Change> {
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(run(self.cfg, tx));
        rx
    }
}

/// Client options shared by discovery and registration: HTTP/2 pings find a
/// silently dead connection without waiting for TCP. Every 10 s, not less:
/// etcd refuses pings closer than 5 s apart (`--grpc-keepalive-min-time`)
/// and after a few such pings closes the connection with `too_many_pings`,
/// which would break an idle watch every few seconds.
pub(crate) fn connect_options(call_timeout: Duration) -> ConnectOptions {
    ConnectOptions::new().with_connect_timeout(call_timeout).with_keep_alive(Duration::from_secs(10), Duration::from_secs(5)).with_keep_alive_while_idle(true)
}

pub(crate) async fn connect(endpoints: &[String], call_timeout: Duration) -> Result<Client, DiscoveryError> {
    bounded(call_timeout, Client::connect(endpoints, Some(connect_options(call_timeout)))).await
}

/// Why a watch ended.
enum WatchEnd {
    /// The receiver is gone: stop.
    Closed,
    /// The resume point was compacted away: a full read is needed.
    Compacted,
    /// The connection broke; resume from the last revision. `established`:
    /// the watch had been running (so the reconnect backoff starts afresh).
    Broken { why: String, established: bool },
}

/// What the watch loop carries across reconnects.
struct Cursor {
    /// The next revision to watch from; `None` forces a full read.
    next: Option<i64>,
    /// Events at or below this revision are already in the last snapshot.
    snapshot_rev: i64,
    /// When the next periodic full read is due.
    resync_at: tokio::time::Instant,
}

async fn run(cfg: EtcdDiscoveryConfig, tx: mpsc::Sender<Change>) {
    let prefix = cluster_prefix(&cfg.cluster);
    let mut cur = Cursor { next: None, snapshot_rev: 0, resync_at: tokio::time::Instant::now() + cfg.resync_interval };
    let mut backoff = Duration::from_millis(250);
    loop {
        if tx.is_closed() {
            return;
        }
        let (why, established) = match resume(&cfg, &prefix, &mut cur, &tx).await {
            Ok(WatchEnd::Closed) => return,
            Ok(WatchEnd::Compacted) => {
                tracing::info!(from = ?cur.next, "etcd discovery: resume point compacted; reading in full");
                cur.next = None;
                continue;
            }
            Ok(WatchEnd::Broken { why, established }) => (why, established),
            Err(e) => (e.to_string(), false),
        };
        if established {
            backoff = Duration::from_millis(250);
        }
        tracing::warn!(from = ?cur.next, why, "etcd discovery: connection lost; keeping the last known workers and retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One connection's life: connect, full read if needed, watch until it ends.
async fn resume(cfg: &EtcdDiscoveryConfig, prefix: &str, cur: &mut Cursor, tx: &mpsc::Sender<Change>) -> Result<WatchEnd, DiscoveryError> {
    let mut client = connect(&cfg.endpoints, cfg.call_timeout).await?;
    if let Some(next) = cur.next {
        // etcd accepts a watch from a revision it has not reached yet and
        // then stays silent. That happens when it lost its data (an emptyDir,
        // a restored backup); read everything again instead.
        let now = bounded(cfg.call_timeout, client.get(prefix, Some(GetOptions::new().with_prefix().with_count_only()))).await?;
        let rev = now.header().map(|h| h.revision()).unwrap_or(0);
        if rev < next - 1 {
            tracing::warn!(etcd_revision = rev, resume_from = next, "etcd discovery: etcd is behind the resume point (data lost?); reading in full");
            cur.next = None;
        }
    }
    if cur.next.is_none() {
        let (records, rev) = full_read(&mut client, cfg, prefix).await?;
        if tx.send(Change::Snapshot(records)).await.is_err() {
            return Ok(WatchEnd::Closed);
        }
        cur.next = Some(rev + 1);
        cur.snapshot_rev = rev;
        cur.resync_at = tokio::time::Instant::now() + cfg.resync_interval;
    }
    let end = watch(&mut client, cfg, prefix, cur, tx).await;
    Ok(end)
}

/// Every record under the prefix, and the revision it was read at.
async fn full_read(client: &mut Client, cfg: &EtcdDiscoveryConfig, prefix: &str) -> Result<(Vec<WorkerRecord>, i64), DiscoveryError> {
    let resp = bounded(cfg.call_timeout, client.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    let records = resp.kvs().iter().filter_map(|kv| decode(&cfg.cluster, kv.key(), kv.value())).collect();
    Ok((records, rev))
}

/// A stored key and value as a record; keys outside the layout and bad values
/// are skipped (logged), so one bad writer cannot hide the other workers.
fn decode(cluster: &str, key: &[u8], value: &[u8]) -> Option<WorkerRecord> {
    let key = std::str::from_utf8(key).ok()?;
    let (role, id) = parse_worker_key(cluster, key)?;
    match WorkerRecord::parse(key, value) {
        // The key is authoritative for role and id.
        Ok(r) => Some(WorkerRecord { role, id, ..r }),
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    }
}

async fn watch(client: &mut Client, cfg: &EtcdDiscoveryConfig, prefix: &str, cur: &mut Cursor, tx: &mpsc::Sender<Change>) -> WatchEnd {
    let from = cur.next.unwrap_or(1);
    let opts = WatchOptions::new().with_prefix().with_start_revision(from).with_progress_notify();
    let (_watcher, mut stream) = match bounded(cfg.call_timeout, client.watch(prefix, Some(opts))).await {
        Ok(w) => w,
        Err(e) => return WatchEnd::Broken { why: e.to_string(), established: false },
    };
    let mut next = from;
    loop {
        tokio::select! {
            msg = stream.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return WatchEnd::Broken { why: "stream ended".into(), established: true },
                    Err(e) => return WatchEnd::Broken { why: e.to_string(), established: true },
                };
                if resp.canceled() {
                    return if resp.compact_revision() > 0 { WatchEnd::Compacted } else { WatchEnd::Broken { why: format!("watch canceled: {}", resp.cancel_reason()), established: true } };
                }
                if resp.events().is_empty() {
                    // A progress notice: everything up to this revision was seen.
                    if let Some(h) = resp.header() {
                        next = next.max(h.revision() + 1);
                    }
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    next = next.max(kv.mod_revision() + 1);
                    // Already part of the last snapshot: replaying it could
                    // briefly resurrect a worker the snapshot had dropped.
                    if kv.mod_revision() <= cur.snapshot_rev {
                        continue;
                    }
                    let change = match ev.event_type() {
                        EventType::Put => decode(&cfg.cluster, kv.key(), kv.value()).map(Change::Put),
                        EventType::Delete => std::str::from_utf8(kv.key()).ok().and_then(|k| parse_worker_key(&cfg.cluster, k)).map(|(role, id)| Change::Delete { role, id }),
                    };
                    if let Some(c) = change {
                        if tx.send(c).await.is_err() {
                            return WatchEnd::Closed;
                        }
                    }
                }
                cur.next = Some(next);
            }
            _ = tokio::time::sleep_until(cur.resync_at) => {
                cur.resync_at = tokio::time::Instant::now() + cfg.resync_interval;
                match full_read(client, cfg, prefix).await {
                    Ok((records, rev)) => {
                        // Events up to `rev` still queued in the stream are
                        // in this snapshot already; they are skipped above.
                        cur.snapshot_rev = rev;
                        next = next.max(rev + 1);
                        cur.next = Some(next);
                        if tx.send(Change::Snapshot(records)).await.is_err() {
                            return WatchEnd::Closed;
                        }
                    }
                    Err(e) => return WatchEnd::Broken { why: format!("resync failed: {e}"), established: true },
                }
            }
            _ = tx.closed() => return WatchEnd::Closed,
        }
    }
}
