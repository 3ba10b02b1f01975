//! Flags for cluster mode: where etcd is, which cluster, and how a worker
//! names and advertises itself there. Without `--etcd-endpoints` every
//! process works as before (static worker lists, no registration).

use aerie_discovery::{Registration, RegistrationConfig, Role, Status, WorkerRecord};
use anyhow::{Context, Result};
use clap::Args;
use std::net::SocketAddr;

#[derive(Args, Debug, Clone)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated. Workers register there; the router
    /// discovers workers there.
    #[arg(long, env = "AERIE_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Cluster name: routers and workers with the same name find each other.
    #[arg(long, env = "AERIE_CLUSTER", default_value = "default")]
    pub cluster: String,
}

#[derive(Args, Debug, Clone)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The address others dial, `http://host:port` (default: the bound host
    /// and port, or this machine's hostname when bound to 0.0.0.0).
    #[arg(long, env = "AERIE_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// This worker's id in the cluster (default: `<hostname>-<grpc port>`).
    #[arg(long, env = "AERIE_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Lease time to live, seconds: how long a killed worker stays listed.
    #[arg(long, default_value_t = 10)]
    pub lease_ttl_secs: i64,
}

/// What a worker tells [`RegisterArgs::register`] about itself.
pub struct Registrant {
    pub role: Role,
    pub grpc: SocketAddr,
    pub model_fingerprint: String,
    pub capacity: u32,
}

impl RegisterArgs {
    /// Registers the worker (call once it is ready to serve); `None` when
    /// etcd is not in use.
    pub fn register(&self, who: Registrant) -> Result<Option<Registration>> {
        if self.etcd.etcd_endpoints.is_empty() {
            return Ok(None);
        }
        let hostname = Some(aerie_proto::transport::hostname()).filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".into());
        let host = if who.grpc.ip().is_unspecified() { hostname.clone() } else { who.grpc.ip().to_string() };
        let addr = self.advertise_addr.clone().unwrap_or_else(|| format!("http://{host}:{}", who.grpc.port()));
        if !(addr.starts_with("http://") || addr.starts_with("https://")) {
            anyhow::bail!("--advertise-addr `{addr}` must start with http:// or https://");
        }
        let id = self.worker_id.clone().unwrap_or_else(|| format!("{hostname}-{}", who.grpc.port()));
        let record = WorkerRecord { id, role: who.role, addr, model_fingerprint: who.model_fingerprint, capacity: who.capacity, host: aerie_proto::transport::host_id(), status: Status::Ready };
        let cfg = RegistrationConfig { endpoints: self.etcd.etcd_endpoints.clone(), cluster: self.etcd.cluster.clone(), ttl_secs: self.lease_ttl_secs, ..Default::default() };
        let reg = Registration::start(cfg, record).context("registering in etcd")?;
        tracing::info!(key = reg.key(), "registering in etcd");
        Ok(Some(reg))
    }
}
