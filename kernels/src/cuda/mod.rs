//! CUDA C kernels for the GPU backend, and the interpreter that runs them on
//! the CPU.
//!
//! The sources are plain CUDA C in `kernels/cuda/`, one kernel per file, with
//! the helpers they share in `common.cuh`. On a GPU they are compiled at run
//! time with NVRTC (loaded dynamically through cudarc, so nothing here links
//! against CUDA); CI also compiles each for sm_80 and sm_90 with nvcc and
//! records ptxas's register and spill figures (`tests/cuda/`). With
//! `AERIE_CUDA_INTERPRET=1` the same sources, compiled as host C++ by
//! `build.rs`, run on the CPU through [`interp`]. [`reference`] holds a plain
//! Rust reference of every kernel, which the tests hold both against.

pub mod device;
pub mod driver;
pub mod interp;
pub mod interp_ipc;
pub mod nvrtc;
pub mod reference;

/// A kernel source file: its name and text.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub file: &'static str,
    pub text: &'static str,
}

/// The header every kernel includes, for NVRTC's in-memory include list.
pub const COMMON_HEADER: Source = Source { file: "common.cuh", text: include_str!("../../cuda/common.cuh") };

/// Every kernel source, in file-name order.
pub const SOURCES: &[Source] = &[
    Source { file: "add.cu", text: include_str!("../../cuda/add.cu") },
    Source { file: "argmax.cu", text: include_str!("../../cuda/argmax.cu") },
    Source { file: "attention.cu", text: include_str!("../../cuda/attention.cu") },
    Source { file: "copy_rows.cu", text: include_str!("../../cuda/copy_rows.cu") },
    Source { file: "embedding.cu", text: include_str!("../../cuda/embedding.cu") },
    Source { file: "kv_append.cu", text: include_str!("../../cuda/kv_append.cu") },
    Source { file: "kv_move.cu", text: include_str!("../../cuda/kv_move.cu") },
    Source { file: "linear.cu", text: include_str!("../../cuda/linear.cu") },
    Source { file: "matvec_q4_1.cu", text: include_str!("../../cuda/matvec_q4_1.cu") },
    Source { file: "rms_norm.cu", text: include_str!("../../cuda/rms_norm.cu") },
    Source { file: "rope.cu", text: include_str!("../../cuda/rope.cu") },
    Source { file: "sample_dist.cu", text: include_str!("../../cuda/sample_dist.cu") },
    Source { file: "silu_mul.cu", text: include_str!("../../cuda/silu_mul.cu") },
    Source { file: "to_bf16.cu", text: include_str!("../../cuda/to_bf16.cu") },
    Source { file: "topk_rows.cu", text: include_str!("../../cuda/topk_rows.cu") },
    Source { file: "tree_sample.cu", text: include_str!("../../cuda/tree_sample.cu") },
];
