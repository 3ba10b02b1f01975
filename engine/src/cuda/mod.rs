//! The Llama-family forward pass on a CUDA device (a GPU, or the
//! interpreter): the same contract as [`crate::Model::forward`] — sequences
//! with new tokens, positions and a causal or tree mask, logits for chosen
//! rows — built from the kernels in `kernels/cuda/` over the
//! [`Device`] seam, so this code is the same on a GPU and in the interpreter.
//!
//! Weights are bf16 on the device (any format the loader reads is widened to
//! f32 and rounded once), norms and biases f32, activations f32, the KV
//! cache paged bf16 ([`kv`]). Every kernel is batch invariant (see each
//! kernel's header), so a tree node's logits are those of its path decoded
//! token by token, bit for bit: speculation stays lossless on this path.

pub mod head;
pub mod kv;
pub mod layer;
pub mod sample;
pub mod select;

use crate::error::Result;
use crate::model::{Model, SeqOutput};
use aerie_kernels::cuda::device::{Device, DeviceBuffer, DeviceExt};
use aerie_kernels::cuda::interp::{KernelArg as A, LaunchConfig};
use crate::config::ModelConfig;
use kv::{CudaSeq, KvPool};
pub use layer::CudaSeqInput;
pub use layer::WeightFormat;
use layer::{upload_inv_freq, DeviceBatch, DeviceLayer, LayerWeights, Ops, Scratch};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Most nodes in one tree: a row's ancestors are a 64-bit mask.
pub const MAX_TREE_NODES: usize = 64;

/// A model's weights on a device, and its KV pool.
pub struct CudaModel {
    pub config: ModelConfig,
    dev: Arc<dyn Device>,
    embed: DeviceBuffer,
    layers: Vec<DeviceLayer>,
    final_norm: DeviceBuffer,
    /// `None` when tied to the embedding.
    lm_head: Option<DeviceBuffer>,
    inv_freq: DeviceBuffer,
    pub pool: Arc<KvPool>,
    /// Projections through the batch-invariant kernels (the default, and
    /// what speculation needs) or the device's library GEMM.
    batch_invariant: AtomicBool,
    /// Trees (and plain sampled steps) verified by [`Self::sample_trees`].
    trees_sampled: AtomicU64,
    format: WeightFormat,
}

impl CudaModel {
    /// Uploads `model`'s weights to `dev` as bf16 and sizes a KV pool of
    /// `max_total_tokens`. A device without room is an error that says how
    /// much was needed and how much was free.
    pub fn from_model(model: &Model, dev: Arc<dyn Device>, max_total_tokens: usize) -> Result<CudaModel> {
        Self::from_model_as(model, dev, max_total_tokens, WeightFormat::Bf16)
    }

