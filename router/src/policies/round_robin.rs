//! Round-robin.
//!
//! Strategy: the n-th request goes to candidate n mod (number of healthy
//! targets). No parameters. Even spread when requests cost the same; blind
//! to load otherwise.

use super::RoutingPolicy;
use crate::worker::TargetHandle;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoutingPolicy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }
    fn pick(&self, candidates: &[Arc<TargetHandle>], _prompt: &[u32]) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % candidates.len()
    }
}
