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
