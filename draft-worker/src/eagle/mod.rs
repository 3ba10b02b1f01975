//! EAGLE-1/2/3 proposers: a draft head that reads the target's features.
//!
//! Stream alignment: draft row `t` pairs token `x_{t+1}` with target
//! feature `f_t` and sits at position `t` (as in SGLang's draft extend).
//! After a commit the draft has every pair up to the root's, so the last
//! catch-up row predicts the root's children; a tree node at depth `d`
//! then sits at position `root_pos - 1 + d`.
//!
//! A checkpoint with several MTP layers chains them ([`ChainLayer`]): MTP
//! layer `j` (1-based, after the first) drafts depth `j + 1`. As in
//! DeepSeek-V3's MTP, its row `t` reads layer `j−1`'s output of row `t`
//! with token `x_{t+j+1}` and sits at position `t`, so it lags the first
//! layer by `j` committed rows; at draft time its row for the root sits at
//! the root row's position and sees its own committed rows and itself.
//! Depths past the last layer reuse it.

pub mod config;
pub mod head;
pub mod mtp;

pub use config::{default_aux_layers, EagleConfig, EagleKind};
pub use head::{EagleHead, HeadRows};

use crate::error::Result;
use crate::tree_search::{grow_tree, listed, top_k, Allow, DraftNet, DraftOut, StepRows};
use aerie_engine::spec::{DraftTree, FeatureKind, Features, Proposer, TreeSpec};
use aerie_engine::{AttnMask, KvCache, Model};
use aerie_kernels::cpu::ops;
use std::sync::Arc;

/// Softmax over each `vocab`-wide row, then the best `k` (as target ids).
pub(crate) fn rows_top_k(logits: &[f32], vocab: usize, k: usize, map: &dyn Fn(u32) -> u32) -> Vec<Vec<(u32, f32)>> {
    logits
        .chunks(vocab)
        .map(|row| {
            let mut p = row.to_vec();
            ops::softmax(&mut p);
            top_k(&p, k).into_iter().map(|(i, q)| (map(i), q)).collect()
        })
        .collect()
}

/// The visibility of tree rows appended at `kv_len`: the committed prefix,
/// listed ancestors, and the row itself.
pub fn tree_rows_mask(committed: usize, kv_len: usize, ancestors: &[Vec<usize>]) -> AttnMask {
    let n = ancestors.len();
    let w = kv_len + n;
    let mut m = vec![false; n * w];
    for (i, anc) in ancestors.iter().enumerate() {
        m[i * w..i * w + committed].iter_mut().for_each(|v| *v = true);
        for &a in anc {
            m[i * w + a] = true;
        }
        m[i * w + kv_len + i] = true;
    }
    AttnMask::Full(m)
}

/// One further MTP layer of a chain, with its own draft KV.
pub struct ChainLayer {
    head: Arc<EagleHead>,
    cache: KvCache,
    /// Committed rows this layer has run.
    processed: usize,
    /// The previous layer's outputs of rows `processed..` (`rows × H`).
    carry: Vec<f32>,
}

pub struct EagleProposer {
    head: Arc<EagleHead>,
    /// MTP layers 2, 3, … of the checkpoint (empty for EAGLE heads).
    chain: Vec<ChainLayer>,
    target: Arc<Model>,
    tree: TreeSpec,
    /// Candidates below this path probability are not drafted further nor
    /// verified (see `tree_search`).
    min_score: f32,
    cache: KvCache,
    tokens: Vec<u32>,
    /// Target features of pairs not yet run (rows for `t = processed..`).
    pending: Features,
    processed: usize,
    /// The last pair's top-k and output state: the root's children.
    root: Option<(Vec<(u32, f32)>, Vec<f32>)>,
}

struct HeadNet<'a> {
    head: &'a EagleHead,
    target: &'a Model,
    cache: &'a mut KvCache,
    committed: usize,
    chain: &'a mut [ChainLayer],
    /// Committed length of each chain layer's cache.
    chain_committed: Vec<usize>,
    /// Forwards run so far in this search (the leaves' depth − 1).
    steps: usize,
    /// Rows run by chain layers, counted into `kv_len` (their ancestors
    /// live in other layers and are never attended).
    chain_rows: usize,
}

