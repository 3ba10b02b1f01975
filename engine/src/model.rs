//! The Llama-family forward pass with arbitrary attention masks.
//!
//! One call processes a batch of sequences. Each brings new tokens with
//! explicit positions and a mask saying which earlier tokens (cached or new)
//! each new token may attend to. A causal mask is ordinary prefill/decode; a
//! tree mask scores a whole draft tree in one pass. All new tokens of all
//! sequences share each matrix multiplication, so a verify step over many
//! requests streams the weights once.

use crate::config::ModelConfig;
use crate::cuda::{CudaModel, CudaSeqInput};
use crate::error::{EngineError, Result};
use crate::kv::KvCache;
use crate::layers::{self, add_into, norm_rows, AttnPlan, AttnShape, Rope};
use crate::weights::ModelWeights;

/// Which rows of a sequence's new tokens get logits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogitsRows {
    None,
    Last,
    All,
    Rows(Vec<usize>),
}

/// Which tokens each new token attends to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttnMask {
    /// Every cached token, and new tokens up to and including itself.
    Causal,
    /// Every cached token, plus new token j where `m[i * n + j]` (n = new tokens).
    Tree(Vec<bool>),
    /// Explicit `n × (cached + n)` visibility.
    Full(Vec<bool>),
}

impl AttnMask {
    /// The ancestor mask of a tree given each node's parent (`None` = child of
    /// the cached prefix). Parents must precede children.
    pub fn from_parents(parents: &[Option<usize>]) -> Result<AttnMask> {
        let n = parents.len();
        let mut m = vec![false; n * n];
        for i in 0..n {
            m[i * n + i] = true;
            if let Some(p) = parents[i] {
                if p >= i {
                    return Err(EngineError::InvalidInput(format!("tree node {i} has parent {p}, which does not precede it")));
                }
                for j in 0..n {
                    if m[p * n + j] {
                        m[i * n + j] = true;
                    }
                }
            }
        }
        Ok(AttnMask::Tree(m))
    }
}

/// One sequence's part of a forward call.
pub struct SeqInput<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    /// Absolute positions; `None` means `cache.len() + i`.
    pub positions: Option<&'a [u32]>,
    pub mask: AttnMask,
    pub logits: LogitsRows,
}

/// What a forward call returns for one sequence.
#[derive(Debug, Clone, Default)]
pub struct SeqOutput {
    /// `logit_rows.len() × vocab` logits.
    pub logits: Vec<f32>,
    /// Which new-token rows the logits belong to.
    pub logit_rows: Vec<usize>,
    /// Final normed hidden state of every new token (`n × hidden`): the
    /// EAGLE-1/2 feature. Empty unless requested.
    pub hidden: Vec<f32>,
    /// Residual-stream outputs of the requested layers (`n × hidden` each):
    /// the EAGLE-3 features.
    pub aux: Vec<Vec<f32>>,
}

/// Extra outputs a forward call should produce.
#[derive(Debug, Clone, Default)]
pub struct ForwardOptions {
    pub want_hidden: bool,
    pub aux_layers: Vec<usize>,
}

pub struct Model {
    pub config: ModelConfig,
    pub weights: ModelWeights,
    pub fingerprint: String,
    rope: Rope,
    /// Where the forward pass runs when not on the CPU: the weights on a
    /// CUDA device (a GPU or the interpreter) and its KV pool. Callers do
    /// not ask; `forward`, `lm_head` and the caches follow it.
    device: Option<CudaModel>,
    /// This model is one rank's shard of a tensor-parallel group: partial
    /// attention and MLP outputs are summed across the group (see [`crate::tp`]).
    pub(crate) tp: Option<std::sync::Arc<dyn crate::tp::TpReduce>>,
    /// On rank 0 of a group: the log of cache changes the other ranks
    /// replay (see [`crate::tp::mirror`]).
    pub(crate) tp_log: Option<std::sync::Arc<crate::tp::mirror::OpLog>>,
    /// Host KV caches hold f32 rather than llama.cpp's f16.
    pub(crate) kv_f32: bool,
    /// On a tensor-parallel shard: the vocabulary ids its lm_head holds.
    pub(crate) vocab_shard: Option<std::ops::Range<usize>>,
    /// Rank 0 of a group: held through each call the group runs together
    /// (a forward, an lm_head, the stop), so that no two interleave.
    tp_turn: std::sync::Mutex<()>,
}

