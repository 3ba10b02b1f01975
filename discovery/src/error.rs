//! Discovery errors.

/// What can go wrong talking to the directory.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// etcd could not be reached or answered with an error.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A call did not finish in time (etcd down or partitioned).
    #[error("etcd did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The lease is gone (expired during an outage, or revoked).
    #[error("lease {0:x} is gone")]
    LeaseLost(i64),
    /// A configuration value is unusable.
    #[error("{0}")]
    Config(String),
}

impl DiscoveryError {
    /// Stable label for metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            DiscoveryError::Etcd(_) => "etcd",
            DiscoveryError::Timeout(_) => "timeout",
            DiscoveryError::LeaseLost(_) => "lease_lost",
            DiscoveryError::Config(_) => "config",
        }
    }
}

/// Bounds an etcd call: the client's channel connects lazily and a call to
/// a dead endpoint can otherwise wait far longer than a lease lives.
pub(crate) async fn bounded<T>(limit: std::time::Duration, f: impl std::future::Future<Output = Result<T, etcd_client::Error>>) -> Result<T, DiscoveryError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(DiscoveryError::from),
        Err(_) => Err(DiscoveryError::Timeout(limit)),
    }
}