impl DraftNet for HeadNet<'_> {
    fn step(&mut self, rows: &StepRows, topk: usize) -> Result<DraftOut> {
        let step = self.steps;
        self.steps += 1;
        let (head, x) = if self.chain.is_empty() {
            let mask = tree_rows_mask(self.committed, self.cache.len(), rows.ancestors);
            (self.head, self.head.forward(self.target, self.cache, rows.tokens, &rows.states.data, rows.positions, mask)?)
        } else {
            // Leaves at depth `step + 1` run through MTP layer `step + 2`
            // (the last one past the chain's end) at the root row's position.
            let layer = &mut self.chain[step.min(self.chain.len() - 1)];
            let n = rows.tokens.len();
            let positions: Vec<u32> = rows.positions.iter().map(|&p| p - (step as u32 + 1)).collect();
            let len = layer.cache.len();
            let mask = tree_rows_mask(len, len, &vec![Vec::new(); n]);
            let x = layer.head.forward(self.target, &mut layer.cache, rows.tokens, &rows.states.data, &positions, mask)?;
            self.chain_rows += n;
            (&*layer.head, x)
        };
        let topk = head.top_k(self.target, &x, topk)?;
        Ok(DraftOut { topk, states: Features { width: head.llama().hidden_size, data: x } })
    }
    fn kv_len(&self) -> usize {
        self.cache.len() + self.chain_rows
    }
    fn truncate_kv(&mut self, len: usize) {
        self.cache.truncate(len.min(self.cache.len()));
        for (l, &c) in self.chain.iter_mut().zip(&self.chain_committed) {
            l.cache.truncate(c);
        }
        self.chain_rows = 0;
    }
}

impl EagleProposer {
    pub fn new(head: Arc<EagleHead>, target: Arc<Model>, tree: TreeSpec) -> Self {
        let cache = head.new_cache();
        let width = head.feature_width();
        EagleProposer { head, chain: Vec::new(), target, tree, min_score: 0.0, cache, tokens: Vec::new(), pending: Features { width, data: Vec::new() }, processed: 0, root: None }
    }

    /// Chains further MTP layers after the first (see [`ChainLayer`]).
    pub fn with_chain(mut self, heads: &[Arc<EagleHead>]) -> Self {
        self.chain = heads.iter().map(|h| ChainLayer { head: h.clone(), cache: h.new_cache(), processed: 0, carry: Vec::new() }).collect();
        self
    }

    /// Runs each chain layer over the committed rows it can now see: layer
    /// `j` runs row `t` once token `x_{t+j+1}` is committed. `fresh` holds
    /// the first layer's outputs of the rows it just ran.
    fn catch_up_chain(&mut self, fresh: Vec<f32>) -> aerie_engine::Result<()> {
        let Some(first) = self.chain.first_mut() else { return Ok(()) };
        first.carry.extend_from_slice(&fresh);
        let n_tok = self.tokens.len();
        for j in 0..self.chain.len() {
            let layer = &mut self.chain[j];
            let h = layer.head.llama().hidden_size;
            let depth = j + 2;
            // Rows t with x_{t+depth} committed: t < n_tok - depth.
            let ready = n_tok.saturating_sub(depth).saturating_sub(layer.processed).min(layer.carry.len() / h);
            if ready == 0 {
                continue;
            }
            let t0 = layer.processed;
            let tokens = &self.tokens[t0 + depth..t0 + depth + ready];
            let positions: Vec<u32> = (t0..t0 + ready).map(|t| t as u32).collect();
            let states: Vec<f32> = layer.carry.drain(..ready * h).collect();
            let x = layer.head.forward(&self.target, &mut layer.cache, tokens, &states, &positions, AttnMask::Causal)?;
            layer.processed += ready;
            if let Some(next) = self.chain.get_mut(j + 1) {
                next.carry.extend_from_slice(&x);
            }
        }
        Ok(())
    }

