//! Greedy tree verification: walk from the root, at each node follow the
//! child whose token equals the target's argmax there, and stop at the first
//! node with no such child. The target's argmax at that last node is the
//! bonus token. The output equals what plain greedy decoding would produce.

use super::tree::DraftTree;
use crate::sampling::Sampler;

/// The outcome of verifying one tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Tree nodes on the accepted path, root first.
    pub path: Vec<usize>,
    /// New tokens: accepted draft tokens, then the bonus token.
    pub tokens: Vec<u32>,
}

impl Accepted {
    /// Draft tokens the target agreed with (the bonus excluded).
    pub fn num_correct_drafts(&self) -> usize {
        self.path.len() - 1
    }
}

/// `target_argmax[i]` is the target's greedy next token after node `i`.
pub fn greedy_verify(tree: &DraftTree, target_argmax: &[u32]) -> Accepted {
    assert_eq!(target_argmax.len(), tree.len(), "one argmax per tree node");
    greedy_verify_lazy(tree, &mut |i| target_argmax[i])
}

/// Greedy verification asking `argmax(i)` only for nodes on the walked
/// path, so the target's lm_head runs on those rows alone.
pub fn greedy_verify_lazy(tree: &DraftTree, argmax: &mut dyn FnMut(usize) -> u32) -> Accepted {
    let children = tree.children();
    let mut node = 0;
    let mut path = vec![0];
    let mut tokens = Vec::new();
    loop {
        let want = argmax(node);
        tokens.push(want);
        match children[node].iter().find(|&&c| tree.tokens[c] == want) {
            Some(&c) => {
                path.push(c);
                node = c;
            }
            None => return Accepted { path, tokens },
        }
    }
}

/// Target-only tree rejection sampling (SGLang's
/// `tree_speculative_sampling_target_only` with both thresholds at 1.0).
///
/// At each node, one uniform coin `u` is drawn. The node's children are
/// tried in order, accumulating the target probability `q` of their tokens;
/// the first child at which the running sum exceeds `u` is accepted and the
/// walk moves to it. If none is, the emitted token is drawn from `q` with the
/// children's tokens removed. Together these emit exactly a draw from `q`:
/// a child token with probability `q(c)`, any other token with
/// `(1 - Σ q(children)) · q(y) / (1 - Σ q(children)) = q(y)`. So the output
/// distribution is the target's, whatever the drafter proposed.
///
/// `probs(i)` returns the target distribution after node `i`; it is called
/// only for nodes on the walked path.
pub fn sample_verify(tree: &DraftTree, probs: &mut dyn FnMut(usize) -> Vec<f32>, sampler: &mut Sampler) -> Accepted {
    let children = tree.children();
    let mut node = 0;
    let mut path = vec![0];
    let mut tokens = Vec::new();
    loop {
        let mut q = probs(node);
        let u = sampler.uniform();
        let mut acc = 0.0f32;
        let mut tried: Vec<u32> = Vec::new();
        let mut next = None;
        for &c in &children[node] {
            let tok = tree.tokens[c];
            // A repeated sibling token must not add its mass twice.
            if tried.contains(&tok) {
                continue;
            }
            tried.push(tok);
            acc += q[tok as usize];
            if u < acc {
                next = Some(c);
                break;
            }
        }
        if let Some(c) = next {
            tokens.push(tree.tokens[c]);
            path.push(c);
            node = c;
            continue;
        }
        let last_positive = tried.iter().rev().copied().find(|&t| q[t as usize] > 0.0);
        for &t in &tried {
            q[t as usize] = 0.0;
        }
        if !q.iter().any(|&p| p > 0.0) {
            if let Some(t) = last_positive {
                // All of q's mass sat on the children and rounding left u
                // above the sum (a ~1e-7 event): take the last child with mass.
                let c = children[node].iter().copied().find(|&c| tree.tokens[c] == t).expect("tried tokens are children");
                tokens.push(t);
                path.push(c);
                node = c;
                continue;
            }
        }
        let tok = sampler.draw(&q);
        tokens.push(tok);
        return Accepted { path, tokens };
    }
}
