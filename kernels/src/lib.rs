//! Aerie's hot loops.
//!
//! `cpu` holds the SIMD kernels the CPU backend runs: ggml-compatible block
//! quantization, quantized and f32 matrix multiplication, and the small
//! element-wise ops of a Llama layer. `cuda` holds the CUDA C sources that a
//! GPU backend compiles at run time with NVRTC (see `docs/architecture.md`).
//!
//! Every kernel here is *batch invariant*: the value written for one output
//! row never depends on how many other rows were in the same call. Speculative
//! verification relies on this, so that scoring a tree of k tokens in one call
//! gives bit-identical logits to scoring its paths one token at a time.

pub mod cpu;
pub mod cuda;
