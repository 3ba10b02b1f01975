//! Aerie's wire contract, package `aerie.v1` (see `proto/aerie.proto`).
//!
//! - [`v1::target_service_server::TargetService`]: a target worker generates
//!   tokens, verifying draft trees itself.
//! - [`v1::draft_service_server::DraftService`]: a draft worker serves one
//!   long-lived `Session` stream per target worker and proposes trees for
//!   every sequence multiplexed on it.

pub mod v1 {
    tonic::include_proto!("aerie.v1");
}

pub mod metric_names;
pub mod transport;

/// Largest gRPC message any Aerie process sends or accepts. Both ends of
/// every channel use it, so a message one side may send the other accepts.
/// (A 16k-token prompt's EAGLE features inline are about 38 MB.)
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// HTTP/2 keep-alive between processes, both ways (clients and servers
/// ping), so a peer that vanishes without closing its socket (power loss, a
/// network cut, SIGSTOP) is noticed within interval + timeout, 10 s, not at
/// the kernel's TCP timeout (minutes).
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a keep-alive ping may go unanswered.
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
