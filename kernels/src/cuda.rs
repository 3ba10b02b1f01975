//! CUDA C kernel sources for the GPU backend.
//!
//! The sources are plain CUDA C, compiled at run time with NVRTC (loaded
//! dynamically through cudarc, so nothing here links against CUDA). They
//! mirror the CPU kernels' block formats. The GPU backend that launches them
//! is not part of this release; `docs/architecture.md` says how it slots in.

/// Q4_1 weight × f32 activation matrix-vector product, one warp per output
/// feature; the same math as `cpu::matmul` without activation quantization.
pub const MATVEC_Q4_1: &str = include_str!("../cuda/matvec_q4_1.cu");
