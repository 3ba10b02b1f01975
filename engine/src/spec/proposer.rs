//! The drafter side of speculation as one small trait.
//!
//! A proposer sees the committed token stream `x_0 … x_{n-1}` and the
//! target's features `f_0 … f_{n-2}` (one per token the target has
//! processed; the last committed token, the *root*, is not processed yet).
//! Each round it proposes a tree rooted at `x_{n-1}`; after verification the
//! decoder commits the accepted drafts plus the bonus token, with the
//! features of the root and the accepted drafts, which keeps
//! `features = tokens - 1`.
//!
//! `commit` only records; `catch_up` runs the draft over what was recorded
//! (EAGLE's "draft extend"), so a remote drafter can overlap it with other
//! work. `propose` calls `catch_up` first when something is pending.

use super::tree::DraftTree;
use crate::error::Result;

/// Which target features a proposer consumes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FeatureKind {
    /// None (n-gram, standalone drafters).
    #[default]
    None,
    /// The final normed hidden state (EAGLE-1/2).
    Hidden,
    /// The residual stream after these target layers, concatenated in
    /// ascending layer order (EAGLE-3).
    Aux(Vec<usize>),
}

/// Target features for consecutive tokens: `rows × width` floats.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Features {
    pub width: usize,
    pub data: Vec<f32>,
}

impl Features {
    pub fn empty() -> Self {
        Features::default()
    }

    pub fn rows(&self) -> usize {
        if self.width == 0 {
            0
        } else {
            self.data.len() / self.width
        }
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.width..(i + 1) * self.width]
    }

    /// The rows at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Features {
        let mut data = Vec::with_capacity(idx.len() * self.width);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        Features { width: self.width, data }
    }
}

/// Proposes draft trees; see the module comment for the protocol.
pub trait Proposer: Send {
    /// Short name for logs and stats (`eagle`, `eagle3`, `ngram`, `standalone`).
    fn name(&self) -> &'static str;

    /// The target features this proposer needs.
    fn features(&self) -> FeatureKind {
        FeatureKind::None
    }

    /// Forgets the previous request.
    fn reset(&mut self);

    /// Appends committed tokens and the features of newly processed ones.
    fn commit(&mut self, tokens: &[u32], feats: &Features) -> Result<()>;

    /// Runs the draft over committed tokens it has not seen yet.
    fn catch_up(&mut self) -> Result<()> {
        Ok(())
    }

    /// A tree rooted at the last committed token, no deeper than `max_depth`.
    fn propose(&mut self, max_depth: usize) -> Result<DraftTree>;

    /// Starts a request: the prompt plus the first generated token, and the
    /// features of every prompt token.
    fn begin(&mut self, tokens: &[u32], feats: &Features) -> Result<()> {
        self.reset();
        self.commit(tokens, feats)
    }
}
