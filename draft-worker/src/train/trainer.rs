//! The training loop: AdamW over the feature cache, with checkpoints and
//! resume.
//!
//! Strategy: each optimizer step takes `batch_seqs` cached sequences (in a
//! per-epoch shuffled order seeded by `seed + epoch`), sums their losses,
//! normalizes by the trained rows, clips the global gradient norm and takes
//! one AdamW step under a linear-warmup, cosine-decay learning rate. Uniform
//! noise of width `noise` is added to the input features (EAGLE: the head
//! must cope with its own imperfect features at draft time).
//!
//! Every `checkpoint_every` steps and at the end the full state (weights,
//! both Adam moments, the step and position) goes to
//! `OUT/checkpoint/state.safetensors` + `state.json`, and the head itself to
//! `OUT/` in the published layout. A rerun with the same `OUT` resumes.

use super::features::FeatureCache;
use super::head_model::{cerr, HeadShape, PairBatch, TrainHead};
use super::validate::{validate, ValStats, VAL_TOPK};
use super::{io, read_json_if_exists};
use crate::eagle::EagleKind;
use crate::error::{DraftError, Result};
use crate::random_head::{d2t_offsets, draft_vocab_tensors, head_config, write_head_files};
use aerie_engine::loader::hf::SafetensorsDir;
use aerie_engine::Model;
use candle_core::{backprop::GradStore, Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// Training settings; the defaults trained the shipped head.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Head family. Default EAGLE-1/2; EAGLE-3 needs a cache with three aux layers.
    #[serde(default = "eagle")]
    pub kind: EagleKind,
    /// Passes over the cache. Default 4.
    pub epochs: usize,
    /// Peak learning rate. Default 1e-3 (a one-layer head from scratch).
    pub lr: f64,
    /// Linear warmup steps. Default 50.
    pub warmup_steps: usize,
    /// Sequences per optimizer step. Default 4.
    pub batch_seqs: usize,
    /// Width of the uniform noise on input features. Default 0.2 (EAGLE).
    /// EAGLE-3 adds none: training-time test is its remedy for imperfect
    /// features, as in the EAGLE-3 paper.
    pub noise: f32,
    /// Weight of the cross-entropy term. Default 0.1 (EAGLE). EAGLE-3's loss
    /// is the cross-entropy alone.
    pub ce_weight: f64,
    /// Hot vocabulary for the cross-entropy (most frequent answer tokens),
    /// and EAGLE-3's draft vocabulary. Default 8192.
    pub hot_vocab: usize,
    /// Global gradient-norm clip. Default 0.5 (EAGLE).
    pub grad_clip: f64,
    /// AdamW (β1, β2, weight decay). Default (0.9, 0.95, 0.0).
    pub betas: (f64, f64),
    pub weight_decay: f64,
    /// Seed for initialization, order and noise. Default 0.
    pub seed: u64,
    /// Steps between checkpoints. Default 100.
    pub checkpoint_every: usize,
    /// Pairs per sequence at most (the attention is n²). Default 1024.
    pub max_pairs: usize,
    /// Draft steps unrolled per sequence (training-time test). Default 1
    /// (EAGLE-1's single-step loss); the shipped head uses 3.
    #[serde(default = "one")]
    pub ttt_steps: usize,
    /// Loss weight of unrolled step `s` is `ttt_decay^s`. Default 0.8 (EAGLE-3).
    #[serde(default = "decay")]
    pub ttt_decay: f64,
    /// Start from this head (published layout) instead of a random one, e.g.
    /// to add training-time test to a head trained on single steps. Default none.
    #[serde(default)]
    pub init: Option<std::path::PathBuf>,
    /// Steps between held-out evaluations, when a validation cache is
    /// given ([`train_eagle_validated`]); they go to `OUT/val.csv`. Default 100.
    #[serde(default = "hundred")]
    pub val_every: usize,
}

fn hundred() -> usize {
    100
}

fn eagle() -> EagleKind {
    EagleKind::Eagle
}

fn one() -> usize {
    1
}

