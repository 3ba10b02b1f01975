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

pub mod kv;
pub mod select;

use crate::config::{ModelConfig, RopeStyle};
use crate::error::{EngineError, Result};
use crate::model::{AttnMask, LogitsRows, Model, SeqOutput};
use aerie_kernels::cuda::device::{Device, DeviceBuffer, DeviceExt};
use aerie_kernels::cuda::interp::{KernelArg as A, LaunchConfig};
use half::bf16;
use kv::{CudaSeq, KvPool, PAGE_SIZE};
use std::sync::Arc;

/// Most nodes in one tree: a row's ancestors are a 64-bit mask.
pub const MAX_TREE_NODES: usize = 64;

struct CudaLayer {
    attn_norm: DeviceBuffer,
    /// q, k and v weights stacked, `[q + 2 kv, hidden]` bf16.
    qkv: DeviceBuffer,
    qkv_bias: Option<DeviceBuffer>,
    wo: DeviceBuffer,
    ffn_norm: DeviceBuffer,
    /// gate then up, `[2 inter, hidden]` bf16.
    gate_up: DeviceBuffer,
    down: DeviceBuffer,
}

/// A model's weights on a device, and its KV pool.
pub struct CudaModel {
    pub config: ModelConfig,
    dev: Arc<dyn Device>,
    embed: DeviceBuffer,
    layers: Vec<CudaLayer>,
    final_norm: DeviceBuffer,
    /// `None` when tied to the embedding.
    lm_head: Option<DeviceBuffer>,
    inv_freq: DeviceBuffer,
    pub pool: Arc<KvPool>,
}

/// One sequence's part of a forward call on the device.
pub struct CudaSeqInput<'a> {
    pub seq: &'a mut CudaSeq,
    pub tokens: &'a [u32],
    /// Absolute positions; `None` means `seq.len() + i`. A tree's nodes sit
    /// at the prefix length plus their depth.
    pub positions: Option<&'a [u32]>,
    /// `Causal` or `Tree` (`Full` masks are CPU-only).
    pub mask: AttnMask,
    pub logits: LogitsRows,
}

/// What the attention kernel needs of one row (see `attention.cu`).
#[derive(Default)]
struct RowPlan {
    seq: Vec<i32>,
    dense_len: Vec<i32>,
    tree_base: Vec<i32>,
    tree_mask: Vec<u64>,
}

fn bf16_of(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

/// Grid-stride launch for `n` elements.
fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig::linear(n.div_ceil(256).clamp(1, 1024) as u32, 256)
}

