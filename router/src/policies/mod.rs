//! Routing policies: which healthy target worker gets a request.

pub mod least_load;
pub mod prefix_affinity;
pub mod round_robin;

use crate::worker::TargetHandle;
use std::sync::Arc;

/// Picks a target among healthy candidates (never empty when called).
pub trait RoutingPolicy: Send + Sync {
    /// The name used in flags and metric labels.
    fn name(&self) -> &'static str;
    /// Index into `candidates`.
    fn pick(&self, candidates: &[Arc<TargetHandle>], prompt: &[u32]) -> usize;
}

/// A policy by its flag name.
pub fn by_name(name: &str, prefix_tokens: usize) -> Result<Box<dyn RoutingPolicy>, String> {
    match name {
        "round_robin" => Ok(Box::new(round_robin::RoundRobin::default())),
        "least_load" => Ok(Box::new(least_load::LeastLoad)),
        "prefix_affinity" => Ok(Box::new(prefix_affinity::PrefixAffinity { prefix_tokens })),
        o => Err(format!("unknown routing policy `{o}` (round_robin, least_load, prefix_affinity)")),
    }
}