fn decay() -> f64 {
    0.8
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            kind: EagleKind::Eagle,
            epochs: 4,
            lr: 1e-3,
            warmup_steps: 50,
            batch_seqs: 4,
            noise: 0.2,
            ce_weight: 0.1,
            hot_vocab: 8192,
            grad_clip: 0.5,
            betas: (0.9, 0.95),
            weight_decay: 0.0,
            seed: 0,
            checkpoint_every: 100,
            max_pairs: 1024,
            ttt_steps: 1,
            ttt_decay: 0.8,
            init: None,
            val_every: 100,
        }
    }
}

/// Where a run stands; saved with every checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    pub step: usize,
    /// Steps the whole run takes.
    pub total_steps: usize,
    pub config: Option<TrainConfig>,
    /// Hot vocabulary (target ids), fixed at the start; EAGLE-3's draft vocabulary.
    pub hot_ids: Vec<u32>,
}

/// One logged step.
#[derive(Debug, Clone, Copy)]
pub struct StepLog {
    pub step: usize,
    pub lr: f64,
    pub loss: f32,
    pub l1: f32,
    pub ce: f32,
    pub acc: f32,
    /// Token accuracy at the last unrolled step (equals `acc` without unrolling).
    pub acc_last: f32,
}

struct AdamW {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    fn new(params: &[(String, Var)]) -> candle_core::Result<AdamW> {
        let z = |v: &Var| v.as_tensor().zeros_like();
        Ok(AdamW { m: params.iter().map(|(_, v)| z(v)).collect::<candle_core::Result<_>>()?, v: params.iter().map(|(_, v)| z(v)).collect::<candle_core::Result<_>>()? })
    }

    fn step(&mut self, params: &[(String, Var)], grads: &GradStore, cfg: &TrainConfig, lr: f64, t: usize) -> candle_core::Result<()> {
        let gs: Vec<Option<Tensor>> = params.iter().map(|(_, v)| grads.get(v.as_tensor()).cloned()).collect();
        let norm2: f64 = gs.iter().flatten().map(|g| g.sqr().and_then(|s| s.sum_all()).and_then(|s| s.to_scalar::<f32>()).map(|x| x as f64)).sum::<candle_core::Result<f64>>()?;
        let scale = if norm2.sqrt() > cfg.grad_clip { cfg.grad_clip / norm2.sqrt() } else { 1.0 };
        let (b1, b2) = cfg.betas;
        let (c1, c2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        for (i, ((_, p), g)) in params.iter().zip(gs).enumerate() {
            let Some(g) = g else { continue };
            let g = (g * scale)?;
            self.m[i] = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let upd = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + 1e-8)?)?;
            let decayed = (p.as_tensor() * (1.0 - lr * cfg.weight_decay))?;
            p.set(&(decayed - (upd * lr)?)?)?;
        }
        Ok(())
    }
}

fn lr_at(cfg: &TrainConfig, step: usize, total: usize) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let span = total.saturating_sub(cfg.warmup_steps).max(1) as f64;
    let p = ((step - cfg.warmup_steps) as f64 / span).min(1.0);
    cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
}

/// The most frequent assistant tokens of the cache, most frequent first.
pub fn hot_vocabulary(cache: &FeatureCache, vocab: usize, k: usize) -> Vec<u32> {
    let mut counts = vec![0u64; vocab];
    for i in 0..cache.len() {
        for (t, &m) in cache.tokens(i).iter().zip(cache.mask(i)) {
            if m == 1 && (*t as usize) < vocab {
                counts[*t as usize] += 1;
            }
        }
    }
    let mut ids: Vec<u32> = (0..vocab as u32).collect();
    ids.sort_by_key(|&t| (std::cmp::Reverse(counts[t as usize]), t));
    ids.truncate(k.min(vocab));
    ids
}

