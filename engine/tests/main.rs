//! Every integration test of the engine in one test binary. Each module is one
//! subject (its file says which); one binary instead of one per file saves a
//! link of the whole dependency graph per file, the larger part of CI's build.
//! Run one subject with its module path, e.g.
//! `cargo test --release -p aerie-engine --test integration cuda_interp::`.

mod common;
mod cuda_interp;
mod cuda_smollm2;
mod hf_loader;
mod oracle_parity;
mod spec_tree;
mod tokenizer_bounds;
mod tree_parity;
