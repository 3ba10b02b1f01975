//! Router settings with their defaults.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The model name clients must send (`model`). Default `smollm2`.
    pub served_model_name: String,
    /// Target worker gRPC addresses (`http://host:port`).
    pub targets: Vec<String>,
    /// Draft worker gRPC addresses; empty means no speculation.
    pub drafts: Vec<String>,
    /// `round_robin`, `least_load` or `prefix_affinity`. Default `least_load`.
    pub policy: String,
    /// When set, requests need `Authorization: Bearer <key>`. Default none.
    pub api_key: Option<String>,
    /// Largest request body accepted, bytes; larger gets 413. Default 4 MiB.
    pub max_body_bytes: usize,
    /// Most stop strings per request. Default 16 (OpenAI allows 4).
    pub max_stop_strings: usize,
    /// How often workers are probed. Default 2 s.
    pub health_interval: Duration,
    /// Tokens hashed by the prefix-affinity policy. Default 64.
    pub prefix_tokens: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            served_model_name: "smollm2".into(),
            targets: Vec::new(),
            drafts: Vec::new(),
            policy: "least_load".into(),
            api_key: None,
            max_body_bytes: 4 << 20,
            max_stop_strings: 16,
            health_interval: Duration::from_secs(2),
            prefix_tokens: 64,
        }
    }
}