    /// Sets the minimum path probability of a drafted node (default 0).
    pub fn with_min_score(mut self, min_score: f32) -> Self {
        self.min_score = min_score;
        self
    }
}

impl Proposer for EagleProposer {
    fn name(&self) -> &'static str {
        match self.head.kind() {
            EagleKind::Eagle => "eagle",
            EagleKind::Eagle3 => "eagle3",
            EagleKind::Mtp => "mtp",
        }
    }

    fn features(&self) -> FeatureKind {
        match self.head.kind() {
            EagleKind::Eagle | EagleKind::Mtp => FeatureKind::Hidden,
            EagleKind::Eagle3 => FeatureKind::Aux(self.head.aux_layers.clone()),
        }
    }

    fn reset(&mut self) {
        for l in &mut self.chain {
            l.cache.truncate(0);
            l.processed = 0;
            l.carry.clear();
        }
        self.cache.truncate(0);
        self.tokens.clear();
        self.pending.data.clear();
        self.processed = 0;
        self.root = None;
    }

    fn commit(&mut self, tokens: &[u32], feats: &Features) -> aerie_engine::Result<()> {
        if feats.rows() > 0 && feats.width != self.pending.width {
            return Err(aerie_engine::EngineError::InvalidInput(format!("EAGLE head takes {}-wide features, got {}", self.pending.width, feats.width)));
        }
        self.tokens.extend_from_slice(tokens);
        self.pending.data.extend_from_slice(&feats.data);
        if self.processed + self.pending.rows() + 1 != self.tokens.len() {
            return Err(aerie_engine::EngineError::InvalidInput(format!(
                "proposer stream out of step: {} tokens, {} features",
                self.tokens.len(),
                self.processed + self.pending.rows()
            )));
        }
        Ok(())
    }

    fn catch_up(&mut self) -> aerie_engine::Result<()> {
        let n = self.pending.rows();
        if n == 0 {
            return Ok(());
        }
        let t0 = self.processed;
        let tokens = &self.tokens[t0 + 1..t0 + 1 + n];
        let positions: Vec<u32> = (t0..t0 + n).map(|t| t as u32).collect();
        let len = self.cache.len();
        let x = self.head.forward(&self.target, &mut self.cache, tokens, &self.pending.data, &positions, AttnMask::Causal)?;
        let h = self.head.llama().hidden_size;
        let last = x[(n - 1) * h..].to_vec();
        // More than topk, so a constrained request finds admissible ones.
        let topk = match self.head.top_k(&self.target, &last, listed(self.tree.topk)) {
            Ok(mut t) => t.remove(0),
            Err(e) => {
                // The rows just cached go again: a retry starts from the same place.
                self.cache.truncate(len);
                return Err(e.into());
            }
        };
        self.root = Some((topk, last));
        self.processed += n;
        self.pending.data.clear();
        self.catch_up_chain(x)
    }

    fn propose(&mut self, max_depth: usize) -> aerie_engine::Result<DraftTree> {
        self.grow(max_depth, None)
    }

    fn propose_within(&mut self, max_depth: usize, allow: Allow) -> aerie_engine::Result<DraftTree> {
        self.grow(max_depth, Some(allow))
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }
}

fn head_cache(head: &EagleHead) -> KvCache {
    head.new_cache()
}

