//! STANDALONE: a separate, smaller language model with the target's
//! tokenizer drafts EAGLE-2 trees (no target features).
//!
//! The draft keeps its own KV over the committed tokens, the root included;
//! the root's row predicts its children, and a node at depth `d` sits at
//! `root_pos + d`.

use crate::eagle::{rows_top_k, tree_rows_mask};
use crate::error::Result;
use crate::tree_search::{grow_tree, listed, Allow, DraftNet, DraftOut, StepRows};
use aerie_engine::spec::{DraftTree, Features, Proposer, TreeSpec};
use aerie_engine::{AttnMask, ForwardOptions, KvCache, LogitsRows, Model, SeqInput};
use std::sync::Arc;

pub struct StandaloneProposer {
    draft: Arc<Model>,
    /// Token ids at or beyond this are never proposed (padding rows of a
    /// draft whose embedding is larger than the target's vocabulary).
    vocab: usize,
    tree: TreeSpec,
    /// Minimum path probability of a drafted node (see `tree_search`).
    min_score: f32,
    cache: KvCache,
    tokens: Vec<u32>,
    root_topk: Vec<(u32, f32)>,
}

struct ModelNet<'a> {
    draft: &'a Model,
    vocab: usize,
    cache: &'a mut KvCache,
    committed: usize,
}

impl ModelNet<'_> {
    fn top_k(&self, logits: &[f32], k: usize) -> Vec<Vec<(u32, f32)>> {
        let dv = self.draft.config.vocab_size;
        let rows: Vec<f32> = logits.chunks(dv).flat_map(|r| r[..self.vocab].iter().copied()).collect();
        rows_top_k(&rows, self.vocab, k, &|i| i)
    }
}

impl DraftNet for ModelNet<'_> {
    fn step(&mut self, rows: &StepRows, topk: usize) -> Result<DraftOut> {
        let mask = tree_rows_mask(self.committed, self.cache.len(), rows.ancestors);
        let out = self.draft.forward(
            &mut [SeqInput { cache: self.cache, tokens: rows.tokens, positions: Some(rows.positions), mask, logits: LogitsRows::All }],
            &ForwardOptions::default(),
        )?;
        Ok(DraftOut { topk: self.top_k(&out[0].logits, topk), states: Features::empty() })
    }
    fn kv_len(&self) -> usize {
        self.cache.len()
    }
    fn truncate_kv(&mut self, len: usize) {
        self.cache.truncate(len)
    }
}

impl StandaloneProposer {
    /// `vocab` is the target's vocabulary size.
    pub fn new(draft: Arc<Model>, vocab: usize, tree: TreeSpec) -> Self {
        let cache = draft.new_cache();
        let vocab = vocab.min(draft.config.vocab_size);
        StandaloneProposer { draft, vocab, tree, min_score: 0.0, cache, tokens: Vec::new(), root_topk: Vec::new() }
    }

    /// Sets the minimum path probability of a drafted node (default 0).
    pub fn with_min_score(mut self, min_score: f32) -> Self {
        self.min_score = min_score;
        self
    }
}

impl Proposer for StandaloneProposer {
    fn name(&self) -> &'static str {
        "standalone"
    }

    fn reset(&mut self) {
        self.cache.truncate(0);
        self.tokens.clear();
        self.root_topk.clear();
    }

    fn commit(&mut self, tokens: &[u32], _feats: &Features) -> aerie_engine::Result<()> {
        self.tokens.extend_from_slice(tokens);
        Ok(())
    }

    fn catch_up(&mut self) -> aerie_engine::Result<()> {
        let done = self.cache.len();
        if done >= self.tokens.len() {
            return Ok(());
        }
        let out = self.draft.forward(
            &mut [SeqInput { cache: &mut self.cache, tokens: &self.tokens[done..], positions: None, mask: AttnMask::Causal, logits: LogitsRows::Last }],
            &ForwardOptions::default(),
        )?;
        let net = ModelNet { draft: &self.draft, vocab: self.vocab, cache: &mut self.cache, committed: 0 };
        // More than topk, so a constrained request finds admissible ones.
        self.root_topk = net.top_k(&out[0].logits, listed(self.tree.topk)).remove(0);
        Ok(())
    }

    fn propose(&mut self, max_depth: usize) -> aerie_engine::Result<DraftTree> {
        self.grow(max_depth, None)
    }

    fn propose_within(&mut self, max_depth: usize, allow: Allow) -> aerie_engine::Result<DraftTree> {
        self.grow(max_depth, Some(allow))
    }
}

impl StandaloneProposer {
    fn grow(&mut self, max_depth: usize, allow: Option<Allow>) -> aerie_engine::Result<DraftTree> {
        self.catch_up()?;
        let root = *self.tokens.last().ok_or_else(|| aerie_engine::EngineError::InvalidInput("propose before begin".into()))?;
        let root_pos = (self.tokens.len() - 1) as u32;
        let committed = self.cache.len();
        let topk = self.root_topk.clone();
        let mut net = ModelNet { draft: &self.draft, vocab: self.vocab, cache: &mut self.cache, committed };
        Ok(grow_tree(&mut net, root, &topk, &[], root_pos, &self.tree, max_depth, self.min_score, allow)?)
    }
}
