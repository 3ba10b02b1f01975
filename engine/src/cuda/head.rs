//! A draft head's layers on a device: EAGLE-1/2, EAGLE-3 and MTP heads are
//! an input projection, one or more decoder layers and a projection to draft
//! logits, which is what [`DeviceHead`] runs, with its own paged KV pool.
//!
//! What differs between the kinds stays with the caller (the draft worker's
//! `EagleHead`): it builds the projection's input rows on the host (the
//! embedding beside the incoming feature, normed or not), since those rows
//! are a few kilobytes and the features arrive in host memory anyway. The
//! device does everything that reads weights: the projection, the layers,
//! the norms and the lm_head. EAGLE-3's midlayer attends over
//! `[input_norm(embedding), hidden_norm(state)]`: the caller gives the first
//! half (`side`), the device norms the state and sets the two side by side.
//!
//! The weights are bf16 like the target's, and every kernel is the batch-
//! invariant one the target uses, so a sequence drafts the same tokens
//! whatever else shares the call. Drafts only have to be good guesses (the
//! target verifies every token), but reproducible ones.

use super::kv::{CudaSeq, KvPool};
use super::layer::{upload_inv_freq, CudaSeqInput, DeviceBatch, DeviceLayer, LayerWeights, Ops, Scratch, WeightFormat};
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::kv::KvCache;
use crate::model::{AttnMask, LogitsRows};
use aerie_kernels::cuda::device::{Device, DeviceBuffer, DeviceExt};
use aerie_kernels::cuda::interp::KernelArg as A;
use std::sync::Arc;

/// A head's weights on the host (dense f32), for [`DeviceHead::new`].
pub struct HeadWeights<'a> {
    /// The input projection `[hidden, width]`, its bias, and `width`.
    pub fc: Option<(&'a [f32], Option<&'a [f32]>, usize)>,
    pub layers: Vec<LayerWeights<'a>>,
    /// EAGLE-3: the norm of the state half of the attention input.
    pub hidden_norm: Option<&'a [f32]>,
    /// MTP (MiMo): a norm of the last layer's output, which is then both the
    /// next state and the lm_head input.
    pub out_norm: Option<&'a [f32]>,
    /// EAGLE-3, NextN: the norm before the lm_head.
    pub final_norm: Option<&'a [f32]>,
    /// The draft logits' rows: their values `[rows, hidden]` (the head's
    /// own, or the target's, all of them or a token map's), or rows another
    /// head already holds on the same device (MTP layers of one chain share
    /// the target's).
    pub lm_head: LmHead<'a>,
}

/// Where a head's lm_head rows come from.
pub enum LmHead<'a> {
    Upload(&'a [f32]),
    /// Rows already on the device, and how many.
    Shared(Arc<DeviceBuffer>, usize),
}

/// What enters a head's layers for each new row.
pub enum HeadInput<'a> {
    /// Rows of the input projection's width (a target feature with its
    /// embedding beside it, or EAGLE-3's three aux layers).
    Project(&'a [f32]),
    /// Hidden-wide rows used as they are (an EAGLE-3 draft state).
    States(&'a [f32]),
}

/// One sequence's rows in a [`DeviceHead::forward`] call.
pub struct HeadSeq<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    pub positions: &'a [u32],
    pub mask: AttnMask,
}

pub struct DeviceHead {
    pub config: ModelConfig,
    dev: Arc<dyn Device>,
    fc: Option<(DeviceBuffer, Option<DeviceBuffer>, usize)>,
    layers: Vec<DeviceLayer>,
    hidden_norm: Option<DeviceBuffer>,
    out_norm: Option<DeviceBuffer>,
    final_norm: Option<DeviceBuffer>,
    lm_head: Arc<DeviceBuffer>,
    lm_rows: usize,
    inv_freq: DeviceBuffer,
    pool: Arc<KvPool>,
}