impl Model {
    pub fn new(config: ModelConfig, weights: ModelWeights, fingerprint: String) -> Self {
        let rope = Rope::new(&config.inv_freqs(), config.rope_theta, config.rope_style);
        Model { config, weights, fingerprint, rope, device: None, tp: None, tp_log: None, kv_f32: false, vocab_shard: None, tp_turn: std::sync::Mutex::new(()) }
    }

    /// The same model with its forward pass on `dev`: weights uploaded as
    /// bf16 and a KV pool of `max_total_tokens`.
    pub fn to_device(self, dev: std::sync::Arc<dyn aerie_kernels::cuda::device::Device>, max_total_tokens: usize) -> Result<Model> {
        self.to_device_as(dev, max_total_tokens, crate::cuda::WeightFormat::Bf16)
    }

    /// [`Self::to_device`] with the weight matrices in `format` (`--dtype`).
    pub fn to_device_as(
        mut self,
        dev: std::sync::Arc<dyn aerie_kernels::cuda::device::Device>,
        max_total_tokens: usize,
        format: crate::cuda::WeightFormat,
    ) -> Result<Model> {
        if self.tp.is_some() {
            return Err(EngineError::TensorParallel("a tensor-parallel shard runs on the CPU only so far".into()));
        }
        self.device = Some(CudaModel::from_model_as(&self, dev, max_total_tokens, format)?);
        Ok(self)
    }

    /// Where the forward pass runs, for logs: "cpu" or the device's name.
    pub fn device_name(&self) -> String {
        self.device.as_ref().map_or_else(|| "cpu".to_string(), |d| d.device().name())
    }

    /// On a device: batch-invariant projections (the default; speculation
    /// needs them) or the device's library GEMM (cuBLAS), for plain
    /// decoding. The CPU path is batch invariant either way.
    pub fn set_batch_invariant(&self, on: bool) {
        if let Some(d) = &self.device {
            d.set_batch_invariant(on);
        }
    }

    /// Whether a row's logits are independent of the rest of its batch.
    pub fn batch_invariant(&self) -> bool {
        self.device.as_ref().is_none_or(CudaModel::batch_invariant)
    }

    /// The model on its device, if it runs on one.
    pub fn cuda(&self) -> Option<&CudaModel> {
        self.device.as_ref()
    }

    pub fn new_cache(&self) -> KvCache {
        let mut c = match &self.device {
            Some(d) => KvCache::on_device(&self.config, d.new_seq()),
            None => KvCache::new(&self.config),
        };
        c.f16 = !self.kv_f32;
        c.mirror = self.tp_log.as_ref().map(|log| log.new_cache());
        c
    }

    /// Host KV caches made from now on hold f32 keys and values instead of
    /// llama.cpp's f16 (which the CPU path keeps by default, to match it bit
    /// for bit). A device's pool is bf16 either way.
    pub fn set_f32_kv_cache(&mut self, on: bool) {
        self.kv_f32 = on;
    }

