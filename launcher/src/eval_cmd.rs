//! `aerie eval-draft`: how well a drafter guesses the target, on a prompt
//! file, for any head and tree setting.
//!
//! Each prompt (a JSONL line with `turns[0]` as MT-bench writes it, or
//! `prompt`) is answered speculatively, EOS ignored, `--max-tokens` new
//! tokens. Reported: τ (tokens emitted per verify, `spec_accept_length`),
//! the acceptance rate, per-position acceptance (the share of verifies that
//! accepted at least d drafts), the histogram of accepted drafts, τ per
//! category (MT-bench's `category`), and with `--plain` the decode speed
//! against plain decoding of the same prompts, run back to back.

use crate::spec_args::SpecArgs;
use aerie_draft_worker::{ProposerFactory, SpecAlgorithm};
use aerie_engine::generate::{generate, GenerateRequest};
use aerie_engine::spec::speculative_generate;
use aerie_engine::{ChatMessage, DType, Engine, SamplingParams};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalDraftArgs {
    /// Target model name or path.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Draft head directory (sets --speculative-draft-model-path; the
    /// algorithm defaults to EAGLE).
    #[arg(long)]
    pub draft: Option<PathBuf>,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Prompt file (JSONL: `turns` or `prompt`, optional `category`).
    #[arg(long)]
    pub prompts: PathBuf,
    /// Prompts used, evenly spaced over the file (default: all).
    #[arg(long)]
    pub questions: Option<usize>,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also decode each prompt without speculation and report the speedup.
    #[arg(long)]
    pub plain: bool,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Default)]
struct Tally {
    emitted: usize,
    verifies: usize,
}

pub fn run(a: EvalDraftArgs) -> Result<()> {
    let mut spec = a.spec.clone();
    if let Some(d) = &a.draft {
        spec.speculative_draft_model_path = Some(d.clone());
        spec.speculative_algorithm.get_or_insert(SpecAlgorithm::Eagle);
    }
    spec.apply_mtp_defaults(&a.model);
    let Some(opts) = spec.options() else { bail!("give --draft DIR or --speculative-algorithm") };
    let tree = opts.tree;
    let engine = Engine::load(&a.model, DType::Auto).with_context(|| format!("loading {}", a.model))?;
    let factory = ProposerFactory::new(opts, engine.model.clone(), &engine.tokenizer).context("setting up the drafter")?;
    let text = std::fs::read_to_string(&a.prompts).with_context(|| format!("reading {}", a.prompts.display()))?;
    let mut items: Vec<(String, String)> = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{} line {}", a.prompts.display(), i + 1))?;
        let p = v["turns"][0].as_str().or(v["prompt"].as_str()).with_context(|| format!("{} line {}: no `turns` or `prompt`", a.prompts.display(), i + 1))?;
        items.push((p.to_string(), v["category"].as_str().unwrap_or("-").to_string()));
    }
    let n = a.questions.unwrap_or(items.len()).min(items.len());
    let picked: Vec<&(String, String)> = (0..n).map(|i| &items[i * items.len() / n.max(1)]).collect();
    let sampling = SamplingParams { temperature: a.temperature, seed: Some(a.seed), ..Default::default() };
    let mut hist: Vec<usize> = Vec::new();
    let (mut all, mut cats) = (Tally::default(), BTreeMap::<String, Tally>::new());
    let (mut spec_tokens, mut spec_secs, mut plain_tokens, mut plain_secs, mut proposed, mut draft_ms) = (0usize, 0.0, 0usize, 0.0, 0usize, 0.0);
    for (qi, (prompt, cat)) in picked.iter().enumerate() {
        let ids = engine.chat_prompt_ids(&[ChatMessage::new("user", prompt)])?;
        let req = GenerateRequest { prompt_ids: &ids, max_tokens: a.max_tokens, sampling: sampling.clone(), stop_ids: &[] };
        if a.plain {
            let out = generate(&engine.model, &req, &mut |_| {})?;
            plain_tokens += out.token_ids.len();
            plain_secs += out.stats.decode_ms / 1e3;
        }
        let mut p = factory.proposer();
        let (out, st) = speculative_generate(&engine.model, p.as_mut(), &req, &mut |_| {})?;
        spec_tokens += out.token_ids.len();
        spec_secs += out.stats.decode_ms / 1e3;
        proposed += st.spec_num_proposed_drafts;
        draft_ms += st.draft_ms;
        // The first token comes from the prefill, not a verify.
        let emitted = out.token_ids.len().saturating_sub(1);
        for t in [&mut all, cats.entry(cat.clone()).or_default()] {
            t.emitted += emitted;
            t.verifies += st.spec_verify_ct;
        }
        if hist.len() < st.spec_correct_drafts_histogram.len() {
            hist.resize(st.spec_correct_drafts_histogram.len(), 0);
        }
        for (h, c) in hist.iter_mut().zip(&st.spec_correct_drafts_histogram) {
            *h += c;
        }
        if !a.json {
            eprintln!("prompt {}/{}: τ {:.2}", qi + 1, n, emitted as f64 / st.spec_verify_ct.max(1) as f64);
        }
    }
    let tau = |t: &Tally| t.emitted as f64 / t.verifies.max(1) as f64;
    let total: usize = hist.iter().sum();
    let at_least: Vec<f64> = (1..hist.len()).map(|d| hist[d..].iter().sum::<usize>() as f64 / total.max(1) as f64).collect();
    let correct: usize = hist.iter().enumerate().map(|(i, c)| i * c).sum();
    let spec_rate = spec_tokens as f64 / spec_secs.max(1e-9);
    let plain_rate = plain_tokens as f64 / plain_secs.max(1e-9);
    let report = serde_json::json!({
        "prompts": n,
        "max_tokens": a.max_tokens,
        "temperature": a.temperature,
        "tree": {"num_steps": tree.num_steps, "topk": tree.topk, "num_draft_tokens": tree.num_draft_tokens},
        "tau": tau(&all),
        "accept_rate": correct as f64 / proposed.max(1) as f64,
        "accepted_at_least": at_least,
        "histogram": hist,
        "per_category_tau": cats.iter().map(|(k, t)| (k.clone(), tau(t))).collect::<BTreeMap<_, _>>(),
        "spec_tok_s": spec_rate,
        "draft_ms_per_verify": draft_ms / all.verifies.max(1) as f64,
        "plain_tok_s": a.plain.then_some(plain_rate),
        "speedup": a.plain.then_some(spec_rate / plain_rate),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{n} prompts, {} new tokens, temperature {}, tree (steps {}, topk {}, draft tokens {})", a.max_tokens, a.temperature, tree.num_steps, tree.topk, tree.num_draft_tokens);
    println!("tau {:.3}   accept rate {:.3}   decode {:.1} tok/s{}", tau(&all), report["accept_rate"].as_f64().unwrap_or(0.0), spec_rate, if a.plain { format!("   plain {plain_rate:.1} tok/s   speedup {:.2}x", spec_rate / plain_rate) } else { String::new() });
    println!("accepted >= d drafts:  {}", at_least.iter().enumerate().map(|(d, p)| format!("d{} {:.3}", d + 1, p)).collect::<Vec<_>>().join("  "));
    println!("histogram (verifies accepting exactly i): {hist:?}");
    println!("{:<14} {:>6}", "category", "tau");
    for (k, t) in &cats {
        println!("{:<14} {:>6.2}", k, tau(t));
    }
    Ok(())
}