impl DeviceHead {
    /// Uploads a head (matrices bf16, norms and biases f32) with a KV pool
    /// of `max_total_tokens` over its layers.
    pub fn new(dev: Arc<dyn Device>, config: &ModelConfig, w: HeadWeights, max_total_tokens: usize) -> Result<DeviceHead> {
        let h = config.hidden_size;
        let (lm_head, lm_rows) = match w.lm_head {
            LmHead::Upload(v) if v.is_empty() || v.len() % h != 0 => {
                return Err(EngineError::InvalidInput(format!("a draft lm_head of {} values for hidden size {h}", v.len())))
            }
            LmHead::Upload(v) => (Arc::new(dev.upload_slice(&WeightFormat::Bf16.bits(v)?)?), v.len() / h),
            LmHead::Shared(b, rows) if b.len() != rows * h * 2 => {
                return Err(EngineError::InvalidInput(format!("a shared draft lm_head of {} bytes for {rows} rows of {h}", b.len())))
            }
            LmHead::Shared(b, rows) => (b, rows),
        };
        let f32s = |v: &[f32]| dev.upload_slice(v);
        let fc = match w.fc {
            Some((m, b, width)) => Some((dev.upload_slice(&WeightFormat::Bf16.bits(m)?)?, b.map(f32s).transpose()?, width)),
            None => None,
        };
        let layers = w.layers.into_iter().map(|l| DeviceLayer::upload(&dev, l, WeightFormat::Bf16)).collect::<Result<Vec<_>>>()?;
        let pool = KvPool::new(dev.clone(), layers.len(), config.num_kv_heads * config.head_dim, max_total_tokens)?;
        Ok(DeviceHead {
            config: config.clone(),
            fc,
            layers,
            hidden_norm: w.hidden_norm.map(f32s).transpose()?,
            out_norm: w.out_norm.map(f32s).transpose()?,
            final_norm: w.final_norm.map(f32s).transpose()?,
            lm_head,
            lm_rows,
            inv_freq: upload_inv_freq(&dev, config)?,
            pool,
            dev,
        })
    }

    pub fn device(&self) -> &Arc<dyn Device> {
        &self.dev
    }

    /// A cache on this head's KV pool.
    pub fn new_cache(&self) -> KvCache {
        KvCache::on_device(&self.config, CudaSeq::new(&self.pool))
    }

    /// Rows of the draft logits.
    pub fn draft_vocab(&self) -> usize {
        self.lm_rows
    }