/// Writes the head in the published layout (f16) to `dir`. An EAGLE-3 head
/// also gets `d2t` (target id = i + d2t[i]) and `t2d` (which target ids
/// are drafted), and names its aux layers in `config.json`.
pub fn write_head(dir: &Path, target: &Model, head: &TrainHead) -> Result<()> {
    let mut tensors = Vec::new();
    for (name, v) in &head.params {
        let t = v.as_tensor();
        let data: Vec<f32> = t.flatten_all().and_then(|x| x.to_vec1()).map_err(cerr)?;
        tensors.push((name.clone(), t.dims().to_vec(), data.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(), safetensors::Dtype::F16));
    }
    let vocab = target.config.vocab_size;
    let config = match head.kind {
        EagleKind::Mtp => return write_mtp_checkpoint(dir, target, head),
        EagleKind::Eagle => head_config(&target.config, head.kind, head.shape.ff, vocab),
        EagleKind::Eagle3 => {
            let ids = &head.draft_ids;
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                return Err(DraftError::Train(format!("draft id {bad} is outside the target vocabulary of {vocab}")));
            }
            tensors.extend(draft_vocab_tensors(ids, vocab));
            let mut config = head_config(&target.config, head.kind, head.shape.ff, ids.len());
            config["eagle_config"] = serde_json::json!({ "eagle_aux_hidden_state_layer_ids": head.aux_layers });
            config
        }
    };
    write_head_files(dir, &tensors, &config)
}

/// Writes an MTP layer as MiMo publishes one: the target's whole body in
/// Hugging Face layout (f16, q/k/v biases as a Qwen2 body has, zero where
/// the target has none) plus `model.mtp_layers.0.*`, under a
/// `MiMoForCausalLM` config with `num_nextn_predict_layers: 1`. The
/// tokenizer files are the caller's (`Tokenizer::save_hf`): the trainer
/// sees only the model.
pub fn write_mtp_checkpoint(dir: &Path, target: &Model, head: &TrainHead) -> Result<()> {
    use aerie_engine::export::{hf_config, hf_tensors, write_hf_model, HfTensor};
    let mut tensors = hf_tensors(target, true)?;
    for (name, v) in &head.params {
        let t = v.as_tensor();
        tensors.push(HfTensor::new(name.clone(), t.dims().to_vec(), t.flatten_all().and_then(|x| x.to_vec1()).map_err(cerr)?));
    }
    let s = head.shape;
    let (qd, kvd) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    for (n, len) in [("q", qd), ("k", kvd), ("v", kvd)] {
        tensors.push(HfTensor::new(format!("model.mtp_layers.0.self_attn.{n}_proj.bias"), vec![len], vec![0.0; len]));
    }
    let mut config = hf_config(&target.config, "MiMoForCausalLM", None)?;
    config["model_type"] = serde_json::json!("mimo");
    config["num_nextn_predict_layers"] = serde_json::json!(1);
    Ok(write_hf_model(dir, &config, &tensors)?)
}

fn save_state(dir: &Path, head: &TrainHead, opt: &AdamW, state: &TrainState) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut map = std::collections::HashMap::new();
    for (i, (name, v)) in head.params.iter().enumerate() {
        map.insert(format!("param.{name}"), v.as_tensor().clone());
        map.insert(format!("m.{name}"), opt.m[i].clone());
        map.insert(format!("v.{name}"), opt.v[i].clone());
    }
    let tmp = dir.join("state.safetensors.tmp");
    candle_core::safetensors::save(&map, &tmp).map_err(cerr)?;
    std::fs::rename(&tmp, dir.join("state.safetensors")).map_err(io(dir))?;
    let p = dir.join("state.json");
    std::fs::write(&p, serde_json::to_string_pretty(state).expect("json")).map_err(io(&p))
}

