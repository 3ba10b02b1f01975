//! The router's Prometheus metrics (same naming guide as
//! `aerie_proto::metric_names`: units spelled out, `_total` only on counters).

/// Counter, labels `endpoint`, `status` (HTTP code): finished requests.
pub const REQUESTS: &str = "aerie_router_requests_total";
/// Histogram: request start to first streamed token, seconds.
pub const TTFT: &str = "aerie_router_time_to_first_token_seconds";
/// Histogram: gap between streamed chunks, seconds.
pub const ITL: &str = "aerie_router_inter_token_latency_seconds";
/// Histogram: request start to last byte, seconds.
pub const E2E: &str = "aerie_router_e2e_latency_seconds";
/// Counter: prompt tokens of served requests.
pub const PROMPT_TOKENS: &str = "aerie_router_prompt_tokens_total";
/// Counter: completion tokens of served requests.
pub const COMPLETION_TOKENS: &str = "aerie_router_completion_tokens_total";
/// Gauge: requests in flight.
pub const IN_FLIGHT: &str = "aerie_router_in_flight_requests";
/// Gauge, labels `role`, `worker`: 1 when the worker answers its health check.
pub const WORKER_HEALTHY: &str = "aerie_router_worker_healthy";
/// Counter, labels `policy`, `speculative`, `worker` (the target address): routing decisions.
pub const ROUTING_DECISIONS: &str = "aerie_router_routing_decisions_total";
/// Gauge: open HTTP connections.
pub const OPEN_CONNECTIONS: &str = "aerie_router_open_connections";
/// Counter: connections closed at once because `--max-connections` were open.
pub const CONNECTIONS_REFUSED: &str = "aerie_router_connections_refused_total";
/// Counter: prompts refused before being tokenized whole (over the context).
pub const PROMPTS_CUT_SHORT: &str = "aerie_router_prompts_refused_early_total";
