//! Every integration test of the `aerie` binary and its clusters in one test binary. Each module is one
//! subject (its file says which); one binary instead of one per file saves a
//! link of the whole dependency graph per file, the larger part of CI's build.
//! Run one subject with its module path, e.g.
//! `cargo test --release -p aerie-launcher --test integration bench::`.

mod common;
mod bench;
mod cli;
mod client;
mod cuda_ipc;
mod cluster;
mod discovery;
mod router;
mod soak;
mod tp;