    /// Embedding rows for `tokens` (`n × hidden`).
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let h = self.config.hidden_size;
        let mut x = vec![0.0f32; tokens.len() * h];
        for (i, &t) in tokens.iter().enumerate() {
            if t as usize >= self.config.vocab_size {
                return Err(EngineError::InvalidInput(format!("token id {t} outside vocabulary of {}", self.config.vocab_size)));
            }
            self.weights.embed.row_f32(t as usize, &mut x[i * h..(i + 1) * h]);
        }
        Ok(x)
    }

    /// On rank 0 of a tensor-parallel group, its turn to run a call with
    /// the group; `None` elsewhere.
    pub(crate) fn group_turn(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        self.tp_log.as_ref().map(|_| self.tp_turn.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Logits of already-normed hidden rows (`rows × hidden` in, `rows × vocab` out).
    pub fn lm_head(&self, normed: &[f32]) -> Result<Vec<f32>> {
        let _turn = self.group_turn();
        self.lm_head_in_turn(normed)
    }

    fn lm_head_in_turn(&self, normed: &[f32]) -> Result<Vec<f32>> {
        if let Some(d) = &self.device {
            return d.lm_head(normed);
        }
        if let (Some(tp), Some(range)) = (&self.tp, &self.vocab_shard) {
            self.lead_head(normed, false)?;
            return crate::tp::head_logits(self, tp.as_ref(), range, normed);
        }
        let h = self.config.hidden_size;
        let rows = normed.len() / h;
        let mut out = vec![0.0f32; rows * self.config.vocab_size];
        // 8-bit activations, as llama.cpp rounds them for its Q8_0 output
        // head: the logits then match llama.cpp's bit for bit.
        self.weights.lm_head().matmul(normed, rows, &mut out);
        Ok(out)
    }

    /// The greedy token after each normed hidden row: what greedy
    /// verification needs of the lm_head. On a device only the ids leave
    /// it; on the CPU it is the argmax of [`Model::lm_head`].
    pub fn lm_head_argmax(&self, normed: &[f32]) -> Result<Vec<u32>> {
        if let Some(d) = &self.device {
            return d.lm_head_argmax(normed);
        }
        let _turn = self.group_turn();
        if let (Some(tp), Some(range)) = (&self.tp, &self.vocab_shard) {
            self.lead_head(normed, true)?;
            return crate::tp::head_argmax(self, tp.as_ref(), range, normed);
        }
        let logits = self.lm_head_in_turn(normed)?;
        Ok(logits.chunks(self.config.vocab_size.max(1)).map(|r| aerie_kernels::cpu::ops::argmax(r).0 as u32).collect())
    }

    /// On rank 0 of a group: the other ranks compute their vocabulary
    /// slices of the same rows.
    fn lead_head(&self, normed: &[f32], argmax: bool) -> Result<()> {
        if let (Some(tp), Some(log)) = (&self.tp, &self.tp_log) {
            tp.lead(&crate::tp::mirror::Plan { ops: log.drain(), head: Some(crate::tp::mirror::HeadPlan { normed: normed.to_vec(), argmax }), ..Default::default() }.encode())?;
        }
        Ok(())
    }

    fn validate(&self, s: &SeqInput) -> Result<()> {
        let n = s.tokens.len();
        let c = s.cache.len();
        // Checked before a tensor-parallel rank 0 sends the call to its
        // group, so that a bad id fails the request, not the group.
        if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(EngineError::InvalidInput(format!("token id {t} outside vocabulary of {}", self.config.vocab_size)));
        }
        if let Some(p) = s.positions {
            if p.len() != n {
                return Err(EngineError::InvalidInput(format!("{} positions for {n} tokens", p.len())));
            }
        }
        let max_pos = s.positions.map_or(c + n, |p| p.iter().map(|&x| x as usize + 1).max().unwrap_or(0));
        if max_pos > self.config.max_position_embeddings {
            return Err(EngineError::ContextLength { needed: max_pos, limit: self.config.max_position_embeddings });
        }
        match &s.mask {
            AttnMask::Tree(m) if m.len() != n * n => Err(EngineError::InvalidInput(format!("tree mask has {} entries, expected {}", m.len(), n * n))),
            AttnMask::Full(m) if m.len() != n * (c + n) => {
                Err(EngineError::InvalidInput(format!("full mask has {} entries, expected {}", m.len(), n * (c + n))))
            }
            _ => Ok(()),
        }?;
        if let LogitsRows::Rows(r) = &s.logits {
            if let Some(&bad) = r.iter().find(|&&r| r >= n) {
                return Err(EngineError::InvalidInput(format!("logits row {bad} out of {n} new tokens")));
            }
        }
        Ok(())
    }

    /// Runs the batch, appending every new token to its sequence's cache.
    pub fn forward(&self, batch: &mut [SeqInput], opts: &ForwardOptions) -> Result<Vec<SeqOutput>> {
        let cfg = &self.config;
        if self.weights.layers.len() != cfg.num_layers {
            return Err(EngineError::InvalidInput(format!(
                "this copy of the model holds {} of its {} decoder layers (loaded for drafting) and cannot run a forward pass",
                self.weights.layers.len(),
                cfg.num_layers
            )));
        }
        for s in batch.iter() {
            self.validate(s)?;
        }
        if let Some(&l) = opts.aux_layers.iter().find(|&&l| l >= cfg.num_layers) {
            return Err(EngineError::InvalidInput(format!("aux layer {l} out of {} layers", cfg.num_layers)));
        }
        if let Some(d) = &self.device {
            let mut inputs = Vec::with_capacity(batch.len());
            for s in batch.iter_mut() {
                let seq = s.cache.device.as_mut().ok_or_else(|| EngineError::InvalidInput("a host KV cache passed to a model on a device".into()))?;
                inputs.push(CudaSeqInput { seq, tokens: s.tokens, positions: s.positions, mask: s.mask.clone(), logits: s.logits.clone() });
            }
            return d.forward_with(&mut inputs, opts.want_hidden, &opts.aux_layers);
        }
        let _turn = self.group_turn();
        if let (Some(tp), Some(log)) = (&self.tp, &self.tp_log) {
            // The other ranks run this same call on their shards.
            tp.lead(&crate::tp::mirror::plan_of(log, batch)?.encode())?;
        }
        let h = cfg.hidden_size;
        let mut all_tokens = Vec::new();
        let mut positions = Vec::new();
        for s in batch.iter() {
            let base = s.cache.len();
            all_tokens.extend_from_slice(s.tokens);
            match s.positions {
                Some(p) => positions.extend_from_slice(p),
                None => positions.extend((0..s.tokens.len()).map(|i| (base + i) as u32)),
            }
        }
        let t_total = all_tokens.len();
        let mut x = self.embed(&all_tokens)?;
        let seqs: Vec<(usize, &AttnMask)> = batch.iter().map(|s| (s.cache.len(), &s.mask)).collect();
        let counts: Vec<usize> = batch.iter().map(|s| s.tokens.len()).collect();
        let plan = AttnPlan::new(&seqs, &counts, &positions, &self.rope);
        let logit_rows: Vec<LogitsRows> = batch.iter().map(|s| s.logits.clone()).collect();
        let mut caches: Vec<&mut KvCache> = batch.iter_mut().map(|s| &mut *s.cache).collect();
        for (c, &n) in caches.iter_mut().zip(&counts) {
            c.grow(n);
        }

        let mut aux: Vec<Vec<f32>> = Vec::new();
        let mut xn = vec![0.0f32; t_total * h];
        let mut o = vec![0.0f32; t_total * h];
        for (li, lw) in self.weights.layers.iter().enumerate() {
            norm_rows(&x, &lw.attn_norm, cfg.rms_norm_eps, &mut xn);
            layers::attention(&lw.qkv, &lw.wo, self.attn_shape(), cfg.rope_style, &plan, &mut caches, li, &xn, &mut o);
            if let Some(tp) = &self.tp {
                tp.all_reduce_sum(&mut o)?;
            }
            add_into(&mut x, &o);
            norm_rows(&x, &lw.ffn_norm, cfg.rms_norm_eps, &mut xn);
            layers::mlp(&lw.gate_up, &lw.w_down, &xn, t_total, &mut o);
            if let Some(tp) = &self.tp {
                tp.all_reduce_sum(&mut o)?;
            }
            add_into(&mut x, &o);
            if opts.aux_layers.contains(&li) {
                aux.push(x.clone());
            }
        }
        norm_rows(&x, &self.weights.final_norm, cfg.rms_norm_eps, &mut xn);

        // Gather the rows that need logits, for one lm_head matmul.
        let mut rows_per_seq = Vec::with_capacity(batch.len());
        let mut gathered = Vec::new();
        for (want, p) in logit_rows.iter().zip(&plan.spans) {
            let rows: Vec<usize> = match want {
                LogitsRows::None => vec![],
                LogitsRows::Last => (p.n > 0).then(|| p.n - 1).into_iter().collect(),
                LogitsRows::All => (0..p.n).collect(),
                LogitsRows::Rows(r) => r.clone(),
            };
            for &r in &rows {
                gathered.extend_from_slice(&xn[(p.offset + r) * h..(p.offset + r + 1) * h]);
            }
            rows_per_seq.push(rows);
        }
        let logits = if gathered.is_empty() { Vec::new() } else { self.lm_head_in_turn(&gathered)? };
        let vocab = cfg.vocab_size;
        let mut outs = Vec::with_capacity(batch.len());
        let mut lo = 0;
        for (p, rows) in plan.spans.iter().zip(rows_per_seq) {
            let nr = rows.len();
            let span = p.offset * h..(p.offset + p.n) * h;
            outs.push(SeqOutput {
                logits: logits[lo * vocab..(lo + nr) * vocab].to_vec(),
                logit_rows: rows,
                hidden: if opts.want_hidden { xn[span.clone()].to_vec() } else { Vec::new() },
                aux: aux.iter().map(|a| a[span.clone()].to_vec()).collect(),
            });
            lo += nr;
        }
        Ok(outs)
    }

    /// The attention geometry of every layer.
    pub fn attn_shape(&self) -> AttnShape {
        AttnShape { num_heads: self.config.num_heads, num_kv_heads: self.config.num_kv_heads, head_dim: self.config.head_dim }
    }

    /// The rotary embedding of this model.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }
}
