//! EAGLE-2 dynamic draft trees, shared by every model-based drafter.
//!
//! Strategy (SGLang's `--speculative-num-steps S`, `--speculative-eagle-topk
//! K`, `--speculative-num-draft-tokens N`):
//! 1. The root's draft distribution (from the catch-up forward) gives K
//!    children; each scores its draft probability.
//! 2. For S-1 more steps, the K current leaves run through the draft in one
//!    forward. Each gets K children scored by parent score × draft
//!    probability; all K² join the candidate pool, and the best K become the
//!    next leaves.
//! 3. The best N-1 candidates, ordered parents first, form the tree under
//!    the root ([`DraftTree::select`]).
//!
//! With a minimum draft score `m` (`--speculative-min-draft-score`, default
//! 0, which is SGLang's behaviour), candidates whose path probability is
//! below `m` are neither expanded nor verified, so a round where the drafter
//! is unsure verifies fewer nodes (the root alone, at worst) and runs fewer
//! draft steps. A node's path probability estimates its chance of being
//! accepted, and a verified row costs a fraction of a decode step, so rows
//! the drafter gives little chance cost more than they return. Path scores
//! never grow from parent to child, so the kept set stays a tree.
//!
//! Draft-KV rows written during the search see the committed prefix, their
//! own ancestors and themselves, and are dropped afterwards.

use crate::error::Result;
use aerie_engine::spec::{Candidate, DraftTree, Features, TreeSpec};

/// The best `k` entries of a probability row as `(index, prob)`, highest
/// first, ties to the lower index.
pub fn top_k(probs: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &p) in probs.iter().enumerate() {
        if best.len() == k && p <= best[k - 1].1 {
            continue;
        }
        let at = best.iter().position(|&(_, q)| p > q).unwrap_or(best.len());
        best.insert(at, (i as u32, p));
        best.truncate(k);
    }
    best
}

/// A draft network's output for a batch of rows.
#[derive(Debug, Clone, Default)]
pub struct DraftOut {
    /// Per row: the best `topk` next tokens (target ids) with draft
    /// probabilities.
    pub topk: Vec<Vec<(u32, f32)>>,
    /// Per row: the state a child of this row carries into the next step
    /// (EAGLE: the draft hidden state; empty for plain language models).
    pub states: Features,
}

/// Rows for one draft forward during tree search.
pub struct StepRows<'a> {
    pub tokens: &'a [u32],
    /// Parent states, one row per token (may be empty-width).
    pub states: &'a Features,
    pub positions: &'a [u32],
    /// Draft-KV rows (absolute, beyond the committed prefix) each row may
    /// see besides the prefix and itself: its ancestors.
    pub ancestors: &'a [Vec<usize>],
}

/// What tree search needs from a drafter.
pub trait DraftNet {
    /// Runs uncommitted tree rows, appending them to the draft KV.
    fn step(&mut self, rows: &StepRows, topk: usize) -> Result<DraftOut>;
    /// Draft-KV length.
    fn kv_len(&self) -> usize;
    /// Drops draft-KV rows from `len` on.
    fn truncate_kv(&mut self, len: usize);
}

/// Candidates a drafter lists per row, so that under an output constraint
/// `k` admissible ones are usually among them.
pub fn listed(k: usize) -> usize {
    (4 * k).max(16)
}

/// Admits a candidate `token` after `path` (the tokens from the root's
/// child to its parent): the request's output constraint.
pub type Allow<'a> = &'a mut dyn FnMut(&[u32], u32) -> bool;

/// Tokens from the root's child down to candidate `i`.
fn path_of(cands: &[Candidate], i: usize) -> Vec<u32> {
    let mut out = Vec::new();
    let mut n = Some(i);
    while let Some(c) = n {
        out.push(cands[c].token);
        n = cands[c].parent;
    }
    out.reverse();
    out
}

