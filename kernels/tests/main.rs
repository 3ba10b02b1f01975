//! Every integration test of the kernels in one test binary. Each module is one
//! subject (its file says which); one binary instead of one per file saves a
//! link of the whole dependency graph per file, the larger part of CI's build.
//! Run one subject with its module path, e.g.
//! `cargo test --release -p aerie-kernels --test integration cuda_interp::`.

mod cuda_interp;
mod kernels;
mod nvrtc_cubin;
