//! Aerie's target worker: it holds the target model, serves
//! `aerie.v1.TargetService`, and drives speculation itself.
//!
//! - [`service`]: the gRPC surface; validates requests and admits them.
//! - [`scheduler`]: continuous batching at step granularity; every running
//!   request is verified in one batched forward per step.
//! - [`remote_draft`]: the long-lived session to each draft worker and the
//!   [`Proposer`](aerie_engine::spec::Proposer) that speaks over it, falling
//!   back to plain decoding when the draft worker fails.
//! - [`collective`]: the collectives of a tensor-parallel group (shared
//!   memory between processes on the CPU).

pub mod collective;
pub mod config;
pub mod error;
pub mod remote_draft;
pub mod scheduler;
pub mod service;

pub use config::{FeatureTransportMode, TargetConfig};
pub use error::TargetError;
pub use service::TargetServer;
