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

/// The wire spelling used between workers: `none`, `hidden`, `aux:1,2,3`.
impl std::fmt::Display for FeatureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeatureKind::None => f.write_str("none"),
            FeatureKind::Hidden => f.write_str("hidden"),
            FeatureKind::Aux(l) => write!(f, "aux:{}", l.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")),
        }
    }
}

impl std::str::FromStr for FeatureKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(FeatureKind::None),
            "hidden" => Ok(FeatureKind::Hidden),
            _ => {
                let layers = s.strip_prefix("aux:").ok_or_else(|| format!("unknown feature kind `{s}` (none, hidden, aux:L1,L2,…)"))?;
                let l: std::result::Result<Vec<usize>, _> = layers.split(',').map(|x| x.trim().parse::<usize>()).collect();
                Ok(FeatureKind::Aux(l.map_err(|e| format!("bad aux layer list `{layers}`: {e}"))?))
            }
        }
    }
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

    /// Announces that [`propose`](Self::propose) follows. A remote proposer
    /// sends its request here, so a batch's drafters all work before the
    /// first answer is awaited; local ones need nothing.
    fn request_proposal(&mut self, _max_depth: usize) -> Result<()> {
        Ok(())
    }

    /// Withdraws a [`request_proposal`](Self::request_proposal) whose tree
    /// will not be collected (the step verifies the root alone after all):
    /// the next [`propose`](Self::propose) must not take that tree, which is
    /// rooted at a token the commit in between replaces.
    fn cancel_request(&mut self) {}

    /// A tree rooted at the last committed token, no deeper than `max_depth`.
    fn propose(&mut self, max_depth: usize) -> Result<DraftTree>;

    /// As [`propose`](Self::propose), for a request whose output is
    /// constrained: every node must satisfy `allow(path, token)`, `path`
    /// being the tokens from the root's child to the node's parent. The
    /// default prunes the finished tree; drafters that search override it
    /// to prune as the tree grows, so the budget goes to admissible tokens.
    fn propose_within(&mut self, max_depth: usize, allow: &mut dyn FnMut(&[u32], u32) -> bool) -> Result<DraftTree> {
        Ok(self.propose(max_depth)?.prune(allow))
    }

    /// Starts a request: the prompt plus the first generated token, and the
    /// features of every prompt token.
    fn begin(&mut self, tokens: &[u32], feats: &Features) -> Result<()> {
        self.reset();
        self.commit(tokens, feats)
    }

    /// The proposer as `Any`, for a drafter whose host batches work across
    /// sequences (the draft worker runs its EAGLE heads' catch-ups for many
    /// sequences in one pass); `None`, the default, for the rest.
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }
}

/// A borrowed proposer is a proposer, so a session can use one it does not own.
impl<P: Proposer + ?Sized> Proposer for &mut P {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn features(&self) -> FeatureKind {
        (**self).features()
    }
    fn reset(&mut self) {
        (**self).reset()
    }
    fn commit(&mut self, tokens: &[u32], feats: &Features) -> Result<()> {
        (**self).commit(tokens, feats)
    }
    fn catch_up(&mut self) -> Result<()> {
        (**self).catch_up()
    }
    fn request_proposal(&mut self, max_depth: usize) -> Result<()> {
        (**self).request_proposal(max_depth)
    }
    fn cancel_request(&mut self) {
        (**self).cancel_request()
    }
    fn propose(&mut self, max_depth: usize) -> Result<DraftTree> {
        (**self).propose(max_depth)
    }
    fn propose_within(&mut self, max_depth: usize, allow: &mut dyn FnMut(&[u32], u32) -> bool) -> Result<DraftTree> {
        (**self).propose_within(max_depth, allow)
    }
    fn begin(&mut self, tokens: &[u32], feats: &Features) -> Result<()> {
        (**self).begin(tokens, feats)
    }
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        (**self).as_any_mut()
    }
}

/// Drafts nothing: every round verifies the root alone, which is plain
/// decoding. Requests without speculation, and requests whose draft worker
/// failed, run with it.
#[derive(Debug, Default)]
pub struct NoProposer {
    root: Option<u32>,
}

impl Proposer for NoProposer {
    fn name(&self) -> &'static str {
        "none"
    }
    fn reset(&mut self) {
        self.root = None;
    }
    fn commit(&mut self, tokens: &[u32], _feats: &Features) -> Result<()> {
        if let Some(&t) = tokens.last() {
            self.root = Some(t);
        }
        Ok(())
    }
    fn propose(&mut self, _max_depth: usize) -> Result<DraftTree> {
        let root = self.root.ok_or_else(|| crate::error::EngineError::InvalidInput("propose before any token was committed".into()))?;
        Ok(DraftTree::chain(root, &[]))
    }
}
