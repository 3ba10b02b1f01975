//! Greedy tree verification: walk from the root, at each node follow the
//! child whose token equals the target's argmax there, and stop at the first
//! node with no such child. The target's argmax at that last node is the
//! bonus token. The output equals what plain greedy decoding would produce.

use super::tree::DraftTree;

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
    let children = tree.children();
    let mut node = 0;
    let mut path = vec![0];
    let mut tokens = Vec::new();
    loop {
        let want = target_argmax[node];
        match children[node].iter().find(|&&c| tree.tokens[c] == want) {
            Some(&c) => {
                tokens.push(want);
                path.push(c);
                node = c;
            }
            None => {
                tokens.push(want);
                return Accepted { path, tokens };
            }
        }
    }
}