/// [`Proposer::catch_up`] for several proposers at once: those sharing a
/// head run their pending rows in one [`EagleHead::forward_many`] and one
/// lm_head call, so a session's proposals for a batch of requests read the
/// head's weights once rather than once per request. With a one-step tree
/// (the shipped head's default chain) that pass is all the drafting there
/// is. Each proposer ends as its own catch-up would leave it.
pub fn catch_up_many(props: &mut [&mut EagleProposer]) -> aerie_engine::Result<()> {
    let mut done = vec![false; props.len()];
    // Chained MTP layers catch up one proposer at a time.
    for (p, d) in props.iter_mut().zip(&mut done) {
        if !p.chain.is_empty() {
            p.catch_up()?;
            *d = true;
        }
    }
    for first in 0..props.len() {
        if done[first] {
            continue;
        }
        // The proposers sharing this one's head (one per draft worker).
        let group: Vec<usize> = (first..props.len()).filter(|&j| !done[j] && Arc::ptr_eq(&props[j].head, &props[first].head) && props[j].pending.rows() > 0).collect();
        for &j in &group {
            done[j] = true;
        }
        if group.is_empty() {
            continue;
        }
        let head = props[first].head.clone();
        let target = props[first].target.clone();
        let inputs: Vec<(Vec<u32>, Vec<u32>)> = group
            .iter()
            .map(|&j| {
                let p = &props[j];
                let (t0, n) = (p.processed, p.pending.rows());
                (p.tokens[t0 + 1..t0 + 1 + n].to_vec(), (t0..t0 + n).map(|t| t as u32).collect())
            })
            .collect();
        let lens: Vec<usize> = group.iter().map(|&j| props[j].cache.len()).collect();
        let mut caches: Vec<KvCache> = group.iter().map(|&j| std::mem::replace(&mut props[j].cache, head_cache(&props[j].head))).collect();
        let pending: Vec<Vec<f32>> = group.iter().map(|&j| std::mem::take(&mut props[j].pending.data)).collect();
        let outs = {
            let mut rows: Vec<HeadRows> = caches
                .iter_mut()
                .zip(&inputs)
                .zip(&pending)
                .map(|((cache, (tokens, positions)), states)| HeadRows { cache, tokens, states, positions, mask: AttnMask::Causal })
                .collect();
            head.forward_many(&target, &mut rows)
        };
        let h = head.llama().hidden_size;
        let outs = match outs {
            Ok(o) => o,
            Err(e) => {
                // Put everything back, as a failed catch-up would leave it.
                for ((&j, cache), data) in group.iter().zip(caches).zip(pending) {
                    props[j].cache = cache;
                    props[j].pending.data = data;
                }
                return Err(e.into());
            }
        };
        let lasts: Vec<f32> = outs.iter().flat_map(|x| x[x.len() - h..].iter().copied()).collect();
        let topks = match head.top_k(&target, &lasts, listed(props[first].tree.topk)) {
            Ok(t) => t,
            Err(e) => {
                // The rows just cached are dropped again: nothing advanced.
                for (((&j, mut cache), data), len) in group.iter().zip(caches).zip(pending).zip(lens) {
                    cache.truncate(len);
                    props[j].cache = cache;
                    props[j].pending.data = data;
                }
                return Err(e.into());
            }
        };
        for (k, ((&j, cache), topk)) in group.iter().zip(caches).zip(topks).enumerate() {
            let p = &mut *props[j];
            p.cache = cache;
            p.root = Some((topk, lasts[k * h..(k + 1) * h].to_vec()));
            p.processed += inputs[k].0.len();
        }
    }
    Ok(())
}

impl EagleProposer {
    fn grow(&mut self, max_depth: usize, allow: Option<Allow>) -> aerie_engine::Result<DraftTree> {
        self.catch_up()?;
        let root = *self.tokens.last().ok_or_else(|| aerie_engine::EngineError::InvalidInput("propose before begin".into()))?;
        let Some((topk, state)) = self.root.clone() else {
            return Ok(DraftTree::chain(root, &[]));
        };
        let root_pos = (self.tokens.len() - 2) as u32;
        let committed = self.cache.len();
        let chain_committed = self.chain.iter().map(|l| l.cache.len()).collect();
        let mut net = HeadNet { head: &self.head, target: &self.target, cache: &mut self.cache, committed, chain: &mut self.chain, chain_committed, steps: 0, chain_rows: 0 };
        Ok(grow_tree(&mut net, root, &topk, &state, root_pos, &self.tree, max_depth, self.min_score, allow)?)
    }
}
