//! NGRAM: draft trees from n-gram matches, no model.
//!
//! Strategy (SGLang's BFS mode): a trie counts every token sequence of up to
//! `max_match_window + branch_length` tokens seen so far. To propose, the
//! last `w` committed tokens (the root last) are looked up for `w` from
//! `max_match_window` down to `min_match_window`. Each match's continuations
//! are added breadth-first, most frequent first, with a breadth that shrinks
//! linearly from `max_bfs_breadth` (shortest match) to `min_bfs_breadth`
//! (longest match): a long match is specific, so few branches suffice; a
//! short one is ambiguous and gets more. Matches merge into one tree of at
//! most `num_draft_tokens` nodes (root included), no deeper than
//! `branch_length`.
//!
//! Two tries are consulted in order: the request's own (its prompt and
//! output) and a process-wide one shared by all requests, which stops
//! growing at `capacity` nodes and is then cleared and refilled.
//!
//! Parameters and defaults follow SGLang's `--speculative-ngram-*` flags.

use aerie_engine::spec::{DraftTree, Features, Proposer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// NGRAM settings; defaults are SGLang's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NgramConfig {
    /// `--speculative-ngram-min-match-window-size` (default 1).
    pub min_match_window: usize,
    /// `--speculative-ngram-max-match-window-size` (default 12).
    pub max_match_window: usize,
    /// `--speculative-ngram-min-bfs-breadth` (default 1).
    pub min_bfs_breadth: usize,
    /// `--speculative-ngram-max-bfs-breadth` (default 10).
    pub max_bfs_breadth: usize,
    /// `--speculative-ngram-branch-length` (default 18): tokens kept after a match.
    pub branch_length: usize,
    /// `--speculative-ngram-capacity`: shared-trie nodes (default 1,000,000;
    /// SGLang says 10,000,000, but its nodes are smaller than ours).
    pub capacity: usize,
    /// `--speculative-num-draft-tokens`: tree nodes, root included.
    pub num_draft_tokens: usize,
}

impl Default for NgramConfig {
    fn default() -> Self {
        NgramConfig { min_match_window: 1, max_match_window: 12, min_bfs_breadth: 1, max_bfs_breadth: 10, branch_length: 18, capacity: 1_000_000, num_draft_tokens: 8 }
    }
}

impl NgramConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.min_match_window == 0 || self.min_match_window > self.max_match_window {
            return Err(format!("ngram match window must satisfy 1 <= min ({}) <= max ({})", self.min_match_window, self.max_match_window));
        }
        if self.min_bfs_breadth == 0 || self.min_bfs_breadth > self.max_bfs_breadth {
            return Err(format!("ngram bfs breadth must satisfy 1 <= min ({}) <= max ({})", self.min_bfs_breadth, self.max_bfs_breadth));
        }
        if self.branch_length == 0 || self.num_draft_tokens < 2 {
            return Err("ngram needs branch_length >= 1 and num_draft_tokens >= 2".into());
        }
        Ok(())
    }

    /// Breadth for a match of `w` tokens.
    fn breadth(&self, w: usize) -> usize {
        let span = (self.max_match_window - self.min_match_window).max(1) as f64;
        let frac = (w - self.min_match_window) as f64 / span;
        let b = self.max_bfs_breadth as f64 - frac * (self.max_bfs_breadth - self.min_bfs_breadth) as f64;
        (b.round() as usize).clamp(self.min_bfs_breadth, self.max_bfs_breadth)
    }
}

#[derive(Default, Clone)]
struct Node {
    children: HashMap<u32, u32>,
    count: u32,
}

/// Counts of token sequences up to `depth` long.
#[derive(Clone)]
pub struct NgramTrie {
    nodes: Vec<Node>,
    depth: usize,
}

impl NgramTrie {
    pub fn new(depth: usize) -> Self {
        NgramTrie { nodes: vec![Node::default()], depth }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 1
    }

    /// Counts every sequence that ends at `stream[end]`.
    pub fn add_ending_at(&mut self, stream: &[u32], end: usize) {
        let lo = (end + 1).saturating_sub(self.depth);
        for start in lo..=end {
            let mut n = 0usize;
            for &t in &stream[start..=end] {
                n = match self.nodes[n].children.get(&t) {
                    Some(&c) => c as usize,
                    None => {
                        let c = self.nodes.len();
                        self.nodes.push(Node::default());
                        self.nodes[n].children.insert(t, c as u32);
                        c
                    }
                };
            }
            self.nodes[n].count += 1;
        }
    }

