//! Aerie's router: the OpenAI-compatible front door.
//!
//! - [`openai`]: request and response types, with unknown fields refused;
//! - [`error`]: the OpenAI error schema and the status each failure gets;
//! - [`logprobs`]: OpenAI's chat and completions `logprobs` shapes;
//! - [`text`]: incremental detokenization and stop strings across tokens;
//! - [`worker`]: the `Worker` trait, target and draft handles, the registry
//!   and its health checks;
//! - [`policies`]: routing policies, one file each;
//! - [`server`]: the HTTP handlers that tie them together;
//! - [`http`]: the HTTP/1.1 server under them, with its connection limits.

pub mod config;
pub mod error;
pub mod http;
pub mod logprobs;
pub mod metrics_names;
pub mod openai;
pub mod policies;
pub mod server;
pub mod text;
pub mod tools;
pub mod worker;

pub use config::RouterConfig;
pub use http::HttpLimits;
pub use server::{router_app, RouterState};
