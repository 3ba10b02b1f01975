//! Least load.
//!
//! Strategy: the candidate with the fewest requests, counting what its last
//! `GetLoad` reported (running + waiting, refreshed every health interval)
//! plus the requests this router has sent it since and not seen finish.
//! Ties go to the earliest in the worker list. No parameters.

use super::RoutingPolicy;
use crate::worker::{TargetHandle, Worker};
use std::sync::Arc;

pub struct LeastLoad;

impl RoutingPolicy for LeastLoad {
    fn name(&self) -> &'static str {
        "least_load"
    }
    fn pick(&self, candidates: &[Arc<TargetHandle>], _prompt: &[u32]) -> usize {
        candidates.iter().enumerate().min_by_key(|(_, t)| t.load()).map(|(i, _)| i).unwrap_or(0)
    }
}
