//! `--device` and `--mem-fraction-static` for the workers (SGLang's names):
//! where a worker's model runs, and how much of the device's memory the
//! weights and the static KV pool may take.
//!
//! The pool is sized as SGLang sizes it: after the weights, the KV pool gets
//! what is left of `mem-fraction-static × device memory`, capped by
//! `--max-total-tokens` when that is given smaller, and by the memory free
//! on the device when the worker starts (another process on the same GPU,
//! such as a colocated draft worker, may hold some). Too little memory for
//! the weights, or for one page of KV per running request, is an error that
//! says how much was needed and how much there is.

use aerie_engine::config::ModelConfig;
use aerie_engine::cuda::kv::PAGE_SIZE;
use aerie_engine::cuda::select::DeviceSpec;
use aerie_engine::{DType, Model};
use aerie_kernels::cuda::device::Device;
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use std::sync::Arc;

/// How a device runs its projections.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmMode {
    /// Batch-invariant where speculation can run (target workers; `generate`
    /// and `serve` with a drafter), the library GEMM for plain decoding.
    Auto,
    /// Aerie's kernels: each row reduced in a fixed order, whatever else is
    /// in the batch, so greedy speculation equals plain decoding.
    BatchInvariant,
    /// cuBLAS: faster on large batches, but a row's logits may depend on
    /// the batch (speculation is then no longer lossless).
    Library,
}

/// `--gemm-mode`, and SGLang's `--enable-deterministic-inference`.
#[derive(Args, Debug, Clone)]
pub struct GemmArgs {
    /// Projections on a CUDA device: `auto`, `batch-invariant` or `library`
    /// (cuBLAS). No effect on the CPU, which is batch invariant, nor on draft
    /// heads, which always run the batch-invariant kernels.
    #[arg(long, value_enum, default_value = "auto")]
    pub gemm_mode: GemmMode,
    /// Batch-invariant kernels everywhere (SGLang's flag; the same as
    /// `--gemm-mode batch-invariant`).
    #[arg(long)]
    pub enable_deterministic_inference: bool,
}

impl GemmArgs {
    /// Whether projections run batch invariant, for a process that
    /// `speculates` (or may).
    pub fn batch_invariant(&self, speculates: bool) -> bool {
        match (self.enable_deterministic_inference, self.gemm_mode) {
            (true, _) | (_, GemmMode::BatchInvariant) => true,
            (_, GemmMode::Library) => false,
            (_, GemmMode::Auto) => speculates,
        }
    }

    /// The flags for a child process.
    pub fn to_args(&self) -> Vec<String> {
        let mode = self.gemm_mode.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_else(|| "auto".into());
        let mut v = vec!["--gemm-mode".to_string(), mode];
        if self.enable_deterministic_inference {
            v.push("--enable-deterministic-inference".into());
        }
        v
    }

    /// Sets `model`'s projections for a process that `speculates` and says
    /// which in the log; returns whether they are batch invariant. Library
    /// GEMMs with speculation are refused (not lossless); under `auto`, a
    /// device whose cuBLAS cannot load keeps the invariant kernels, while
    /// `library` asked for is then an error at start, not at the first
    /// request. The CPU is batch invariant whatever is asked.
    pub fn apply(&self, model: &Model, speculates: bool) -> Result<bool> {
        self.set(model, speculates, speculates)
    }

    /// For a target worker: `auto` is batch invariant (drafts may come at
    /// any time), and `library` is allowed (the worker then verifies no
    /// drafts).
    pub fn apply_target(&self, model: &Model) -> Result<bool> {
        self.set(model, true, false)
    }

    fn set(&self, model: &Model, auto_invariant: bool, refuse_library: bool) -> Result<bool> {
        let Some(dev) = model.cuda().map(|c| c.device().clone()) else { return Ok(true) };
        let mut on = self.batch_invariant(auto_invariant);
        if refuse_library && !on {
            bail!("--gemm-mode library makes a row's logits depend on its batch, so speculation would not be lossless: use batch-invariant (or auto)");
        }
        if !on {
            if let Err(e) = dev.library_gemm_ready() {
                if self.gemm_mode == GemmMode::Library {
                    bail!("--gemm-mode library: {e}");
                }
                tracing::warn!("cuBLAS unavailable ({e}); plain decoding keeps the batch-invariant kernels");
                on = true;
            }
        }
        model.set_batch_invariant(on);
        tracing::info!("device projections: {}", if on { "batch-invariant kernels" } else { "library GEMM (cuBLAS)" });
        Ok(on)
    }
}

