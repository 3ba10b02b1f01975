//! The Llama-family forward pass with arbitrary attention masks.
//!
//! One call processes a batch of sequences. Each brings new tokens with
//! explicit positions and a mask saying which earlier tokens (cached or new)
//! each new token may attend to. A causal mask is ordinary prefill/decode; a
//! tree mask scores a whole draft tree in one pass. All new tokens of all
//! sequences share each matrix multiplication, so a verify step over many
//! requests streams the weights once.

use crate::config::{ModelConfig, RopeStyle};
use crate::error::{EngineError, Result};
use crate::kv::KvCache;
use crate::weights::ModelWeights;
use aerie_kernels::cpu::{attention, ops};
use rayon::prelude::*;

thread_local! {
    /// Per-thread attention score buffer, reused across calls.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

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
    inv_freqs: Vec<f64>,
}

struct SeqPlan {
    base: usize,
    n: usize,
    offset: usize,
}

impl Model {
    pub fn new(config: ModelConfig, weights: ModelWeights, fingerprint: String) -> Self {
        let inv_freqs = config.inv_freqs();
        Model { config, weights, fingerprint, inv_freqs }
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(&self.config)
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

    /// Logits of already-normed hidden rows (`rows × hidden` in, `rows × vocab` out).
    pub fn lm_head(&self, normed: &[f32]) -> Vec<f32> {
        let h = self.config.hidden_size;
        let rows = normed.len() / h;
        let mut out = vec![0.0f32; rows * self.config.vocab_size];
        // Unrounded activations here: the logits are what greedy argmax and
        // sampling read, and 8-bit rounding of this one input moves them by
        // up to ~0.1 (see docs/benchmarks.md). It is also faster at decode.
        self.weights.lm_head().matmul_f32_act(normed, rows, &mut out);
        out
    }

    fn validate(&self, s: &SeqInput) -> Result<()> {
        let n = s.tokens.len();
        let c = s.cache.len();
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
        for s in batch.iter() {
            self.validate(s)?;
        }
        if let Some(&l) = opts.aux_layers.iter().find(|&&l| l >= cfg.num_layers) {
            return Err(EngineError::InvalidInput(format!("aux layer {l} out of {} layers", cfg.num_layers)));
        }
        let (h, nh, nkv, hd) = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let (qd, kvd, ff) = (nh * hd, nkv * hd, cfg.intermediate_size);

        // Plan: each sequence's rows in the stacked activation matrix.
        let mut plans = Vec::with_capacity(batch.len());
        let mut all_tokens = Vec::new();
        let mut positions = Vec::new();
        for s in batch.iter() {
            let base = s.cache.len();
            plans.push(SeqPlan { base, n: s.tokens.len(), offset: all_tokens.len() });
            all_tokens.extend_from_slice(s.tokens);
            match s.positions {
                Some(p) => positions.extend_from_slice(p),
                None => positions.extend((0..s.tokens.len()).map(|i| (base + i) as u32)),
            }
        }
        let t_total = all_tokens.len();
        let mut x = self.embed(&all_tokens)?;
        for s in batch.iter_mut() {
            s.cache.grow(s.tokens.len());
        }
        // Token -> sequence lookup for the attention tasks.
        let mut tok_seq = Vec::with_capacity(t_total);
        for (si, p) in plans.iter().enumerate() {
            tok_seq.extend(std::iter::repeat_n(si, p.n));
        }
        // Visible keys of every new token, shared by all layers and heads.
        let mut visible: Vec<Vec<u32>> = Vec::with_capacity(t_total);
        for (si, p) in plans.iter().enumerate() {
            for i in 0..p.n {
                visible.push((0..p.base + p.n).filter(|&j| visible_at(&batch[si].mask, p.base, p.n, i, j)).map(|j| j as u32).collect());
            }
        }
        let (cos, sin) = self.rope_tables(&positions);

        let mut aux: Vec<Vec<f32>> = Vec::new();
        let mut xn = vec![0.0f32; t_total * h];
        let mut qkv = vec![0.0f32; t_total * (qd + 2 * kvd)];
        let mut q = vec![0.0f32; t_total * qd];
        let mut k = vec![0.0f32; t_total * kvd];
        let mut v = vec![0.0f32; t_total * kvd];
        let mut attn = vec![0.0f32; t_total * qd];
        let mut o = vec![0.0f32; t_total * h];
        let mut gate_up = vec![0.0f32; t_total * 2 * ff];
        let mut act = vec![0.0f32; t_total * ff];
        for (li, lw) in self.weights.layers.iter().enumerate() {
            norm_rows(&x, &lw.attn_norm, cfg.rms_norm_eps, &mut xn);
            lw.qkv.forward(&xn, t_total, &mut qkv);
            for (t, row) in qkv.chunks(qd + 2 * kvd).enumerate() {
                q[t * qd..(t + 1) * qd].copy_from_slice(&row[..qd]);
                k[t * kvd..(t + 1) * kvd].copy_from_slice(&row[qd..qd + kvd]);
                v[t * kvd..(t + 1) * kvd].copy_from_slice(&row[qd + kvd..]);
            }
            self.apply_rope(&mut q, nh, &cos, &sin);
            self.apply_rope(&mut k, nkv, &cos, &sin);
            for (s, p) in batch.iter_mut().zip(&plans) {
                let dst = p.base * kvd..(p.base + p.n) * kvd;
                let src = p.offset * kvd..(p.offset + p.n) * kvd;
                s.cache.k[li][dst.clone()].copy_from_slice(&k[src.clone()]);
                s.cache.v[li][dst].copy_from_slice(&v[src]);
            }
            {
                let caches: Vec<&KvCache> = batch.iter().map(|s| &*s.cache).collect();
                let scale = 1.0 / (hd as f32).sqrt();
                let group = nh / nkv;
                // One task per (token, kv head): each visible key is loaded
                // once for all the query heads that share it.
                let task = |idx: usize, out: &mut [f32]| {
                    let (t, kvh) = (idx / nkv, idx % nkv);
                    let cache = caches[tok_seq[t]];
                    let head0 = kvh * group;
                    let args = attention::AttnArgs {
                        q: &q[t * qd + head0 * hd..t * qd + (head0 + group) * hd],
                        k: &cache.k[li],
                        v: &cache.v[li],
                        row_stride: kvd,
                        offset: kvh * hd,
                        head_dim: hd,
                        keys: &visible[t],
                        scale,
                    };
                    SCRATCH.with(|s| attention::attend(&args, out, &mut s.borrow_mut()));
                };
                aerie_kernels::cpu::pool::for_each_chunk_mut(&mut attn, group * hd, &task);
            }
            lw.wo.matmul(&attn, t_total, &mut o);
            add_into(&mut x, &o);
            norm_rows(&x, &lw.ffn_norm, cfg.rms_norm_eps, &mut xn);
            lw.gate_up.forward(&xn, t_total, &mut gate_up);
            for (row, a) in gate_up.chunks(2 * ff).zip(act.chunks_mut(ff)) {
                a.copy_from_slice(&row[..ff]);
                ops::silu_mul(a, &row[ff..]);
            }
            lw.w_down.matmul(&act, t_total, &mut o);
            add_into(&mut x, &o);
            if opts.aux_layers.contains(&li) {
                aux.push(x.clone());
            }
        }
        norm_rows(&x, &self.weights.final_norm, cfg.rms_norm_eps, &mut xn);

        // Gather the rows that need logits, for one lm_head matmul.
        let mut rows_per_seq = Vec::with_capacity(batch.len());
        let mut gathered = Vec::new();
        for (s, p) in batch.iter().zip(&plans) {
            let rows: Vec<usize> = match &s.logits {
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
        let logits = self.lm_head(&gathered);
        let vocab = cfg.vocab_size;
        let mut outs = Vec::with_capacity(batch.len());
        let mut lo = 0;
        for (p, rows) in plans.iter().zip(rows_per_seq) {
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

    fn rope_tables(&self, positions: &[u32]) -> (Vec<f32>, Vec<f32>) {
        let half = self.config.head_dim / 2;
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freqs {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        (cos, sin)
    }

    fn apply_rope(&self, x: &mut [f32], heads: usize, cos: &[f32], sin: &[f32]) {
        let hd = self.config.head_dim;
        let half = hd / 2;
        let style = self.config.rope_style;
        for (t, row) in x.chunks_mut(heads * hd).enumerate() {
            let (c, s) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
            for head in row.chunks_mut(hd) {
                for i in 0..half {
                    let (a, b) = match style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::HalfSplit => (i, i + half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * c[i] - x1 * s[i];
                    head[b] = x0 * s[i] + x1 * c[i];
                }
            }
        }
    }
}

#[inline]
fn visible_at(mask: &AttnMask, base: usize, n: usize, i: usize, j: usize) -> bool {
    match mask {
        AttnMask::Causal => j < base || j - base <= i,
        AttnMask::Tree(m) => j < base || m[i * n + (j - base)],
        AttnMask::Full(m) => m[i * (base + n) + j],
    }
}

fn norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    if x.len() < 16 * h {
        out.chunks_mut(h).zip(x.chunks(h)).for_each(|(o, r)| ops::rms_norm(r, w, eps, o));
    } else {
        out.par_chunks_mut(h).zip(x.par_chunks(h)).for_each(|(o, r)| ops::rms_norm(r, w, eps, o));
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