impl CudaModel {
    /// Uploads `model`'s weights to `dev` as bf16 and sizes a KV pool of
    /// `max_total_tokens`. A device without room is an error that says how
    /// much was needed and how much was free.
    pub fn from_model(model: &Model, dev: Arc<dyn Device>, max_total_tokens: usize) -> Result<CudaModel> {
        let cfg = model.config.clone();
        let w = &model.weights;
        let up_f32 = |v: &[f32]| dev.upload_slice(v);
        let up_bf16 = |v: &[f32]| dev.upload_slice(&bf16_of(v));
        let embed = up_bf16(&w.embed.to_f32_vec())?;
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            layers.push(CudaLayer {
                attn_norm: up_f32(&l.attn_norm)?,
                qkv: up_bf16(&l.qkv.dense_f32())?,
                qkv_bias: l.qkv.bias.as_deref().map(up_f32).transpose()?,
                wo: up_bf16(&l.wo.to_f32_vec())?,
                ffn_norm: up_f32(&l.ffn_norm)?,
                gate_up: up_bf16(&l.gate_up.dense_f32())?,
                down: up_bf16(&l.w_down.to_f32_vec())?,
            });
        }
        let final_norm = up_f32(&w.final_norm)?;
        let lm_head = w.lm_head.as_ref().map(|m| up_bf16(&m.to_f32_vec())).transpose()?;
        let inv: Vec<f32> = cfg.inv_freqs().iter().map(|&f| f as f32).collect();
        let inv_freq = up_f32(&inv)?;
        // A model loaded for drafting has no layers, and needs no pool.
        let pool = KvPool::new(dev.clone(), w.layers.len(), cfg.num_kv_heads * cfg.head_dim, max_total_tokens)?;
        Ok(CudaModel { config: cfg, dev, embed, layers, final_norm, lm_head, inv_freq, pool })
    }

    pub fn device(&self) -> &Arc<dyn Device> {
        &self.dev
    }

    /// A new, empty sequence on this model's KV pool.
    pub fn new_seq(&self) -> CudaSeq {
        CudaSeq::new(&self.pool)
    }

    /// Checks a batch and lays out its rows: token ids, positions, KV slots
    /// and what each row attends to.
    fn plan(&self, batch: &mut [CudaSeqInput]) -> Result<(Vec<i32>, Vec<i32>, Vec<i32>, RowPlan, Vec<Vec<usize>>)> {
        let cfg = &self.config;
        let (mut ids, mut positions, mut slots) = (Vec::new(), Vec::new(), Vec::new());
        let mut rows = RowPlan::default();
        let mut logit_rows = Vec::with_capacity(batch.len());
        for (si, s) in batch.iter_mut().enumerate() {
            let n = s.tokens.len();
            let base = s.seq.len();
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(EngineError::InvalidInput(format!("token id {t} outside vocabulary of {}", cfg.vocab_size)));
            }
            let pos: Vec<u32> = match s.positions {
                Some(p) if p.len() != n => return Err(EngineError::InvalidInput(format!("{} positions for {n} tokens", p.len()))),
                Some(p) => p.to_vec(),
                None => (0..n).map(|i| (base + i) as u32).collect(),
            };
            let max_pos = pos.iter().map(|&p| p as usize + 1).max().unwrap_or(0);
            if max_pos > cfg.max_position_embeddings {
                return Err(EngineError::ContextLength { needed: max_pos, limit: cfg.max_position_embeddings });
            }
            match &s.mask {
                AttnMask::Causal => {
                    for i in 0..n {
                        rows.dense_len.push((base + i + 1) as i32);
                        rows.tree_base.push(base as i32);
                        rows.tree_mask.push(0);
                    }
                }
                AttnMask::Tree(m) => {
                    if m.len() != n * n {
                        return Err(EngineError::InvalidInput(format!("tree mask has {} entries, expected {}", m.len(), n * n)));
                    }
                    if n > MAX_TREE_NODES {
                        return Err(EngineError::InvalidInput(format!("a tree of {n} nodes; the CUDA path verifies at most {MAX_TREE_NODES}")));
                    }
                    for i in 0..n {
                        let bits = (0..n).filter(|&j| m[i * n + j]).fold(0u64, |b, j| b | 1 << j);
                        if bits.checked_shr(i as u32 + 1).unwrap_or(0) != 0 {
                            return Err(EngineError::InvalidInput(format!("tree node {i} sees a later node")));
                        }
                        rows.dense_len.push(base as i32);
                        rows.tree_base.push(base as i32);
                        rows.tree_mask.push(bits);
                    }
                }
                AttnMask::Full(_) => {
                    return Err(EngineError::InvalidInput("explicit full attention masks are not supported on the CUDA path".into()))
                }
            }
            let want: Vec<usize> = match &s.logits {
                LogitsRows::None => vec![],
                LogitsRows::Last => (n > 0).then(|| n - 1).into_iter().collect(),
                LogitsRows::All => (0..n).collect(),
                LogitsRows::Rows(r) => r.clone(),
            };
            if let Some(&bad) = want.iter().find(|&&r| r >= n) {
                return Err(EngineError::InvalidInput(format!("logits row {bad} out of {n} new tokens")));
            }
            logit_rows.push(want);
            s.seq.reserve(n)?;
            for i in 0..n {
                slots.push(s.seq.slot(base + i));
                rows.seq.push(si as i32);
            }
            ids.extend(s.tokens.iter().map(|&t| t as i32));
            positions.extend(pos.iter().map(|&p| p as i32));
        }
        Ok((ids, positions, slots, rows, logit_rows))
    }

    /// `y = x · wᵀ (+ b)` for `rows` rows, `w` holding `n × k` bf16 values
    /// from byte `w_off` on.
    fn linear(&self, x: &DeviceBuffer, w: (&DeviceBuffer, usize), bias: Option<(&DeviceBuffer, usize)>, y: &DeviceBuffer, rows: usize, n: usize, k: usize) -> Result<()> {
        let cfg = LaunchConfig { grid: (n.div_ceil(4) as u32, rows.div_ceil(8) as u32, 1), block: (128, 1, 1), shared_bytes: 0 };
        let b = bias.map_or(A::Ptr(std::ptr::null()), |(b, off)| b.arg_at(off));
        // SAFETY: x is rows × k f32, w holds n × k bf16 from w.1, b n f32, y rows × n f32.
        unsafe {
            self.dev.launch("linear_bf16", cfg, &[x.arg(), w.0.arg_at(w.1), b, y.arg(), A::I32(rows as i32), A::I32(n as i32), A::I32(k as i32)])?
        };
        Ok(())
    }

    fn rms_norm(&self, x: &DeviceBuffer, w: &DeviceBuffer, out: &DeviceBuffer, rows: usize) -> Result<()> {
        let h = self.config.hidden_size;
        // SAFETY: x and out are rows × h f32, w is h f32.
        unsafe {
            self.dev.launch(
                "rms_norm",
                LaunchConfig::linear(rows as u32, 256),
                &[x.arg(), w.arg(), out.arg(), A::I32(rows as i32), A::I32(h as i32), A::F32(self.config.rms_norm_eps)],
            )?
        };
        Ok(())
    }

    fn add(&self, x: &DeviceBuffer, y: &DeviceBuffer, n: usize) -> Result<()> {
        // SAFETY: both hold n f32.
        unsafe { self.dev.launch("add_inplace", elementwise(n), &[x.arg(), y.arg(), A::I64(n as i64)])? };
        Ok(())
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
        self.linear(&x, (self.lm_head.as_ref().unwrap_or(&self.embed), 0), None, &logits, rows, vocab, h)?;
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
        let (ids, positions, slots, rows, logit_rows) = self.plan(batch)?;
        let t = ids.len();
        let (h, hd, nh, nkv, inter) = (cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size);
        let (qw, kvw) = (nh * hd, nkv * hd);
        let mut outs: Vec<SeqOutput> = logit_rows.iter().map(|r| SeqOutput { logit_rows: r.clone(), ..Default::default() }).collect();
        if t == 0 {
            return Ok(outs);
        }
        // The page table of the batch: one row of max_pages per sequence.
        let max_pages = batch.iter().map(|s| s.seq.pages.len()).max().unwrap_or(1).max(1);
        let mut table = vec![-1i32; batch.len() * max_pages];
        for (si, s) in batch.iter().enumerate() {
            table[si * max_pages..si * max_pages + s.seq.pages.len()].copy_from_slice(&s.seq.pages);
        }

        let f32s = |n: usize| dev.alloc(n * 4);
        let d_ids = dev.upload_slice(&ids)?;
        let d_pos = dev.upload_slice(&positions)?;
        let d_slots = dev.upload_slice(&slots)?;
        let d_seq = dev.upload_slice(&rows.seq)?;
        let d_dense = dev.upload_slice(&rows.dense_len)?;
        let d_base = dev.upload_slice(&rows.tree_base)?;
        let d_mask = dev.upload_slice(&rows.tree_mask)?;
        let d_table = dev.upload_slice(&table)?;
        let (x, xn, o) = (f32s(t * h)?, f32s(t * h)?, f32s(t * h)?);
        let (q, k, v, attn) = (f32s(t * qw)?, f32s(t * kvw)?, f32s(t * kvw)?, f32s(t * qw)?);
        let (gu, act) = (f32s(t * 2 * inter)?, f32s(t * inter)?);
        let n_aux = (0..self.layers.len()).filter(|l| aux_layers.contains(l)).count();
        // Only a forward that returns aux features sets a buffer aside.
        let aux = if n_aux > 0 { Some(f32s(n_aux * t * h)?) } else { None };
        let mut aux_at = 0;

        // SAFETY (every launch below): buffer sizes as allocated above; ids
        // were checked against the vocabulary and slots lie on the batch's
        // own pages.
        unsafe {
            dev.launch(
                "embedding_bf16",
                LaunchConfig::linear(t as u32, 256),
                &[self.embed.arg(), d_ids.arg(), x.arg(), A::I32(t as i32), A::I32(h as i32), A::I32(cfg.vocab_size as i32)],
            )?;
        }
        let neox = matches!(cfg.rope_style, RopeStyle::HalfSplit) as i32;
        for (li, l) in self.layers.iter().enumerate() {
            self.rms_norm(&x, &l.attn_norm, &xn, t)?;
            let bias = |off: usize| l.qkv_bias.as_ref().map(|b| (b, off * 4));
            self.linear(&xn, (&l.qkv, 0), bias(0), &q, t, qw, h)?;
            self.linear(&xn, (&l.qkv, qw * h * 2), bias(qw), &k, t, kvw, h)?;
            self.linear(&xn, (&l.qkv, (qw + kvw) * h * 2), bias(qw + kvw), &v, t, kvw, h)?;
            unsafe {
                dev.launch(
                    "rope",
                    LaunchConfig { grid: (t as u32, (nh + nkv) as u32, 1), block: (32, 1, 1), shared_bytes: 0 },
                    &[q.arg(), k.arg(), d_pos.arg(), self.inv_freq.arg(), A::I32(t as i32), A::I32(nh as i32), A::I32(nkv as i32), A::I32(hd as i32), A::I32(neox)],
                )?;
                dev.launch(
                    "kv_append",
                    LaunchConfig::linear(t as u32, 128),
                    &[k.arg(), v.arg(), self.pool.k[li].arg(), self.pool.v[li].arg(), d_slots.arg(), A::I32(t as i32), A::I32(kvw as i32), A::I32(self.pool.slots() as i32)],
                )?;
                dev.launch(
                    "attention_paged",
                    LaunchConfig { grid: (t as u32, nh as u32, 1), block: (32, 1, 1), shared_bytes: 0 },
                    &[
                        q.arg(),
                        self.pool.k[li].arg(),
                        self.pool.v[li].arg(),
                        attn.arg(),
                        d_seq.arg(),
                        d_dense.arg(),
                        d_base.arg(),
                        d_mask.arg(),
                        d_table.arg(),
                        A::I32(max_pages as i32),
                        A::I32(PAGE_SIZE as i32),
                        A::I32(self.pool.num_pages as i32),
                        A::I32(t as i32),
                        A::I32(nh as i32),
                        A::I32(nkv as i32),
                        A::I32(hd as i32),
                        A::F32(1.0 / (hd as f32).sqrt()),
                    ],
                )?;
            }
            self.linear(&attn, (&l.wo, 0), None, &o, t, h, qw)?;
            self.add(&x, &o, t * h)?;
            self.rms_norm(&x, &l.ffn_norm, &xn, t)?;
            self.linear(&xn, (&l.gate_up, 0), None, &gu, t, 2 * inter, h)?;
            unsafe { dev.launch("silu_mul", elementwise(t * inter), &[gu.arg(), act.arg(), A::I32(t as i32), A::I32(inter as i32)])? };
            self.linear(&act, (&l.down, 0), None, &o, t, h, inter)?;
            self.add(&x, &o, t * h)?;
            if let Some(aux) = aux.as_ref().filter(|_| aux_layers.contains(&li)) {
                dev.copy(&x, 0, aux, aux_at * t * h * 4, t * h * 4)?;
                aux_at += 1;
            }
        }
        self.rms_norm(&x, &self.final_norm, &xn, t)?;
        for s in batch.iter_mut() {
            let n = s.tokens.len();
            s.seq.set_len(s.seq.len() + n);
        }

        // Gather the rows that need logits, for one lm_head projection.
        let offsets: Vec<usize> = batch.iter().scan(0, |at, s| { let o = *at; *at += s.tokens.len(); Some(o) }).collect();
        let wanted: Vec<usize> = logit_rows.iter().zip(&offsets).flat_map(|(r, &o)| r.iter().map(move |&i| o + i)).collect();
        if !wanted.is_empty() {
            let g = f32s(wanted.len() * h)?;
            for (j, &row) in wanted.iter().enumerate() {
                dev.copy(&xn, row * h * 4, &g, j * h * 4, h * 4)?;
            }
            let vocab = cfg.vocab_size;
            let logits = f32s(wanted.len() * vocab)?;
            self.linear(&g, (self.lm_head.as_ref().unwrap_or(&self.embed), 0), None, &logits, wanted.len(), vocab, h)?;
            let all: Vec<f32> = dev.download_vec(&logits, 0, wanted.len() * vocab)?;
            let mut at = 0;
            for out in outs.iter_mut() {
                let nr = out.logit_rows.len();
                out.logits = all[at * vocab..(at + nr) * vocab].to_vec();
                at += nr;
            }
        }
        if want_hidden {
            for ((out, s), &o) in outs.iter_mut().zip(batch.iter()).zip(&offsets) {
                out.hidden = dev.download_vec(&xn, o * h * 4, s.tokens.len() * h)?;
            }
        }
        if let Some(aux) = &aux {
            let all: Vec<f32> = dev.download_vec(aux, 0, n_aux * t * h)?;
            for ((out, s), &o) in outs.iter_mut().zip(batch.iter()).zip(&offsets) {
                let n = s.tokens.len();
                out.aux = (0..n_aux).map(|j| all[(j * t + o) * h..(j * t + o + n) * h].to_vec()).collect();
            }
        }
        Ok(outs)
    }
}
