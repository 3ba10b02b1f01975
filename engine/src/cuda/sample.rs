//! Sampled verification on the device: the lm_head of every tree node, the
//! sampling distribution of each row (`sample_dist.cu`: temperature, top-k,
//! top-p, min-p) and the rejection-sampling walk of each tree
//! (`tree_sample.cu`) run where the hidden states are, and only the accepted
//! path and tokens come back. The logits never leave the device.
//!
//! It is the CPU path's `sample_verify` (`spec::verify`), over the device's
//! own logits, with the request's random source drawn ahead: one coin per
//! tree level and one for the final draw, taken from the request's seeded
//! [`crate::sampling::Sampler`], so a seed gives the same tokens run after
//! run. A walk uses its coins in the order the CPU walk draws them, so one
//! step's result equals the CPU's for the same coins; but every step takes
//! depth + 2 coins where the CPU takes as many as its walk uses, so over
//! several steps a seed's stream (not its distribution) differs from the
//! CPU path's, as the logits themselves do. A plain sampled decode step,
//! and the first token after a prefill, is the same call on a tree of one
//! node.
//!
//! Penalties, logit bias, grammars and logprobs need each node's logits on
//! the host; requests with any of them stay on the host path
//! ([`samples_on_device`]).

use super::CudaModel;
use crate::error::{EngineError, Result};
use crate::sampling::{Sampler, SamplingParams};
use crate::spec::{Accepted, DraftTree};
use aerie_kernels::cuda::device::{DeviceError, DeviceExt};
use aerie_kernels::cuda::interp::{KernelArg as A, LaunchConfig};
use std::sync::atomic::Ordering;

/// One tree to verify by rejection sampling on the device.
pub struct TreeToSample<'a> {
    /// The normed final hidden state of each node, `nodes × hidden`.
    pub hidden: &'a [f32],
    pub tree: &'a DraftTree,
    pub params: &'a SamplingParams,
    /// Uniform coins in [0, 1), at least [`coins_needed`] of them.
    pub coins: &'a [f32],
}

/// Coins a tree's walk may take: one per level, and one for the final draw.
pub fn coins_needed(tree: &DraftTree) -> usize {
    tree.max_depth() + 2
}

/// Whether a request's tokens can be chosen on the device: a sampled (not
/// greedy) request with no penalty, bias, grammar or logprobs.
pub fn samples_on_device(p: &SamplingParams) -> bool {
    !p.is_greedy() && p.processors.is_noop() && p.grammar.is_none() && p.logprobs.is_none()
}

/// Threads per block of both kernels: 256, or one thread per token up to
/// a whole number of warps for a small vocabulary (the passes over a row
/// then cost no idle threads, which the interpreter pays for too).
fn threads_for(vocab: usize) -> u32 {
    (vocab.div_ceil(32) * 32).clamp(32, 256) as u32
}

