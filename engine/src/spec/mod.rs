//! Speculative decoding: draft trees with SGLang's semantics, the proposer
//! trait drafters implement, greedy and sampling tree verification, and the
//! target-side decode loop (propose → verify → commit → catch-up).

pub mod budget;
pub mod decode;
pub mod proposer;
pub mod tree;
pub mod verify;

pub use decode::{speculative_generate, step_batch, SpecSession, SpecStats};
pub use proposer::{FeatureKind, Features, NoProposer, Proposer};
pub use tree::{Candidate, DraftTree, TreeSpec};
pub use verify::{greedy_verify, greedy_verify_lazy, sample_verify, Accepted};
