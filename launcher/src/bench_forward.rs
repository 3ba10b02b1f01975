//! `aerie bench forward`: the forward pass alone, on any device — prefill,
//! batch-1 decode steps, and the verify cost curve (one tree of k nodes
//! scored in one call, k = 1…64), the figures that say whether speculation
//! can pay on that device: a verify of k tokens must cost little more than
//! a decode of one.
//!
//! `--random-weights` builds the model of a `config.json`'s shape with
//! random weights in memory (`aerie_engine::random`), so large shapes (the
//! Llama-3.1-8B one) are measured without a checkpoint. On a device the
//! report adds the weight bytes read per step and, given `--peak-gbs`, the
//! fraction of memory bandwidth a decode step reaches.

use aerie_engine::cuda::select::{open_device, DeviceSpec};
use aerie_engine::{AttnMask, DType, Engine, ForwardOptions, KvCache, LogitsRows, Model, SeqInput};
use aerie_kernels::cpu::ops::argmax;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::Path;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct ForwardBenchArgs {
    /// Model name or path; with --random-weights, a config.json or a
    /// directory holding one.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Random weights of the model's shape instead of its checkpoint.
    #[arg(long)]
    pub random_weights: bool,
    /// `cpu` or `cuda[:N]` (AERIE_CUDA_INTERPRET=1: the interpreter).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,
    /// Timed decode steps (after two untimed ones).
    #[arg(long, default_value_t = 32)]
    pub decode_steps: usize,
    /// Tree sizes of the verify curve.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
    pub verify_sizes: Vec<usize>,
    /// Repetitions of each verify size (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// The device's memory bandwidth in GB/s (H100 SXM: 3350), for the
    /// fraction of it that a decode step reaches.
    #[arg(long)]
    pub peak_gbs: Option<f64>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// `auto` measures the batch-invariant kernels (what serving with
    /// speculation runs); `library` measures cuBLAS, for their cost.
    #[command(flatten)]
    pub gemm: crate::device_args::GemmArgs,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// A timed greedy decode from a synthetic prompt: what `bench forward` and
/// `bench tp` both measure.
pub struct GreedyRun {
    pub prefill_ms: f64,
    /// The median of the timed steps.
    pub decode_ms: f64,
    /// The first token and one per step.
    pub ids: Vec<u32>,
    pub cache: KvCache,
}

/// Prefills `prompt_len` synthetic tokens, then decodes `warmup` untimed and
/// `steps` timed greedy steps at batch 1.
pub fn greedy_decode(model: &Model, prompt_len: usize, steps: usize, warmup: usize) -> Result<GreedyRun> {
    let vocab = model.config.vocab_size as u64;
    let prompt: Vec<u32> = (0..prompt_len as u64).map(|i| ((i * 7919 + 13) % vocab) as u32).collect();
    let opts = ForwardOptions::default();
    let mut cache = model.new_cache();
    let t = Instant::now();
    let out = model.forward(&mut [SeqInput { cache: &mut cache, tokens: &prompt, positions: None, mask: AttnMask::Causal, logits: LogitsRows::Last }], &opts)?;
    let prefill_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut ids = vec![argmax(&out[0].logits).0 as u32];
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let t = Instant::now();
        let next = *ids.last().unwrap_or(&0);
        let out = model.forward(&mut [SeqInput { cache: &mut cache, tokens: &[next], positions: None, mask: AttnMask::Causal, logits: LogitsRows::Last }], &opts)?;
        ids.push(argmax(&out[0].logits).0 as u32);
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(GreedyRun { prefill_ms, decode_ms: median(&mut times), ids, cache })
}

fn load(a: &ForwardBenchArgs) -> Result<Model> {
    if a.random_weights {
        let p = Path::new(&a.model);
        let dir = if p.is_dir() { p } else { p.parent().unwrap_or(Path::new(".")) };
        let cfg = aerie_engine::loader::hf::read_config(dir)?;
        return Ok(aerie_engine::random::random_model(cfg, 0)?);
    }
    let e = Engine::load(&a.model, DType::Auto).with_context(|| format!("loading model `{}`", a.model))?;
    std::sync::Arc::try_unwrap(e.model).map_err(|_| anyhow::anyhow!("the model is shared"))
}

pub fn run(a: ForwardBenchArgs) -> Result<()> {
    if a.prompt_len == 0 || a.verify_sizes.iter().any(|&k| k == 0 || k > 64) {
        bail!("--prompt-len must be positive and --verify-sizes within 1..=64");
    }
    let device = open_device(a.device)?;
    let t = Instant::now();
    let mut model = load(&a)?;
    let cfg = model.config.clone();
    let max_k = a.verify_sizes.iter().copied().max().unwrap_or(1);
    let tokens_needed = a.prompt_len + a.decode_steps + 2 + max_k + 16;
    if tokens_needed > cfg.max_position_embeddings {
        bail!("{tokens_needed} positions needed, the model has {}", cfg.max_position_embeddings);
    }
    if let Some(dev) = device {
        model = model.to_device(dev, tokens_needed)?;
    }
    // As a target worker chooses: `auto` measures what serving with
    // speculation runs, `library` cuBLAS.
    a.gemm.apply_target(&model)?;
    let load_s = t.elapsed().as_secs_f64();
    let vocab = cfg.vocab_size as u64;
    let run = greedy_decode(&model, a.prompt_len, a.decode_steps, 2)?;
    let (prefill_ms, decode_ms, mut cache) = (run.prefill_ms, run.decode_ms, run.cache);
    let next = *run.ids.last().unwrap_or(&0);
    let opts = ForwardOptions::default();

    let mut curve = Vec::new();
    for &k in &a.verify_sizes {
        let parents: Vec<Option<usize>> = (0..k).map(|i| i.checked_sub(1)).collect();
        let mask = AttnMask::from_parents(&parents)?;
        let tokens: Vec<u32> = (0..k as u64).map(|i| ((i * 104_729 + next as u64) % vocab) as u32).collect();
        let base = cache.len();
        let mut times = Vec::new();
        for _ in 0..a.reps.max(1) + 1 {
            let t = Instant::now();
            model.forward(&mut [SeqInput { cache: &mut cache, tokens: &tokens, positions: None, mask: mask.clone(), logits: LogitsRows::All }], &opts)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            cache.truncate(base);
        }
        times.remove(0); // warm-up
        curve.push((k, median(&mut times)));
    }
    let t1 = curve.iter().find(|c| c.0 == 1).map(|c| c.1);

    let params = {
        let (h, i, hd) = (cfg.hidden_size as f64, cfg.intermediate_size as f64, cfg.head_dim as f64);
        let attn = h * hd * (2.0 * cfg.num_heads as f64 + 2.0 * cfg.num_kv_heads as f64);
        let layer = attn + 3.0 * h * i;
        let head = if cfg.tie_word_embeddings { 0.0 } else { cfg.vocab_size as f64 * h };
        cfg.num_layers as f64 * layer + head + cfg.vocab_size as f64 * h
    };
    // On a device every weight is bf16 and a decode step reads each once
    // (the embedding only one row, left out).
    let step_bytes = (params - cfg.vocab_size as f64 * cfg.hidden_size as f64 * if cfg.tie_word_embeddings { 0.0 } else { 1.0 }) * 2.0;
    let on_device = model.cuda().is_some();
    let gbs = step_bytes / (decode_ms / 1e3) / 1e9;
    let report = serde_json::json!({
        "device": model.device_name(),
        "batch_invariant": model.batch_invariant(),
        "model": a.model,
        "random_weights": a.random_weights,
        "params": params,
        "load_s": load_s,
        "prompt_len": a.prompt_len,
        "prefill_ms": prefill_ms,
        "prefill_tok_s": a.prompt_len as f64 / (prefill_ms / 1e3),
        "decode_ms": decode_ms,
        "decode_tok_s": 1e3 / decode_ms,
        "weight_gb_per_s": on_device.then_some(gbs),
        "bandwidth_fraction": a.peak_gbs.filter(|_| on_device).map(|p| gbs / p),
        "verify_ms": curve.iter().map(|(k, ms)| serde_json::json!({"k": k, "ms": ms, "ratio_to_k1": t1.map(|t| ms / t)})).collect::<Vec<_>>(),
    });
    if a.json {
        println!("{report}");
        return Ok(());
    }
    let gemm = if model.batch_invariant() { "batch-invariant projections" } else { "library GEMM (cuBLAS)" };
    println!("{} on {} ({:.2} B parameters, loaded in {:.1} s), {gemm}", a.model, model.device_name(), params / 1e9, load_s);
    println!("prefill {} tokens: {prefill_ms:.1} ms ({:.0} tok/s)", a.prompt_len, a.prompt_len as f64 / (prefill_ms / 1e3));
    print!("decode (batch 1): {decode_ms:.2} ms/step, {:.1} tok/s", 1e3 / decode_ms);
    if on_device {
        print!(", {gbs:.0} GB/s of bf16 weights");
        if let Some(p) = a.peak_gbs {
            print!(" ({:.0}% of {p:.0})", 100.0 * gbs / p);
        }
    }
    println!();
    println!("| k | verify ms | time(k)/time(1) |\n|---|---|---|");
    for (k, ms) in &curve {
        println!("| {k} | {ms:.2} | {} |", t1.map_or("-".into(), |t| format!("{:.2}", ms / t)));
    }
    Ok(())
}