/// Sets `head`'s parameters from a head written in the published layout
/// (`dir/model.safetensors`); every parameter must be there with its shape,
/// and an EAGLE-3 head must draft the same vocabulary.
fn load_head_weights(dir: &Path, head: &TrainHead) -> Result<()> {
    // The engine's reader, not candle's: candle cannot load the boolean
    // `t2d` of an EAGLE-3 head.
    let st = SafetensorsDir::open(dir)?;
    if head.kind == EagleKind::Eagle3 && st.ints("d2t")? != d2t_offsets(&head.draft_ids) {
        return Err(DraftError::Train(format!("{}: its draft vocabulary (d2t) differs from this run's; use the same data and --hot-vocab", dir.display())));
    }
    for (name, v) in &head.params {
        let (dims, data) = st.tensor(name)?;
        if dims != v.as_tensor().dims() {
            return Err(DraftError::Train(format!("{}: {name} is {dims:?}, this target's head needs {:?}", dir.display(), v.as_tensor().dims())));
        }
        v.set(&Tensor::from_vec(data, dims, &Device::Cpu).map_err(cerr)?).map_err(cerr)?;
    }
    Ok(())
}

/// Restores weights and Adam moments from the checkpoint in `dir`.
fn load_state(dir: &Path, head: &TrainHead, opt: &mut AdamW) -> Result<()> {
    let map = candle_core::safetensors::load(dir.join("state.safetensors"), &Device::Cpu).map_err(cerr)?;
    for (i, (name, v)) in head.params.iter().enumerate() {
        let get = |k: String| map.get(&k).cloned().ok_or_else(|| DraftError::Train(format!("checkpoint lacks {k}")));
        v.set(&get(format!("param.{name}"))?).map_err(cerr)?;
        opt.m[i] = get(format!("m.{name}"))?;
        opt.v[i] = get(format!("v.{name}"))?;
    }
    Ok(())
}

/// Builds one sequence's pairs: inputs `(x_{t+1}, f_t + noise)` (EAGLE-3:
/// `(x_{t+1}, aux_t)`, no noise), targets `f_{t+1}`.
pub(crate) fn pairs(target: &Model, cache: &FeatureCache, i: usize, kind: EagleKind, max_pairs: usize, noise: f32, rng: &mut impl Rng) -> Result<Option<PairBatch>> {
    let h = cache.meta.hidden_size;
    let tokens = cache.tokens(i);
    let n = tokens.len().min(max_pairs + 1);
    if n < 2 || !cache.mask(i)[1..n].contains(&1) {
        return Ok(None);
    }
    let hidden = cache.hidden(i);
    let emb = target.embed(&tokens[1..n]).map_err(DraftError::from)?;
    let (feat, width) = match kind {
        EagleKind::Eagle | EagleKind::Mtp => (hidden[..(n - 1) * h].iter().map(|&x| x + noise * (rng.gen::<f32>() - 0.5)).collect::<Vec<f32>>(), h),
        EagleKind::Eagle3 => {
            let w = h * cache.meta.aux_layers.len();
            let mut aux = cache.aux(i).ok_or_else(|| DraftError::Train("the feature cache holds no aux-layer outputs".into()))?;
            aux.truncate((n - 1) * w);
            (aux, w)
        }
    };
    let next = hidden[h..n * h].to_vec();
    let weight: Vec<f32> = cache.mask(i)[1..n].iter().map(|&m| m as f32).collect();
    let dev = Device::Cpu;
    let t = |v: Vec<f32>, w: usize| Tensor::from_vec(v, (n - 1, w), &dev).map_err(cerr);
    Ok(Some(PairBatch { emb: t(emb, h)?, feat: t(feat, width)?, next: t(next, h)?, weight: Tensor::from_vec(weight, n - 1, &dev).map_err(cerr)? }))
}

/// Trains an EAGLE-1/2 or EAGLE-3 head (`cfg.kind`) for `target` on `cache`, writing it to `out`.
/// `on_step` sees every step (progress bars, logs). Resumes from
/// `out/checkpoint` when present.
pub fn train_eagle(target: &Model, cache: &FeatureCache, out: &Path, cfg: &TrainConfig, on_step: &mut dyn FnMut(&StepLog, usize)) -> Result<Vec<StepLog>> {
    train_eagle_validated(target, cache, None, out, cfg, on_step, &mut |_, _| {})
}

