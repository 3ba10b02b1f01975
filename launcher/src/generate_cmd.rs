//! `aerie generate`: one prompt, streamed to the terminal or as JSON.

use crate::spec_args::SpecArgs;
use aerie_draft_worker::ProposerFactory;
use aerie_engine::generate::{generate, GenerateRequest};
use aerie_engine::spec::{speculative_generate, SpecStats};
use aerie_engine::{ChatMessage, DType, Engine, SamplingParams, StreamDecoder};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model name (`smollm2`) or path to a GGUF file / Hugging Face directory.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Prompt text (a user message unless --raw).
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long)]
    pub prompt_file: Option<std::path::PathBuf>,
    /// Skip the chat template; special-token text such as <|im_start|> is parsed.
    #[arg(long)]
    pub raw: bool,
    /// Optional system message (chat mode).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Weight precision (SGLang's names): `auto` keeps the file's
    /// quantization on the CPU and is bf16 on a GPU; `float32` (`f32`)
    /// dequantizes at load (CPU); `bfloat16` and `float16` hold the GPU's
    /// weights in that format.
    #[arg(long, default_value = "auto")]
    pub dtype: DType,
    /// `cpu`, or `cuda[:N]`: the forward pass on a CUDA device (bf16 weights,
    /// paged bf16 KV). With AERIE_CUDA_INTERPRET=1 that device is the
    /// interpreter, which runs the CUDA kernels on the CPU (slow; for tests).
    #[arg(long, default_value = "cpu")]
    pub device: aerie_engine::cuda::select::DeviceSpec,
    #[command(flatten)]
    pub gemm: crate::device_args::GemmArgs,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Keep generating after an end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    #[command(flatten)]
    pub spec: SpecArgs,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let sampling = SamplingParams { temperature: a.temperature, top_p: a.top_p, top_k: a.top_k, min_p: a.min_p, seed: a.seed, ..Default::default() };
    sampling.validate().map_err(anyhow::Error::msg)?;
    let prompt = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => bail!("give --prompt or --prompt-file"),
    };
    let t_load = Instant::now();
    // The device first: no driver is an error before minutes of loading.
    let dtype = a.dtype.for_device(a.device != aerie_engine::cuda::select::DeviceSpec::Cpu).map_err(anyhow::Error::msg)?;
    let device = aerie_engine::cuda::select::open_device(a.device)?;
    let mut engine = Engine::load(&a.model, dtype).with_context(|| format!("loading model `{}`", a.model))?;
    // The drafter's head (or STANDALONE model) drafts on the same device.
    let mut draft_device = None;
    if let Some(dev) = device {
        let model = std::sync::Arc::try_unwrap(engine.model).map_err(|_| anyhow::anyhow!("the model is shared"))?;
        // Room for the prompt (no more tokens than bytes, plus the chat
        // template's), the answer, and a verified tree past its end.
        let prompt_bound = prompt.len() + a.system.as_ref().map_or(0, String::len) + 256;
        let tokens = model.config.max_position_embeddings.min(prompt_bound + a.max_tokens + 256);
        draft_device = Some((dev.clone(), tokens));
        engine.model = std::sync::Arc::new(model.to_device_as(dev, tokens, aerie_engine::cuda::WeightFormat::of(dtype))?);
    }
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let prompt_ids = if a.raw {
        engine.raw_prompt_ids(&prompt)?
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::new("system", s));
        }
        msgs.push(ChatMessage::new("user", &prompt));
        engine.chat_prompt_ids(&msgs)?
    };
    let stop_ids = if a.ignore_eos { Vec::new() } else { engine.tokenizer.eos_ids.clone() };
    let req = GenerateRequest { prompt_ids: &prompt_ids, max_tokens: a.max_tokens, sampling, stop_ids: &stop_ids };
    let mut dec = StreamDecoder::new(true);
    let mut stdout = std::io::stdout();
    let json = a.json;
    let tok = &engine.tokenizer;
    let mut spec = a.spec.clone();
    spec.apply_mtp_defaults(&a.model);
    spec.apply_shipped_head_defaults(|| aerie_draft_worker::shipped_head(&engine.model));
    let factory = match spec.options() {
        Some(o) => Some(ProposerFactory::new_on(o, engine.model.clone(), &engine.tokenizer, draft_device).context("setting up speculative decoding")?),
        None => None,
    };
    a.gemm.apply(&engine.model, factory.is_some())?;
    let mut on_token = |id| {
        if !json {
            if let Ok(Some(text)) = dec.push(tok, id) {
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
        }
    };
    let (out, spec): (_, Option<SpecStats>) = match &factory {
        Some(f) => {
            let mut p = f.proposer();
            let (o, s) = speculative_generate(&engine.model, p.as_mut(), &req, &mut on_token)?;
            (o, Some(s))
        }
        None => (generate(&engine.model, &req, &mut on_token)?, None),
    };
    let mut stdout = std::io::stdout().lock();
    if json {
        let text = engine.tokenizer.decode(&out.token_ids, true)?;
        let mut v = serde_json::json!({
            "prompt_ids": prompt_ids,
            "token_ids": out.token_ids,
            "text": text,
            "finish_reason": out.finish_reason,
            "stats": {
                "load_ms": load_ms,
                "prompt_tokens": out.stats.prompt_tokens,
                "completion_tokens": out.stats.completion_tokens,
                "prefill_ms": out.stats.prefill_ms,
                "decode_ms": out.stats.decode_ms,
                "prefill_tok_s": out.stats.prefill_tok_s,
                "decode_tok_s": out.stats.decode_tok_s,
                "threads": aerie_kernels::cpu::pool::threads(),
                "batch_invariant": engine.model.batch_invariant(),
                "peak_rss_mb": peak_rss_mb(),
            }
        });
        if let (Some(s), Some(f)) = (&spec, &factory) {
            let stats = v["stats"].as_object_mut().expect("stats object");
            for (k, val) in serde_json::to_value(s)?.as_object().expect("spec stats object") {
                stats.insert(k.clone(), val.clone());
            }
            let t = f.options().tree;
            v["speculative"] = serde_json::json!({
                "algorithm": format!("{:?}", f.options().algorithm).to_uppercase(),
                "num_steps": t.num_steps,
                "eagle_topk": t.topk,
                "num_draft_tokens": t.num_draft_tokens,
                // Through its shortest decimal form, so 0.3 prints as 0.3, not as the f32's f64 widening.
                "min_draft_score": f.options().min_draft_score.to_string().parse::<f64>().unwrap_or(0.0),
                "token_map": f.options().token_map.as_ref().map(|p| p.display().to_string()),
            });
        }
        writeln!(stdout, "{v}")?;
    } else {
        writeln!(stdout)?;
        eprintln!(
            "[{} prompt tokens, {} generated, prefill {:.1} tok/s, decode {:.1} tok/s, finish: {:?}]",
            out.stats.prompt_tokens, out.stats.completion_tokens, out.stats.prefill_tok_s, out.stats.decode_tok_s, out.finish_reason
        );
        if let Some(s) = &spec {
            eprintln!("[speculative: {} verifies, accept length {:.2}, accept rate {:.2}]", s.spec_verify_ct, s.spec_accept_length, s.spec_accept_rate);
        }
    }
    Ok(())
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
