//! EAGLE draft trees with SGLang's semantics.
//!
//! Strategy: the drafter expands `topk` children of the root, then for
//! `num_steps - 1` more steps expands `topk` children of each of the `topk`
//! best current leaves, scoring each node by the product of draft
//! probabilities along its path. Of all candidates, the best
//! `num_draft_tokens - 1` are kept and ordered by creation (step-major), so
//! parents precede children. The tree includes the root (the last verified
//! token), so `num_draft_tokens` counts it. `topk = 1` gives a chain of
//! `num_steps + 1` tokens.
//!
//! Parameters: `--speculative-num-steps`, `--speculative-eagle-topk`,
//! `--speculative-num-draft-tokens`; defaults (5, 4, 8) as SGLang uses for
//! Llama-family targets.

use crate::error::{EngineError, Result};
use crate::model::AttnMask;

/// Tree-shape settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeSpec {
    pub num_steps: usize,
    pub topk: usize,
    /// Nodes in the verified tree, the root included.
    pub num_draft_tokens: usize,
}

impl Default for TreeSpec {
    /// SGLang's defaults for Llama-family targets.
    fn default() -> Self {
        TreeSpec { num_steps: 5, topk: 4, num_draft_tokens: 8 }
    }
}

impl TreeSpec {
    /// Candidates the drafter produces: `topk + (steps - 1) * topk²`.
    pub fn max_candidates(&self) -> usize {
        self.topk + self.num_steps.saturating_sub(1) * self.topk * self.topk
    }

    /// Refuses settings no tree can satisfy.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::InvalidInput(m));
        if self.num_steps == 0 || self.topk == 0 || self.num_draft_tokens < 2 {
            return bad(format!("speculative tree needs num_steps >= 1, topk >= 1 and num_draft_tokens >= 2, got {self:?}"));
        }
        if self.num_draft_tokens - 1 > self.max_candidates() {
            return bad(format!(
                "--speculative-num-draft-tokens {} is impossible with --speculative-num-steps {} and --speculative-eagle-topk {}: \
                 at most {} draft tokens plus the root (topk + (steps-1)*topk^2)",
                self.num_draft_tokens,
                self.num_steps,
                self.topk,
                self.max_candidates()
            ));
        }
        Ok(())
    }
}

/// One drafted node before selection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub token: u32,
    /// Index of the parent candidate; `None` for children of the root.
    pub parent: Option<usize>,
    /// Product of draft probabilities along the path from the root.
    pub score: f32,
}

/// A verified-tree layout: node 0 is the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftTree {
    pub tokens: Vec<u32>,
    /// `parents[0]` is `None`; every other node's parent precedes it.
    pub parents: Vec<Option<usize>>,
    pub depth: Vec<usize>,
}

impl DraftTree {
    /// A chain root → tokens[0] → tokens[1] → …
    pub fn chain(root: u32, tokens: &[u32]) -> DraftTree {
        let mut t = DraftTree { tokens: vec![root], parents: vec![None], depth: vec![0] };
        for (i, &tok) in tokens.iter().enumerate() {
            t.tokens.push(tok);
            t.parents.push(Some(i));
            t.depth.push(i + 1);
        }
        t
    }

    /// Keeps the best `spec.num_draft_tokens - 1` candidates (ties broken by
    /// creation order) and orders them by creation, under `root`.
    pub fn select(root: u32, cands: &[Candidate], spec: &TreeSpec) -> Result<DraftTree> {
        for (i, c) in cands.iter().enumerate() {
            if c.parent.is_some_and(|p| p >= i) {
                return Err(EngineError::InvalidInput(format!("candidate {i} names parent {:?}, which does not precede it", c.parent)));
            }
        }
        let keep = (spec.num_draft_tokens - 1).min(cands.len());
        let mut order: Vec<usize> = (0..cands.len()).collect();
        order.sort_by(|&a, &b| cands[b].score.total_cmp(&cands[a].score).then(a.cmp(&b)));
        let mut chosen: Vec<usize> = order[..keep].to_vec();
        chosen.sort_unstable();
        let mut slot = vec![usize::MAX; cands.len()];
        let mut t = DraftTree { tokens: vec![root], parents: vec![None], depth: vec![0] };
        for &ci in &chosen {
            let c = cands[ci];
            let parent = match c.parent {
                None => 0,
                // A child never outscores its parent, so a kept child's
                // parent is kept too; a tie that breaks this is refused.
                Some(p) if slot[p] != usize::MAX => slot[p],
                Some(p) => return Err(EngineError::InvalidInput(format!("candidate {ci} kept without its parent {p}"))),
            };
            slot[ci] = t.tokens.len();
            t.tokens.push(c.token);
            t.depth.push(t.depth[parent] + 1);
            t.parents.push(Some(parent));
        }
        Ok(t)
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Tokens from the root's child down to node `i` (empty for the root):
    /// what decoding would have emitted after the root to reach `i`.
    pub fn path_tokens(&self, i: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.depth[i]);
        let mut n = i;
        while let Some(p) = self.parents[n] {
            out.push(self.tokens[n]);
            n = p;
        }
        out.reverse();
        out
    }

