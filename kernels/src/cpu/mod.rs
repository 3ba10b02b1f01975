//! CPU kernels. Quantized formats follow ggml's block layouts byte for byte,
//! so GGUF tensors are used in place without conversion.

pub mod attention;
pub mod blocks;
pub mod ggml_math;
pub mod matmul;
pub mod ops;
pub mod pool;
mod simd;

pub use blocks::{BlockFormat, QK};
pub use matmul::{Matrix, MatrixError, WeightData};
