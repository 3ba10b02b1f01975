//! aerie-bench: serving benchmarks over OpenAI-compatible endpoints, the
//! library behind `aerie bench serve | sweep | compare`.
//!
//! - [`dataset`], [`categories`]: prompts with categories;
//! - [`runner`], [`schedule`]: streamed requests under a concurrency or a
//!   Poisson request rate, interleaved across servers;
//! - [`stats`], [`summary`]: percentiles, pooled τ, per-category figures;
//! - [`servers`]: local `aerie serve` clusters and the llama.cpp peer;
//! - [`sweep`]: the speculative-settings grid;
//! - [`report`], [`plot`]: Markdown and SVG.

pub mod categories;
pub mod dataset;
pub mod error;
pub mod plot;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod servers;
pub mod stats;
pub mod summary;
pub mod sweep;

pub use error::{BenchError, Result};