    /// [`Self::from_model`] with the weight matrices in `format`.
    pub fn from_model_as(model: &Model, dev: Arc<dyn Device>, max_total_tokens: usize, format: WeightFormat) -> Result<CudaModel> {
        let cfg = model.config.clone();
        let w = &model.weights;
        let up_weights = |v: &[f32]| -> Result<DeviceBuffer> { Ok(dev.upload_slice(&format.bits(v)?)?) };
        let embed = up_weights(&w.embed.to_f32_vec())?;
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            layers.push(DeviceLayer::upload(
                &dev,
                LayerWeights {
                    input_norm: Some(&l.attn_norm),
                    qkv: &l.qkv.dense_f32(),
                    qkv_bias: l.qkv.bias.as_deref(),
                    wo: &l.wo.to_f32_vec(),
                    post_norm: &l.ffn_norm,
                    gate_up: &l.gate_up.dense_f32(),
                    down: &l.w_down.to_f32_vec(),
                    attn_in: cfg.hidden_size,
                },
                format,
            )?);
        }
        let final_norm = dev.upload_slice(&w.final_norm)?;
        let lm_head = w.lm_head.as_ref().map(|m| up_weights(&m.to_f32_vec())).transpose()?;
        let inv_freq = upload_inv_freq(&dev, &cfg)?;
        // A model loaded for drafting has no layers, and needs no pool.
        let pool = KvPool::new(dev.clone(), w.layers.len(), cfg.num_kv_heads * cfg.head_dim, max_total_tokens)?;
        Ok(CudaModel { config: cfg, dev, embed, layers, final_norm, lm_head, inv_freq, pool, batch_invariant: AtomicBool::new(true), trees_sampled: AtomicU64::new(0), format })
    }

    pub fn device(&self) -> &Arc<dyn Device> {
        &self.dev
    }

    /// A new, empty sequence on this model's KV pool.
    pub fn new_seq(&self) -> CudaSeq {
        CudaSeq::new(&self.pool)
    }

    fn ops(&self) -> Ops<'_> {
        Ops { dev: &self.dev, eps: self.config.rms_norm_eps, invariant: self.batch_invariant(), format: self.format }
    }

    /// Whether projections run through the batch-invariant kernels (always
    /// with f16 weights, which the library GEMM does not take).
    pub fn batch_invariant(&self) -> bool {
        self.batch_invariant.load(Ordering::Relaxed) || self.format == WeightFormat::F16
    }

    /// How the weight matrices are held.
    pub fn weight_format(&self) -> WeightFormat {
        self.format
    }

    /// Batch-invariant projections (`true`, the default) or the device's
    /// library GEMM (`false`: a row's logits may then depend on the batch,
    /// so greedy speculation would no longer equal plain decoding).
    pub fn set_batch_invariant(&self, on: bool) {
        self.batch_invariant.store(on, Ordering::Relaxed);
    }

    /// The lm_head of normed hidden rows, left on the device: the logits
    /// buffer (`rows × vocab`) and `rows`, or `None` for no rows.
    fn logits_on_device(&self, normed: &[f32]) -> Result<Option<(DeviceBuffer, usize)>> {
        let (h, vocab) = (self.config.hidden_size, self.config.vocab_size);
        let rows = normed.len() / h;
        if rows == 0 {
            return Ok(None);
        }
        let x = self.dev.upload_slice(normed)?;
        let logits = self.dev.alloc(rows * vocab * 4)?;
        self.ops().linear(&x, (self.lm_head.as_ref().unwrap_or(&self.embed), 0), None, &logits, rows, vocab, h)?;
        Ok(Some((logits, rows)))
    }

    /// Logits of normed hidden rows (`rows × hidden` in, `rows × vocab` out).
    pub fn lm_head(&self, normed: &[f32]) -> Result<Vec<f32>> {
        let Some((logits, rows)) = self.logits_on_device(normed)? else { return Ok(Vec::new()) };
        Ok(self.dev.download_vec(&logits, 0, rows * self.config.vocab_size)?)
    }

    /// The greedy token of each normed hidden row: the lm_head and the
    /// argmax on the device, and only the ids come back (the first maximum
    /// on ties, as [`aerie_kernels::cpu::ops::argmax`]).
    pub fn lm_head_argmax(&self, normed: &[f32]) -> Result<Vec<u32>> {
        let Some((logits, rows)) = self.logits_on_device(normed)? else { return Ok(Vec::new()) };
        let vocab = self.config.vocab_size;
        let (ids, values) = (self.dev.alloc(rows * 4)?, self.dev.alloc(rows * 4)?);
        // SAFETY: `logits` holds rows × vocab f32; ids and values one per row.
        unsafe {
            self.dev.launch(
                "argmax_rows",
                LaunchConfig::linear(rows as u32, 256),
                &[logits.arg(), ids.arg(), values.arg(), A::I32(rows as i32), A::I32(vocab as i32)],
            )?
        };
        let ids: Vec<i32> = self.dev.download_vec(&ids, 0, rows)?;
        Ok(ids.into_iter().map(|i| i as u32).collect())
    }

    /// Runs the batch, appending every new token to its sequence's cache.
    /// Returns, per sequence, the logits of the requested rows and, with
    /// `want_hidden`, the final normed hidden state of every new token.
    pub fn forward(&self, batch: &mut [CudaSeqInput], want_hidden: bool) -> Result<Vec<SeqOutput>> {
        self.forward_with(batch, want_hidden, &[])
    }

    /// [`Self::forward`], also returning the residual stream after each
    /// layer in `aux_layers` (EAGLE-3's features), in layer order as the CPU
    /// path does. They are copied aside on the device as the layers pass
    /// and downloaded once at the end.
    pub fn forward_with(&self, batch: &mut [CudaSeqInput], want_hidden: bool, aux_layers: &[usize]) -> Result<Vec<SeqOutput>> {
        let cfg = &self.config;
        let dev = &self.dev;
        let ops = self.ops();
        let b = DeviceBatch::new(dev, cfg.vocab_size, cfg.max_position_embeddings, batch)?;
        let t = b.rows;
        let h = cfg.hidden_size;
        let mut outs: Vec<SeqOutput> = b.logit_rows.iter().map(|r| SeqOutput { logit_rows: r.clone(), ..Default::default() }).collect();
        if t == 0 {
            return Ok(outs);
        }
        let f32s = |n: usize| dev.alloc(n * 4);
        let x = f32s(t * h)?;
        let scratch = Scratch::new(dev, cfg, t)?;
        let n_aux = (0..self.layers.len()).filter(|l| aux_layers.contains(l)).count();
        // Only a forward that returns aux features sets a buffer aside.
        let aux = if n_aux > 0 { Some(f32s(n_aux * t * h)?) } else { None };
        let mut aux_at = 0;

        // SAFETY: ids were checked against the vocabulary; x holds t × h.
        unsafe {
            dev.launch(
                self.format.embedding_kernel(),
                LaunchConfig::linear(t as u32, 256),
                &[self.embed.arg(), b.ids.arg(), x.arg(), A::I32(t as i32), A::I32(h as i32), A::I32(cfg.vocab_size as i32)],
            )?;
        }
        for (li, l) in self.layers.iter().enumerate() {
            l.run(&ops, cfg, &self.inv_freq, &b, &self.pool, li, &x, None, &scratch)?;
            if let Some(aux) = aux.as_ref().filter(|_| aux_layers.contains(&li)) {
                dev.copy(&x, 0, aux, aux_at * t * h * 4, t * h * 4)?;
                aux_at += 1;
            }
        }
        let xn = &scratch.xn;
        ops.rms_norm(&x, &self.final_norm, xn, t, h)?;
        DeviceBatch::commit(batch);

        // Gather the rows that need logits, for one lm_head projection.
        let wanted = b.wanted_rows();
        if !wanted.is_empty() {
            let g = f32s(wanted.len() * h)?;
            let idx = dev.upload_slice(&wanted.iter().map(|&r| r as i32).collect::<Vec<i32>>())?;
            ops.copy_rows(xn, h, Some(&idx), t, &g, 0, h, wanted.len(), h)?;
            let vocab = cfg.vocab_size;
            let logits = f32s(wanted.len() * vocab)?;
            ops.linear(&g, (self.lm_head.as_ref().unwrap_or(&self.embed), 0), None, &logits, wanted.len(), vocab, h)?;
            let all: Vec<f32> = dev.download_vec(&logits, 0, wanted.len() * vocab)?;
            let mut at = 0;
            for out in outs.iter_mut() {
                let nr = out.logit_rows.len();
                out.logits = all[at * vocab..(at + nr) * vocab].to_vec();
                at += nr;
            }
        }
        if want_hidden {
            for ((out, s), &o) in outs.iter_mut().zip(batch.iter()).zip(&b.offsets) {
                out.hidden = dev.download_vec(xn, o * h * 4, s.tokens.len() * h)?;
            }
        }
        if let Some(aux) = &aux {
            let all: Vec<f32> = dev.download_vec(aux, 0, n_aux * t * h)?;
            for ((out, s), &o) in outs.iter_mut().zip(batch.iter()).zip(&b.offsets) {
                let n = s.tokens.len();
                out.aux = (0..n_aux).map(|j| all[(j * t + o) * h..(j * t + o + n) * h].to_vec()).collect();
            }
        }
        Ok(outs)
    }
}