/// [`train_eagle`], scoring the head on the held-out cache `val` (if any)
/// before the first step, every `cfg.val_every` steps and at the end:
/// each score goes to `OUT/val.csv` and to `on_val`.
pub fn train_eagle_validated(
    target: &Model,
    cache: &FeatureCache,
    val: Option<&FeatureCache>,
    out: &Path,
    cfg: &TrainConfig,
    on_step: &mut dyn FnMut(&StepLog, usize),
    on_val: &mut dyn FnMut(usize, &ValStats),
) -> Result<Vec<StepLog>> {
    let tc = &target.config;
    if cache.meta.hidden_size != tc.hidden_size || cache.meta.target != target.fingerprint {
        return Err(DraftError::Train(format!("the feature cache was built for another target ({})", cache.meta.target)));
    }
    if cache.is_empty() {
        return Err(DraftError::Train("the feature cache is empty".into()));
    }
    if let Some(v) = val {
        if v.meta.target != cache.meta.target || v.meta.aux_layers != cache.meta.aux_layers {
            return Err(DraftError::Train("the validation cache was built for another target or other aux layers than the training cache".into()));
        }
    }
    if cfg.kind == EagleKind::Eagle3 && cache.meta.aux_layers.len() != 3 {
        return Err(DraftError::Train(format!(
            "EAGLE-3 trains on three aux-layer outputs; this feature cache stores {:?} (build it with --kind eagle3)",
            cache.meta.aux_layers
        )));
    }
    let shape = HeadShape {
        hidden: tc.hidden_size,
        heads: tc.num_heads,
        kv_heads: tc.num_kv_heads,
        head_dim: tc.head_dim,
        ff: tc.intermediate_size,
        rms_eps: tc.rms_norm_eps as f64,
        rope_theta: tc.rope_theta,
    };
    let ck = out.join("checkpoint");
    let saved: Option<TrainState> = read_json_if_exists(&ck.join("state.json"))?;
    // The hot vocabulary is fixed by the first run; a resumed run reuses it.
    let hot_ids = match &saved {
        Some(s) => s.hot_ids.clone(),
        None => hot_vocabulary(cache, tc.vocab_size, cfg.hot_vocab),
    };
    let lm = target.weights.lm_head();
    let h = tc.hidden_size;
    let mut rows = vec![0.0f32; hot_ids.len() * h];
    for (r, &t) in hot_ids.iter().enumerate() {
        lm.row_f32(t as usize, &mut rows[r * h..(r + 1) * h]);
    }
    let lm_hot = Tensor::from_vec(rows.clone(), (hot_ids.len(), h), &Device::Cpu).map_err(cerr)?;
    let head = match cfg.kind {
        EagleKind::Mtp => TrainHead::init_mtp(shape, cfg.seed, 0.02)?,
        EagleKind::Eagle => TrainHead::init(shape, cfg.seed, 0.02)?,
        EagleKind::Eagle3 => TrainHead::init_eagle3(shape, cfg.seed, 0.02, cache.meta.aux_layers.clone(), hot_ids.clone(), rows)?,
    };
    if let Some(dir) = &cfg.init {
        load_head_weights(dir, &head)?;
    }
    let mut opt = AdamW::new(&head.params).map_err(cerr)?;
    let steps_per_epoch = cache.len().div_ceil(cfg.batch_seqs.max(1));
    let mut state = match saved {
        Some(s) => {
            load_state(&ck, &head, &mut opt)?;
            s
        }
        None => TrainState { step: 0, total_steps: steps_per_epoch * cfg.epochs, config: Some(cfg.clone()), hot_ids },
    };
    // EAGLE-3's loss is the cross-entropy alone (no L1 term to balance).
    let ce_weight = if cfg.kind == EagleKind::Eagle3 { 1.0 } else { cfg.ce_weight };
    let log_path = out.join("loss.csv");
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io(&log_path))?;
    if state.step == 0 {
        log_file.set_len(0).map_err(io(&log_path))?;
        writeln!(log_file, "step,lr,loss,smooth_l1,cross_entropy,token_accuracy,last_step_accuracy").map_err(io(&log_path))?;
    }
    let val_path = out.join("val.csv");
    let mut val_log = |step: usize, head: &TrainHead| -> Result<()> {
        let Some(v) = val else { return Ok(()) };
        let stats = validate(target, head, v, &lm_hot)?;
        let fresh = step == 0 || !val_path.exists();
        let mut f = std::fs::OpenOptions::new().create(true).append(!fresh).write(true).truncate(fresh).open(&val_path).map_err(io(&val_path))?;
        if fresh {
            writeln!(f, "step,acc_step0,acc_step1,acc_step2,top{VAL_TOPK}_step0,chain_tau,rows").map_err(io(&val_path))?;
        }
        let [a0, a1, a2] = stats.acc;
        writeln!(f, "{step},{a0:.4},{a1:.4},{a2:.4},{:.4},{:.4},{}", stats.topk, stats.chain_tau(), stats.rows).map_err(io(&val_path))?;
        on_val(step, &stats);
        Ok(())
    };
    if state.step == 0 {
        val_log(0, &head)?;
    }
    let mut logs = Vec::new();
    // The epoch's shuffled order, made once per epoch (and again on resume).
    let mut order: (usize, Vec<usize>) = (usize::MAX, Vec::new());
    while state.step < state.total_steps {
        let epoch = state.step / steps_per_epoch;
        if order.0 != epoch {
            let mut o: Vec<usize> = (0..cache.len()).collect();
            o.shuffle(&mut rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_add(epoch as u64)));
            order = (epoch, o);
        }
        let order = &order.1;
        let b = state.step % steps_per_epoch;
        let picked = &order[b * cfg.batch_seqs..((b + 1) * cfg.batch_seqs).min(order.len())];
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ (state.step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut parts = Vec::new();
        for &i in picked {
            if let Some(pb) = pairs(target, cache, i, cfg.kind, cfg.max_pairs, cfg.noise, &mut rng)? {
                parts.push(head.loss(&pb, &lm_hot, ce_weight, cfg.ttt_steps, cfg.ttt_decay)?);
            }
        }
        let rows: f32 = parts.iter().map(|p| p.rows).sum();
        let lr = lr_at(cfg, state.step, state.total_steps);
        if rows > 0.0 {
            let total = parts.iter().skip(1).try_fold(parts[0].total.clone(), |a, p| a + &p.total).map_err(cerr)?;
            let grads = (total / rows as f64).and_then(|l| l.backward()).map_err(cerr)?;
            opt.step(&head.params, &grads, cfg, lr, state.step + 1).map_err(cerr)?;
        }
        state.step += 1;
        let r = rows.max(1.0);
        let (l1, ce, correct, last) = parts.iter().fold((0.0, 0.0, 0.0, 0.0), |a, p| (a.0 + p.l1, a.1 + p.ce, a.2 + p.correct, a.3 + p.correct_last));
        let log = StepLog { step: state.step, lr, loss: (l1 + ce_weight as f32 * ce) / r, l1: l1 / r, ce: ce / r, acc: correct / r, acc_last: last / r };
        writeln!(log_file, "{},{:.3e},{:.5},{:.5},{:.5},{:.4},{:.4}", log.step, log.lr, log.loss, log.l1, log.ce, log.acc, log.acc_last).map_err(io(&log_path))?;
        on_step(&log, state.total_steps);
        logs.push(log);
        if state.step % cfg.checkpoint_every.max(1) == 0 || state.step == state.total_steps {
            save_state(&ck, &head, &opt, &state)?;
            write_head(out, target, &head)?;
        }
        if state.step % cfg.val_every.max(1) == 0 || state.step == state.total_steps {
            val_log(state.step, &head)?;
        }
    }
    write_head(out, target, &head)?;
    if cfg.kind != EagleKind::Eagle3 {
        // An FR-Spec token map for the head (EAGLE-3 carries its vocabulary in d2t).
        let hot = out.join("hot_vocab.json");
        std::fs::write(&hot, serde_json::to_string(&state.hot_ids).expect("json")).map_err(io(&hot))?;
    }
    Ok(logs)
}
