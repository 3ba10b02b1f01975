//! Prefix affinity.
//!
//! Strategy: requests whose prompts share their first `prefix_tokens` tokens
//! (a system prompt, a few-shot header, an earlier turn) go to the same
//! target, where a prefix cache can reuse them. Rendezvous hashing: each
//! candidate scores hash(prefix, worker address) and the highest wins, so
//! when a worker leaves only its own prefixes move.
//!
//! Parameters: `prefix_tokens` (the router's `--prefix-tokens`, default 64;
//! shorter prompts hash whole).

use super::RoutingPolicy;
use crate::worker::{TargetHandle, Worker};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

pub struct PrefixAffinity {
    pub prefix_tokens: usize,
}

fn score(prefix: &[u32], addr: &str) -> u64 {
    // Fixed keys: every router process must agree on the mapping.
    let mut h = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
    prefix.hash(&mut h);
    addr.hash(&mut h);
    h.finish()
}

impl RoutingPolicy for PrefixAffinity {
    fn name(&self) -> &'static str {
        "prefix_affinity"
    }
    fn pick(&self, candidates: &[Arc<TargetHandle>], prompt: &[u32]) -> usize {
        let prefix = &prompt[..prompt.len().min(self.prefix_tokens)];
        candidates.iter().enumerate().max_by_key(|(_, t)| score(prefix, t.addr())).map(|(i, _)| i).unwrap_or(0)
    }
}