    /// The lm_head rows on the device, for another head to share.
    pub fn lm_head(&self) -> LmHead<'static> {
        LmHead::Shared(self.lm_head.clone(), self.lm_rows)
    }

    fn ops(&self) -> Ops<'_> {
        // Drafts use the invariant kernels too: a sequence's draft does not
        // depend on what else is drafted with it.
        Ops { dev: &self.dev, eps: self.config.rms_norm_eps, invariant: true, format: WeightFormat::Bf16 }
    }

    /// Runs the sequences' new rows (stacked in `input`, and in `side` for
    /// EAGLE-3) through the layers, appending them to the caches; returns
    /// the output states, stacked (`rows × hidden`).
    pub fn forward(&self, seqs: &mut [HeadSeq], input: HeadInput, side: Option<&[f32]>) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let h = cfg.hidden_size;
        let ops = self.ops();
        let mut batch = Vec::with_capacity(seqs.len());
        for s in seqs.iter_mut() {
            let seq = s.cache.device.as_mut().ok_or_else(|| EngineError::InvalidInput("a host KV cache given to a head on a device".into()))?;
            batch.push(CudaSeqInput { seq, tokens: s.tokens, positions: Some(s.positions), mask: s.mask.clone(), logits: LogitsRows::None });
        }
        // No position limit of the head's own: published heads' configs say
        // 2048 while drafting for far longer contexts (the target's limit
        // applies), and the host path has none either.
        let b = DeviceBatch::new(&self.dev, cfg.vocab_size, usize::MAX, &mut batch)?;
        let t = b.rows;
        if t == 0 {
            return Ok(Vec::new());
        }
        let x = match (input, &self.fc) {
            (HeadInput::Project(rows), Some((w, bias, width))) => {
                if rows.len() != t * width {
                    return Err(EngineError::InvalidInput(format!("{} projection inputs for {t} rows of {width}", rows.len())));
                }
                let inp = self.dev.upload_slice(rows)?;
                let x = self.dev.alloc(t * h * 4)?;
                ops.linear(&inp, (w, 0), bias.as_ref().map(|b| (b, 0)), &x, t, h, *width)?;
                x
            }
            (HeadInput::Project(_), None) => return Err(EngineError::InvalidInput("this head has no input projection".into())),
            (HeadInput::States(rows), _) => {
                if rows.len() != t * h {
                    return Err(EngineError::InvalidInput(format!("{} state values for {t} rows of {h}", rows.len())));
                }
                self.dev.upload_slice(rows)?
            }
        };
        let scratch = Scratch::new(&self.dev, cfg, t)?;
        // EAGLE-3's attention input: the caller's normed embedding, then the
        // normed state, side by side.
        let cat = match (side, &self.hidden_norm) {
            (Some(e), Some(norm)) => {
                if e.len() != t * h {
                    return Err(EngineError::InvalidInput(format!("{} side values for {t} rows of {h}", e.len())));
                }
                let e = self.dev.upload_slice(e)?;
                let cat = self.dev.alloc(t * 2 * h * 4)?;
                ops.copy_rows(&e, h, None, t, &cat, 0, 2 * h, t, h)?;
                Some((cat, norm))
            }
            (None, None) => None,
            _ => return Err(EngineError::InvalidInput("EAGLE-3 heads, and only they, take a side input".into())),
        };
        for (li, l) in self.layers.iter().enumerate() {
            if let Some((cat, norm)) = &cat {
                ops.rms_norm(&x, norm, &scratch.xn, t, h)?;
                ops.copy_rows(&scratch.xn, h, None, t, cat, h * 4, 2 * h, t, h)?;
            }
            l.run(&ops, cfg, &self.inv_freq, &b, &self.pool, li, &x, cat.as_ref().map(|c| &c.0), &scratch)?;
        }
        DeviceBatch::commit(&mut batch);
        let out = match &self.out_norm {
            Some(w) => {
                ops.rms_norm(&x, w, &scratch.xn, t, h)?;
                &scratch.xn
            }
            None => &x,
        };
        Ok(self.dev.download_vec(out, 0, t * h)?)
    }

    /// Draft logits (`rows × draft vocab`) of output states: the head's
    /// final norm, if it has one, then its lm_head.
    pub fn logits(&self, states: &[f32]) -> Result<Vec<f32>> {
        let rows = states.len() / self.config.hidden_size;
        match self.logits_on_device(states)? {
            Some(l) => Ok(self.dev.download_vec(&l, 0, rows * self.lm_rows)?),
            None => Ok(Vec::new()),
        }
    }

    /// Each row's `k` most likely draft tokens (draft-vocabulary ids) with
    /// their probabilities, picked on the device (`topk_rows`): only these
    /// pairs leave it, not the logits. Fewer than `k` where a row has fewer
    /// candidates.
    pub fn top_k(&self, states: &[f32], k: usize) -> Result<Vec<Vec<(u32, f32)>>> {
        let rows = states.len() / self.config.hidden_size;
        let Some(logits) = self.logits_on_device(states)? else { return Ok(Vec::new()) };
        let k = k.min(self.lm_rows).max(1);
        let (ids, probs) = (self.dev.alloc(rows * k * 4)?, self.dev.alloc(rows * k * 4)?);
        // SAFETY: logits holds rows × lm_rows f32; ids and probs rows × k.
        unsafe {
            self.dev.launch(
                "topk_rows",
                aerie_kernels::cuda::interp::LaunchConfig::linear(rows as u32, 256),
                &[logits.arg(), ids.arg(), probs.arg(), A::I32(rows as i32), A::I32(self.lm_rows as i32), A::I32(k as i32)],
            )?;
        }
        let ids: Vec<i32> = self.dev.download_vec(&ids, 0, rows * k)?;
        let probs: Vec<f32> = self.dev.download_vec(&probs, 0, rows * k)?;
        Ok(ids.chunks(k).zip(probs.chunks(k)).map(|(i, p)| i.iter().zip(p).filter(|(&i, _)| i >= 0).map(|(&i, &p)| (i as u32, p)).collect()).collect())
    }

    /// The lm_head of output states (after the final norm), left on the
    /// device; `None` for no rows.
    fn logits_on_device(&self, states: &[f32]) -> Result<Option<DeviceBuffer>> {
        let h = self.config.hidden_size;
        let rows = states.len() / h;
        if rows == 0 {
            return Ok(None);
        }
        let ops = self.ops();
        let x = self.dev.upload_slice(states)?;
        let input = match &self.final_norm {
            Some(w) => {
                let y = self.dev.alloc(rows * h * 4)?;
                ops.rms_norm(&x, w, &y, rows, h)?;
                y
            }
            None => x,
        };
        let logits = self.dev.alloc(rows * self.lm_rows * 4)?;
        ops.linear(&input, (&self.lm_head, 0), None, &logits, rows, self.lm_rows, h)?;
        Ok(Some(logits))
    }
}
