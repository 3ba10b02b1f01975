//! Held-out accuracy of a head in training: how often its drafts would
//! match the target on conversations it never trains on.
//!
//! Strategy: a second feature cache, built from ShareGPT conversations
//! after the training slice (`aerie train-eagle --skip-conversations`), is
//! run through the head with no input noise and [`VAL_STEPS`] unrolled draft
//! steps. For every trained (assistant) row it records whether the head's
//! top-1 over the hot vocabulary equals the target's, at each unrolled step,
//! and whether the target's token is among the head's top [`VAL_TOPK`] at
//! the first step. Step `s`'s accuracy estimates the chance that a chain's
//! draft at depth `s + 1` is accepted once the drafts before it were, and
//! the top-k hit rate estimates what a tree's first level holds. These are
//! teacher-forced figures: cheap enough to log during training, where
//! `aerie eval-draft` takes minutes per setting.

use super::features::FeatureCache;
use super::head_model::{cerr, TrainHead};
use super::trainer::pairs;
use crate::error::Result;
use aerie_engine::Model;
use candle_core::{Tensor, D};

/// Unrolled draft steps scored (depths 1, 2, 3 of a chain).
pub const VAL_STEPS: usize = 3;
/// First-level candidates scored for the top-k hit rate.
pub const VAL_TOPK: usize = 8;

/// Held-out accuracy of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValStats {
    /// Top-1 agreement with the target at each unrolled step.
    pub acc: [f32; VAL_STEPS],
    /// The target's top-1 among the head's top [`VAL_TOPK`], first step.
    pub topk: f32,
    /// Rows scored at the first step.
    pub rows: usize,
}

impl ValStats {
    /// A chain's expected tokens per verify if each step's acceptance
    /// were its teacher-forced accuracy: 1 + a0 + a0·a1 + a0·a1·a2.
    pub fn chain_tau(&self) -> f32 {
        let mut p = 1.0;
        let mut tau = 1.0;
        for a in self.acc {
            p *= a;
            tau += p;
        }
        tau
    }
}

/// Scores `head` on every sequence of `val` (`lm_hot`: the hot rows of the
/// target's lm_head, as in training).
pub fn validate(target: &Model, head: &TrainHead, val: &FeatureCache, lm_hot: &Tensor) -> Result<ValStats> {
    let mut hits = [0usize; VAL_STEPS];
    let mut rows_at = [0usize; VAL_STEPS];
    let mut topk_hits = 0usize;
    // No noise is drawn (width 0), so the generator is never read for EAGLE-1/2.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    for i in 0..val.len() {
        let Some(b) = pairs(target, val, i, head.kind, 1 << 20, 0.0, &mut rng)? else { continue };
        let weights = b.weight.to_vec1::<f32>().map_err(cerr)?;
        let kept: Vec<u32> = (0..weights.len() as u32).filter(|&t| weights[t as usize] > 0.0).collect();
        let idx = Tensor::from_vec(kept.clone(), kept.len(), b.emb.device()).map_err(cerr)?;
        let want = b.next.index_select(&idx, 0).and_then(|x| x.matmul(&lm_hot.t()?)).and_then(|l| l.argmax(D::Minus1)).and_then(|a| a.to_vec1::<u32>()).map_err(cerr)?;
        let preds = head.forward_steps(&b.emb, &b.feat, VAL_STEPS).map_err(cerr)?;
        for (step, pred) in preds.iter().enumerate() {
            let logits = pred.index_select(&idx, 0).and_then(|p| head.logits(&p, lm_hot)).and_then(|l| l.to_vec2::<f32>()).map_err(cerr)?;
            for ((row, &t), &w) in logits.iter().zip(&kept).zip(&want) {
                // Rows t < step have no chain of `step` drafts before them.
                if (t as usize) < step {
                    continue;
                }
                let mine = row[w as usize];
                // Rank of the target's token: rows scoring above it (ties to the lower id, as top_k does).
                let above = row.iter().enumerate().filter(|&(j, &x)| x > mine || (x == mine && j < w as usize)).count();
                rows_at[step] += 1;
                hits[step] += (above == 0) as usize;
                if step == 0 {
                    topk_hits += (above < VAL_TOPK) as usize;
                }
            }
        }
    }
    let frac = |h: usize, n: usize| if n == 0 { 0.0 } else { h as f32 / n as f32 };
    Ok(ValStats { acc: std::array::from_fn(|s| frac(hits[s], rows_at[s])), topk: frac(topk_hits, rows_at[0]), rows: rows_at[0] })
}