    fn find(&self, seq: &[u32]) -> Option<usize> {
        let mut n = 0usize;
        for t in seq {
            n = *self.nodes[n].children.get(t)? as usize;
        }
        Some(n)
    }

    /// Children of `n`, most frequent first (ties: lower token id).
    fn ranked(&self, n: usize) -> Vec<(u32, usize)> {
        let mut c: Vec<(u32, usize)> = self.nodes[n].children.iter().map(|(&t, &i)| (t, i as usize)).collect();
        c.sort_by(|a, b| self.nodes[b.1].count.cmp(&self.nodes[a.1].count).then(a.0.cmp(&b.0)));
        c
    }
}

/// A tree under construction, merging branches by token.
struct TreeBuilder {
    tokens: Vec<u32>,
    parents: Vec<Option<usize>>,
    depth: Vec<usize>,
    child: HashMap<(usize, u32), usize>,
    cap: usize,
}

impl TreeBuilder {
    fn full(&self) -> bool {
        self.tokens.len() >= self.cap
    }
    /// The node for `tok` under `parent`, added if new and room remains.
    fn child(&mut self, parent: usize, tok: u32) -> Option<usize> {
        if let Some(&c) = self.child.get(&(parent, tok)) {
            return Some(c);
        }
        if self.full() {
            return None;
        }
        let c = self.tokens.len();
        self.tokens.push(tok);
        self.parents.push(Some(parent));
        self.depth.push(self.depth[parent] + 1);
        self.child.insert((parent, tok), c);
        Some(c)
    }
}

pub struct NgramProposer {
    cfg: NgramConfig,
    own: NgramTrie,
    shared: Arc<Mutex<NgramTrie>>,
    tokens: Vec<u32>,
}

impl NgramProposer {
    /// A proposer sharing `shared` with every other request of the process.
    pub fn new(cfg: NgramConfig, shared: Arc<Mutex<NgramTrie>>) -> Self {
        let depth = cfg.max_match_window + cfg.branch_length;
        NgramProposer { own: NgramTrie::new(depth), cfg, shared, tokens: Vec::new() }
    }

    /// A fresh shared trie for `cfg`.
    pub fn shared_trie(cfg: &NgramConfig) -> Arc<Mutex<NgramTrie>> {
        Arc::new(Mutex::new(NgramTrie::new(cfg.max_match_window + cfg.branch_length)))
    }

    fn expand(&self, trie: &NgramTrie, b: &mut TreeBuilder, max_depth: usize) {
        let n = self.tokens.len();
        let hi = self.cfg.max_match_window.min(n);
        for w in (self.cfg.min_match_window..=hi).rev() {
            if b.full() {
                return;
            }
            let Some(start) = trie.find(&self.tokens[n - w..]) else { continue };
            let breadth = self.cfg.breadth(w);
            let mut queue = std::collections::VecDeque::from([(start, 0usize)]);
            while let Some((tn, node)) = queue.pop_front() {
                if b.depth[node] >= max_depth.min(self.cfg.branch_length) {
                    continue;
                }
                for (tok, tc) in trie.ranked(tn).into_iter().take(breadth) {
                    match b.child(node, tok) {
                        Some(c) => queue.push_back((tc, c)),
                        None => return,
                    }
                }
            }
        }
    }
}

impl Proposer for NgramProposer {
    fn name(&self) -> &'static str {
        "ngram"
    }

    fn reset(&mut self) {
        self.own = NgramTrie::new(self.cfg.max_match_window + self.cfg.branch_length);
        self.tokens.clear();
    }

    fn commit(&mut self, tokens: &[u32], _feats: &Features) -> aerie_engine::Result<()> {
        let from = self.tokens.len();
        self.tokens.extend_from_slice(tokens);
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if shared.len() >= self.cfg.capacity {
            *shared = NgramTrie::new(self.cfg.max_match_window + self.cfg.branch_length);
        }
        for end in from..self.tokens.len() {
            self.own.add_ending_at(&self.tokens, end);
            shared.add_ending_at(&self.tokens, end);
        }
        Ok(())
    }

    fn propose(&mut self, max_depth: usize) -> aerie_engine::Result<DraftTree> {
        let root = *self.tokens.last().ok_or_else(|| aerie_engine::EngineError::InvalidInput("propose before begin".into()))?;
        let mut b = TreeBuilder { tokens: vec![root], parents: vec![None], depth: vec![0], child: HashMap::new(), cap: self.cfg.num_draft_tokens };
        if max_depth > 0 {
            self.expand(&self.own, &mut b, max_depth);
            let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            self.expand(&shared, &mut b, max_depth);
        }
        DraftTree::from_parents(b.tokens, b.parents)
    }
}
