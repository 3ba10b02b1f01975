//! Every integration test of the drafters in one test binary. Each module is one
//! subject (its file says which); one binary instead of one per file saves a
//! link of the whole dependency graph per file, the larger part of CI's build.
//! Run one subject with its module path, e.g.
//! `cargo test --release -p aerie-draft-worker --test integration batched_draft::`.

mod common;
mod batched_draft;
mod cuda_heads;
mod cuda_lossless;
mod greedy_lossless;
mod head_loading;
mod mtp;
mod sampling_lossless;
mod train_tiny;