impl CudaModel {
    /// Verifies each tree by rejection sampling against the target's
    /// sampling distribution, on the device. One lm_head over all trees'
    /// nodes, one launch of each kernel; returns one [`Accepted`] per tree.
    pub fn sample_trees(&self, jobs: &[TreeToSample]) -> Result<Vec<Accepted>> {
        let (h, vocab) = (self.config.hidden_size, self.config.vocab_size);
        let mut normed = Vec::new();
        let (mut temperature, mut top_k, mut top_p, mut min_p) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut tokens, mut parents, mut tree_start) = (Vec::new(), Vec::new(), vec![0i32]);
        let (mut coins, mut coin_start) = (Vec::new(), vec![0i32]);
        for (k, j) in jobs.iter().enumerate() {
            let n = j.tree.len();
            let bad = |m: String| Err(EngineError::InvalidInput(format!("device sampling, tree {k}: {m}")));
            if n == 0 || j.hidden.len() != n * h {
                return bad(format!("{} hidden values for {n} nodes of width {h}", j.hidden.len()));
            }
            if j.coins.len() < coins_needed(j.tree) {
                return bad(format!("{} coins for a tree of depth {}", j.coins.len(), j.tree.max_depth()));
            }
            if let Some(t) = j.tree.tokens.iter().find(|&&t| t as usize >= vocab) {
                return bad(format!("token {t} is outside the vocabulary of {vocab}"));
            }
            if n > super::MAX_TREE_NODES {
                return bad(format!("{n} nodes; at most {}", super::MAX_TREE_NODES));
            }
            j.params.validate().map_err(EngineError::InvalidInput)?;
            normed.extend_from_slice(j.hidden);
            temperature.extend(std::iter::repeat(j.params.temperature).take(n));
            top_k.extend(std::iter::repeat(j.params.top_k.min(i32::MAX as usize) as i32).take(n));
            top_p.extend(std::iter::repeat(j.params.top_p).take(n));
            min_p.extend(std::iter::repeat(j.params.min_p).take(n));
            tokens.extend(j.tree.tokens.iter().map(|&t| t as i32));
            parents.extend(j.tree.parents.iter().map(|p| p.map_or(-1, |p| p as i32)));
            tree_start.push(tokens.len() as i32);
            coins.extend_from_slice(&j.coins[..coins_needed(j.tree)]);
            coin_start.push(coins.len() as i32);
        }
        let Some((logits, rows)) = self.logits_on_device(&normed)? else { return Ok(Vec::new()) };
        let dev = &self.dev;
        let f32s = |n: usize| dev.alloc(n * 4);
        let (cut_key, cut_id, row_max, inv_temp, mass) = (f32s(rows)?, f32s(rows)?, f32s(rows)?, f32s(rows)?, f32s(rows)?);
        let (temperature, top_k, top_p, min_p) =
            (dev.upload_slice(&temperature)?, dev.upload_slice(&top_k)?, dev.upload_slice(&top_p)?, dev.upload_slice(&min_p)?);
        // SAFETY: logits hold rows × vocab f32; every per-row buffer holds
        // `rows` 4-byte values.
        unsafe {
            dev.launch(
                "sample_dist_rows",
                LaunchConfig::linear(rows as u32, threads_for(vocab)),
                &[
                    logits.arg(),
                    temperature.arg(),
                    top_k.arg(),
                    top_p.arg(),
                    min_p.arg(),
                    cut_key.arg(),
                    cut_id.arg(),
                    row_max.arg(),
                    inv_temp.arg(),
                    mass.arg(),
                    A::I32(rows as i32),
                    A::I32(vocab as i32),
                ],
            )?
        };
        let trees = jobs.len();
        let (tokens_d, parents_d, start_d) = (dev.upload_slice(&tokens)?, dev.upload_slice(&parents)?, dev.upload_slice(&tree_start)?);
        let (coins_d, coin_start_d) = (dev.upload_slice(&coins)?, dev.upload_slice(&coin_start)?);
        let (path, out, len) = (f32s(rows)?, f32s(rows)?, f32s(trees)?);
        // SAFETY: node arrays hold `rows` entries and the offsets trees + 1,
        // checked above against the tokens, the vocabulary and the coins;
        // parents come from a DraftTree (each precedes its child).
        unsafe {
            dev.launch(
                "tree_sample_verify",
                LaunchConfig::linear(trees as u32, threads_for(vocab)),
                &[
                    logits.arg(),
                    cut_key.arg(),
                    cut_id.arg(),
                    row_max.arg(),
                    inv_temp.arg(),
                    mass.arg(),
                    tokens_d.arg(),
                    parents_d.arg(),
                    start_d.arg(),
                    coins_d.arg(),
                    coin_start_d.arg(),
                    path.arg(),
                    out.arg(),
                    len.arg(),
                    A::I32(trees as i32),
                    A::I32(vocab as i32),
                ],
            )?
        };
        let len: Vec<i32> = dev.download_vec(&len, 0, trees)?;
        let path: Vec<i32> = dev.download_vec(&path, 0, rows)?;
        let out: Vec<i32> = dev.download_vec(&out, 0, rows)?;
        let mut results = Vec::with_capacity(trees);
        for (k, &l) in len.iter().enumerate() {
            let at = tree_start[k] as usize;
            let n = tree_start[k + 1] as usize - at;
            let l = l as usize;
            let (p, t) = (&path[at..at + l.min(n)], &out[at..at + l.min(n)]);
            if l == 0 || l > n || p.iter().any(|&i| i < 0 || i as usize >= n) || t.iter().any(|&x| x < 0 || x as usize >= vocab) {
                return Err(EngineError::Device(DeviceError::Driver(format!("tree_sample_verify returned a path of {l} for a tree of {n} nodes"))));
            }
            results.push(Accepted { path: p.iter().map(|&i| i as usize).collect(), tokens: t.iter().map(|&x| x as u32).collect() });
        }
        self.trees_sampled.fetch_add(trees as u64, Ordering::Relaxed);
        Ok(results)
    }

    /// The next token after a sequence whose last normed hidden state is
    /// `hidden` and last token `last`: a tree of one node, with coins from
    /// the request's `sampler` (a plain sampled decode step, or the first
    /// token after a prefill).
    pub fn sample_next(&self, hidden: &[f32], last: u32, params: &SamplingParams, sampler: &mut Sampler) -> Result<u32> {
        let tree = DraftTree::chain(last, &[]);
        let coins: Vec<f32> = (0..coins_needed(&tree)).map(|_| sampler.uniform()).collect();
        Ok(self.sample_trees(&[TreeToSample { hidden, tree: &tree, params, coins: &coins }])?[0].tokens[0])
    }

    /// Trees, and plain sampled decode steps, verified on the device so far.
    pub fn trees_sampled(&self) -> u64 {
        self.trees_sampled.load(Ordering::Relaxed)
    }
}