    /// Positions of the nodes when the root sits at `root_pos`.
    pub fn positions(&self, root_pos: usize) -> Vec<u32> {
        self.depth.iter().map(|&d| (root_pos + d) as u32).collect()
    }

    /// The ancestor mask for a one-pass tree forward.
    pub fn mask(&self) -> AttnMask {
        AttnMask::from_parents(&self.parents).expect("tree parents precede children")
    }

    /// Children of each node, in index order.
    pub fn children(&self) -> Vec<Vec<usize>> {
        let mut ch = vec![Vec::new(); self.len()];
        for (i, p) in self.parents.iter().enumerate() {
            if let Some(p) = p {
                ch[*p].push(i);
            }
        }
        ch
    }
}

impl DraftTree {
    /// Drops every node deeper than `max_depth` (the root has depth 0).
    /// Parents are never deeper than their children, so the rest stays a tree.
    pub fn limit_depth(&self, max_depth: usize) -> DraftTree {
        let mut slot = vec![usize::MAX; self.len()];
        let mut t = DraftTree { tokens: Vec::new(), parents: Vec::new(), depth: Vec::new() };
        for i in 0..self.len() {
            if self.depth[i] > max_depth {
                continue;
            }
            slot[i] = t.tokens.len();
            t.tokens.push(self.tokens[i]);
            t.parents.push(self.parents[i].map(|p| slot[p]));
            t.depth.push(self.depth[i]);
        }
        t
    }

    /// Keeps the nodes `allow(path, token)` admits, where `path` is the
    /// tokens from the root's child down to the node's parent; a node's
    /// subtree goes with it. Parents stay before children.
    pub fn prune(&self, allow: &mut dyn FnMut(&[u32], u32) -> bool) -> DraftTree {
        let mut slot = vec![usize::MAX; self.len()];
        let mut t = DraftTree { tokens: Vec::new(), parents: Vec::new(), depth: Vec::new() };
        for i in 0..self.len() {
            let parent = match self.parents[i] {
                None => None,
                Some(p) if slot[p] == usize::MAX => continue,
                Some(p) => {
                    if !allow(&self.path_tokens(p), self.tokens[i]) {
                        continue;
                    }
                    Some(slot[p])
                }
            };
            slot[i] = t.tokens.len();
            t.tokens.push(self.tokens[i]);
            t.parents.push(parent);
            t.depth.push(self.depth[i]);
        }
        t
    }

    /// Deepest node's depth: the most drafts one verification can accept.
    pub fn max_depth(&self) -> usize {
        self.depth.iter().copied().max().unwrap_or(0)
    }

    /// Builds a tree from parent links, checking that parents precede children.
    pub fn from_parents(tokens: Vec<u32>, parents: Vec<Option<usize>>) -> Result<DraftTree> {
        if tokens.is_empty() || tokens.len() != parents.len() || parents[0].is_some() {
            return Err(EngineError::InvalidInput("a draft tree needs a root (node 0, no parent) and one parent per node".into()));
        }
        let mut depth = vec![0usize; tokens.len()];
        for i in 1..tokens.len() {
            match parents[i] {
                Some(p) if p < i => depth[i] = depth[p] + 1,
                other => return Err(EngineError::InvalidInput(format!("tree node {i} has parent {other:?}, which does not precede it"))),
            }
        }
        Ok(DraftTree { tokens, parents, depth })
    }
}

impl DraftTree {
    /// Checks the invariants verification relies on; a tree that arrives
    /// from another process is checked before it is used.
    pub fn validate(&self) -> Result<()> {
        let n = self.tokens.len();
        if n == 0 || self.parents.len() != n || self.depth.len() != n || self.parents[0].is_some() || self.depth[0] != 0 {
            return Err(EngineError::InvalidInput(format!(
                "malformed draft tree: {} tokens, {} parents, {} depths; node 0 must be the root",
                n,
                self.parents.len(),
                self.depth.len()
            )));
        }
        for i in 1..n {
            match self.parents[i] {
                Some(p) if p < i && self.depth[i] == self.depth[p] + 1 => {}
                other => {
                    return Err(EngineError::InvalidInput(format!(
                        "malformed draft tree: node {i} has parent {other:?} and depth {}",
                        self.depth[i]
                    )))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_drops_refused_nodes_with_their_subtrees() {
        // 0 ─┬─ 1 ── 3
        //    └─ 2 ─┬─ 4
        //          └─ 5
        let t = DraftTree::from_parents(vec![0, 1, 2, 3, 4, 5], vec![None, Some(0), Some(0), Some(1), Some(2), Some(2)]).unwrap();
        let mut asked = Vec::new();
        let p = t.prune(&mut |path, tok| {
            asked.push((path.to_vec(), tok));
            tok != 1 && tok != 5
        });
        assert_eq!((p.tokens.clone(), p.parents.clone(), p.depth.clone()), (vec![0, 2, 4], vec![None, Some(0), Some(1)], vec![0, 1, 2]));
        p.validate().unwrap();
        // 3 is never asked about (its parent is gone); 4 is asked with its path.
        assert!(!asked.iter().any(|(_, t)| *t == 3) && asked.contains(&(vec![2], 4)), "{asked:?}");
    }
}