#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// `cpu`, or `cuda[:N]`: the forward pass on a CUDA GPU (bf16 weights,
    /// paged bf16 KV). AERIE_CUDA_INTERPRET=1 makes `cuda` the interpreter,
    /// which runs the CUDA kernels on the CPU (slow; for tests).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Fraction of the device's memory for the weights and the static KV
    /// pool (SGLang's flag; the rest is for activations).
    #[arg(long, default_value_t = 0.85, value_parser = parse_fraction)]
    pub mem_fraction_static: f64,
    /// Weight precision (SGLang's names): `auto` (the checkpoint's own
    /// quantization on the CPU, bf16 on a GPU), `bfloat16` or `float16`
    /// (GPU weights; activations f32 and the KV cache bf16 either way),
    /// `float32` (CPU).
    #[arg(long, default_value = "auto")]
    pub dtype: DType,
    #[command(flatten)]
    pub gemm: GemmArgs,
}

fn parse_fraction(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f < 1.0 => Ok(f),
        _ => Err(format!("`{s}` is not a fraction strictly between 0 and 1")),
    }
}

impl DeviceArgs {
    /// The same flags for a child process (`aerie serve`).
    pub fn to_args(&self) -> Vec<String> {
        let dev = match self.device {
            DeviceSpec::Cpu => "cpu".to_string(),
            DeviceSpec::Cuda(n) => format!("cuda:{n}"),
        };
        let dtype = match self.dtype {
            DType::Auto => "auto",
            DType::F32 => "float32",
            DType::BFloat16 => "bfloat16",
            DType::Float16 => "float16",
        };
        let mut v = vec!["--device".into(), dev, "--mem-fraction-static".into(), self.mem_fraction_static.to_string(), "--dtype".into(), dtype.into()];
        v.extend(self.gemm.to_args());
        v
    }

    /// The precision to load the checkpoint in for this device, or why the
    /// `--dtype` given cannot run there.
    pub fn load_dtype(&self) -> Result<DType> {
        self.dtype.for_device(self.device != DeviceSpec::Cpu).map_err(anyhow::Error::msg)
    }
}

/// Bytes of bf16 weights a model takes on the device (norms and biases are
/// f32 and small; counted as bf16 here).
pub fn device_weight_bytes(cfg: &ModelConfig, layers: usize) -> u64 {
    let (h, i, hd) = (cfg.hidden_size as u64, cfg.intermediate_size as u64, cfg.head_dim as u64);
    let attn = h * hd * (2 * cfg.num_heads as u64 + 2 * cfg.num_kv_heads as u64);
    let layer = attn + 3 * h * i + 2 * h;
    let head = if cfg.tie_word_embeddings { 0 } else { cfg.vocab_size as u64 * h };
    2 * (layers as u64 * layer + cfg.vocab_size as u64 * h + head + h)
}

/// Bytes of bf16 K and V per token over `layers` layers.
pub fn kv_bytes_per_token(cfg: &ModelConfig, layers: usize) -> u64 {
    2 * 2 * layers as u64 * (cfg.num_kv_heads * cfg.head_dim) as u64
}

/// What a process may take of the memory free when it starts: the rest is
/// headroom for activations, its own and those of processes already there.
const FREE_SHARE: f64 = 0.9;

/// KV tokens that fit: `fraction × total` (this process's share of the
/// device, as SGLang's `--mem-fraction-static`), but never more than
/// [`FREE_SHARE`] of what is `free` now (another process, such as a
/// colocated draft worker, may hold memory already), less the weights, in
/// whole pages, at most `cap`. So processes with shares that add up to less
/// than the device (a colocated target at 0.75 and its draft at 0.1) each
/// get their share whichever starts first.
pub fn kv_tokens_that_fit(cfg: &ModelConfig, layers: usize, free_bytes: u64, total_bytes: u64, fraction: f64, cap: usize) -> Result<usize> {
    let share = (total_bytes as f64 * fraction) as u64;
    let budget = share.min((free_bytes as f64 * FREE_SHARE) as u64);
    let weights = device_weight_bytes(cfg, layers);
    let per_token = kv_bytes_per_token(cfg, layers).max(1);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if weights + per_token * PAGE_SIZE as u64 > budget {
        bail!(
            "not enough device memory: the weights need {:.2} GiB plus KV pages; --mem-fraction-static {fraction} of {:.2} GiB is {:.2} GiB and {:.2} GiB are free",
            gib(weights),
            gib(total_bytes),
            gib(share),
            gib(free_bytes)
        );
    }
    let fit = ((budget - weights) / per_token) as usize / PAGE_SIZE * PAGE_SIZE;
    Ok(fit.min(cap))
}