/// Grows an EAGLE-2 tree. `root_topk`/`root_state` come from the root's own
/// draft row; a node at depth `d` sits at draft position `root_pos + d`.
/// With `allow`, only candidates it admits grow the tree: each row's best
/// `topk` among the [`listed`] ones that the constraint allows.
#[allow(clippy::too_many_arguments)]
pub fn grow_tree(
    net: &mut dyn DraftNet,
    root: u32,
    root_topk: &[(u32, f32)],
    root_state: &[f32],
    root_pos: u32,
    spec: &TreeSpec,
    max_depth: usize,
    min_score: f32,
    mut allow: Option<Allow>,
) -> Result<DraftTree> {
    if max_depth == 0 || root_topk.first().is_none_or(|&(_, p)| p < min_score) {
        return Ok(DraftTree::chain(root, &[]));
    }
    let committed = net.kv_len();
    let k = spec.topk;
    let mut cands: Vec<Candidate> = Vec::new();
    let mut depth: Vec<usize> = Vec::new();
    // Draft-KV row of each candidate that has been run (every leaf).
    let mut kv_row: Vec<Option<usize>> = Vec::new();
    // State each candidate carries from its parent.
    let width = root_state.len();
    let mut parent_state: Vec<Vec<f32>> = Vec::new();
    let net_k = if allow.is_some() { listed(k) } else { k };
    let mut admits = |path: &[u32], tok: u32| allow.as_mut().is_none_or(|a| a(path, tok));
    let root_list: Vec<(u32, f32)> = root_topk.iter().copied().filter(|&(t, _)| admits(&[], t)).take(k).collect();
    for &(tok, p) in root_list.iter().filter(|&&(_, p)| p >= min_score) {
        cands.push(Candidate { token: tok, parent: None, score: p.min(1.0) });
        depth.push(1);
        kv_row.push(None);
        parent_state.push(root_state.to_vec());
    }
    let mut leaves: Vec<usize> = (0..cands.len()).collect();
    let steps = spec.num_steps.min(max_depth);
    let result = (|| -> Result<()> {
        for _ in 1..steps {
            let tokens: Vec<u32> = leaves.iter().map(|&l| cands[l].token).collect();
            let states = Features { width, data: leaves.iter().flat_map(|&l| parent_state[l].iter().copied()).collect() };
            let positions: Vec<u32> = leaves.iter().map(|&l| root_pos + depth[l] as u32).collect();
            let ancestors: Vec<Vec<usize>> = leaves
                .iter()
                .map(|&l| {
                    let mut a = Vec::new();
                    let mut p = cands[l].parent;
                    while let Some(pi) = p {
                        a.push(kv_row[pi].expect("ancestors of a leaf have run"));
                        p = cands[pi].parent;
                    }
                    a
                })
                .collect();
            let first_row = net.kv_len();
            let out = net.step(&StepRows { tokens: &tokens, states: &states, positions: &positions, ancestors: &ancestors }, net_k)?;
            let mut fresh = Vec::new();
            for (i, &l) in leaves.iter().enumerate() {
                kv_row[l] = Some(first_row + i);
                let st = if out.states.width > 0 { out.states.row(i).to_vec() } else { Vec::new() };
                let path = path_of(&cands, l);
                let kids: Vec<(u32, f32)> = out.topk[i].iter().copied().filter(|&(t, _)| admits(&path, t)).take(k).collect();
                for (tok, p) in kids {
                    // Clamped so that a child never outscores its parent.
                    let score = cands[l].score * p.min(1.0);
                    if score < min_score {
                        continue;
                    }
                    fresh.push(cands.len());
                    cands.push(Candidate { token: tok, parent: Some(l), score });
                    depth.push(depth[l] + 1);
                    kv_row.push(None);
                    parent_state.push(st.clone());
                }
            }
            fresh.sort_by(|&a, &b| cands[b].score.total_cmp(&cands[a].score).then(a.cmp(&b)));
            fresh.truncate(k);
            fresh.sort_unstable();
            leaves = fresh;
            if leaves.is_empty() {
                break;
            }
        }
        Ok(())
    })();
    net.truncate_kv(committed);
    result?;
    Ok(DraftTree::select(root, &cands, spec)?.limit_depth(max_depth))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted stand-in for a draft network (a fake, for the search
    /// logic alone): every row's children are `token*10 + 1` with
    /// probability 0.9 and `token*10 + 2` with 0.1. It counts its forwards.
    struct ScriptedNet {
        kv: usize,
        steps: usize,
    }

    impl DraftNet for ScriptedNet {
        fn step(&mut self, rows: &StepRows, topk: usize) -> Result<DraftOut> {
            self.steps += 1;
            self.kv += rows.tokens.len();
            let topk = rows.tokens.iter().map(|&t| [(t * 10 + 1, 0.9), (t * 10 + 2, 0.1)].into_iter().take(topk).collect()).collect();
            Ok(DraftOut { topk, states: Features::empty() })
        }
        fn kv_len(&self) -> usize {
            self.kv
        }
        fn truncate_kv(&mut self, len: usize) {
            self.kv = len;
        }
    }

    #[test]
    fn min_score_stops_expanding_and_verifying_unlikely_nodes() {
        let spec = TreeSpec { num_steps: 5, topk: 2, num_draft_tokens: 12 };
        let root_topk = [(1, 0.9), (2, 0.1)];
        // Without a minimum: all five steps run and the tree is full.
        let mut net = ScriptedNet { kv: 7, steps: 0 };
        let full = grow_tree(&mut net, 0, &root_topk, &[], 10, &spec, 8, 0.0, None).unwrap();
        assert_eq!((full.len(), net.steps, net.kv), (12, 4, 7));
        // At 0.7: the chain 1 → 11 → 111 (0.9, 0.81, 0.729) passes, the next
        // node (0.656) does not, so the search stops after two forwards.
        let mut net = ScriptedNet { kv: 7, steps: 0 };
        let t = grow_tree(&mut net, 0, &root_topk, &[], 10, &spec, 8, 0.7, None).unwrap();
        assert_eq!(t.tokens, vec![0, 1, 11, 111]);
        assert_eq!(t.parents, vec![None, Some(0), Some(1), Some(2)]);
        assert_eq!((net.steps, net.kv), (3, 7), "the leaf 111 still runs once to score its children; KV is rolled back");
        // An unsure root verifies alone, with no draft forward at all.
        let mut net = ScriptedNet { kv: 7, steps: 0 };
        let t = grow_tree(&mut net, 0, &[(1, 0.3), (2, 0.2)], &[], 10, &spec, 8, 0.5, None).unwrap();
        assert_eq!((t.tokens.clone(), net.steps), (vec![0], 0));
    }

    #[test]
    fn a_constraint_prunes_the_tree_as_it_grows() {
        let spec = TreeSpec { num_steps: 3, topk: 2, num_draft_tokens: 8 };
        let root_topk = [(1, 0.9), (2, 0.1)];
        // Forbids every token ending in 1 (the likelier child of each row),
        // and records what it was asked.
        let mut asked: Vec<(Vec<u32>, u32)> = Vec::new();
        let mut allow = |path: &[u32], t: u32| {
            asked.push((path.to_vec(), t));
            t % 10 != 1
        };
        let mut net = ScriptedNet { kv: 0, steps: 0 };
        let t = grow_tree(&mut net, 0, &root_topk, &[], 10, &spec, 8, 0.0, Some(&mut allow)).unwrap();
        // Only the admissible chain 2 → 22 → 222 is left, at full depth:
        // the budget went to tokens the constraint allows.
        assert_eq!(t.tokens, vec![0, 2, 22, 222]);
        assert!(asked.contains(&(vec![2, 22], 221)) && asked.contains(&(vec![], 1)), "{asked:?}");
        // The same tree pruned after the fact would have kept nothing deep:
        // the unconstrained search spends its budget under the banned 1.
        let mut net = ScriptedNet { kv: 0, steps: 0 };
        let free = grow_tree(&mut net, 0, &root_topk, &[], 10, &spec, 8, 0.0, None).unwrap();
        let pruned = free.prune(&mut |_, t| t % 10 != 1);
        assert!(pruned.len() < t.len(), "{:?} vs {:?}", pruned.tokens, t.tokens);
    }
}
