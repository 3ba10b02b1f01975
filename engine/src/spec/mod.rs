//! Speculative decoding building blocks shared by drafters and verifiers.
//! Groundwork for the speculative core (issue 3): tree settings, tree
//! selection and greedy tree verification. Proposers and sampling
//! verification build on these.

pub mod tree;
pub mod verify;

pub use tree::{Candidate, DraftTree, TreeSpec};
pub use verify::{greedy_verify, Accepted};