/// `model` on `dev` with a KV pool of up to `kv_tokens` tokens (what
/// `--mem-fraction-static` leaves after the weights). Logs where it went
/// and what it took.
pub fn place(model: Model, dev: Arc<dyn Device>, a: &DeviceArgs, kv_tokens: usize) -> Result<Model> {
    let (_, total) = dev.memory();
    let tokens = kv_tokens_that_fit(&model.config, model.weights.layers.len(), dev.free_memory() as u64, total as u64, a.mem_fraction_static, kv_tokens)?;
    let name = dev.name();
    let t = std::time::Instant::now();
    let model = model.to_device_as(dev, tokens, aerie_engine::cuda::WeightFormat::of(a.dtype))?;
    let (used, total) = model.cuda().map(|c| c.device().memory()).unwrap_or_default();
    tracing::info!(
        "model on {name} in {:.1} s: {:.2} GiB of {:.2} GiB in use, KV pool {tokens} tokens",
        t.elapsed().as_secs_f64(),
        used as f64 / (1u64 << 30) as f64,
        total as f64 / (1u64 << 30) as f64
    );
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2_shape() -> ModelConfig {
        let v = serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": true});
        ModelConfig::from_hf_json(std::path::Path::new("config.json"), &v).unwrap()
    }

    #[test]
    fn the_pool_gets_what_the_fraction_leaves_after_the_weights() {
        let c = smollm2_shape();
        assert_eq!(kv_bytes_per_token(&c, 30), 30 * 2 * 2 * 192);
        let w = device_weight_bytes(&c, 30);
        assert!((260_000_000..280_000_000).contains(&w), "{w}");
        let total = 4u64 << 30;
        let fit = kv_tokens_that_fit(&c, 30, total, total, 0.5, usize::MAX).unwrap();
        assert_eq!(fit % PAGE_SIZE, 0);
        let expect = ((total / 2 - w) / kv_bytes_per_token(&c, 30)) as usize;
        assert!(fit <= expect && fit + PAGE_SIZE > expect, "{fit} vs {expect}");
        assert_eq!(kv_tokens_that_fit(&c, 30, total, total, 0.5, 1000).unwrap(), 1000);
        let err = kv_tokens_that_fit(&c, 30, 300 << 20, 300 << 20, 0.5, 1000).unwrap_err().to_string();
        assert!(err.contains("not enough device memory") && err.contains("GiB"), "{err}");
    }

    #[test]
    fn gemm_modes_choose_invariance_by_whether_speculation_runs() {
        let g = |gemm_mode, det| GemmArgs { gemm_mode, enable_deterministic_inference: det };
        assert!(g(GemmMode::Auto, false).batch_invariant(true));
        assert!(!g(GemmMode::Auto, false).batch_invariant(false));
        assert!(!g(GemmMode::Library, false).batch_invariant(true));
        assert!(g(GemmMode::BatchInvariant, false).batch_invariant(false));
        assert!(g(GemmMode::Library, true).batch_invariant(false), "SGLang's flag wins");
        assert_eq!(g(GemmMode::BatchInvariant, true).to_args(), ["--gemm-mode", "batch-invariant", "--enable-deterministic-inference"]);
        assert_eq!(g(GemmMode::Auto, false).to_args(), ["--gemm-mode", "auto"]);
    }

    /// Memory another process holds (a draft worker on the same GPU) takes
    /// nothing from this one's share while the share fits in 90% of what is
    /// free; past that the budget is 90% of the free memory.
    #[test]
    fn memory_held_by_another_process_is_counted() {
        let c = smollm2_shape();
        let total = 4u64 << 30;
        let alone = kv_tokens_that_fit(&c, 30, total, total, 0.5, usize::MAX).unwrap();
        // 1 GiB held elsewhere: the 2 GiB share still fits in 90% of 3 GiB.
        assert_eq!(kv_tokens_that_fit(&c, 30, 3u64 << 30, total, 0.5, usize::MAX).unwrap(), alone);
        // 2 GiB held elsewhere: 90% of the 2 GiB free, 0.2 GiB less.
        let shared = kv_tokens_that_fit(&c, 30, 2u64 << 30, total, 0.5, usize::MAX).unwrap();
        let per_token = kv_bytes_per_token(&c, 30) as usize;
        let missing = ((2usize << 30) / 10) / per_token;
        assert!(alone - shared + PAGE_SIZE >= missing && alone - shared <= missing + PAGE_SIZE, "{alone} vs {shared}");
        // A colocated pair: target 0.75 and draft 0.1 get their shares in either order.
        let (t, d) = (0.75, 0.1);
        let target_first = kv_tokens_that_fit(&c, 30, total, total, t, usize::MAX).unwrap();
        let draft_after = kv_tokens_that_fit(&c, 1, total - (total as f64 * t) as u64, total, d, usize::MAX).unwrap();
        assert_eq!(draft_after, kv_tokens_that_fit(&c, 1, total, total, d, usize::MAX).unwrap());
        assert_eq!(kv_tokens_that_fit(&c, 30, total - (total as f64 * d) as u64, total, t, usize::MAX).unwrap(), target_first);
        let err = kv_tokens_that_fit(&c, 30, 250 << 20, total, 0.5, usize::MAX).unwrap_err().to_string();
        assert!(err.contains("is 2.00 GiB and 0.24 GiB are free"), "{err}");
    }
}
