//! The target side of speculation: prefill, then rounds of
//! propose → verify (one tree forward) → commit, until a stop token,
//! `max_tokens` or the context limit.
//!
//! Greedy requests accept the longest path matching the target's argmax
//! (plus the bonus token) and so emit exactly plain greedy's tokens, because
//! the forward pass gives every row the same bits whatever the batch holds.
//! Sampled requests use target-only tree rejection sampling, which emits
//! exactly the target distribution (see [`super::verify::sample_verify`]).
//!
//! Sessions are independent; [`step_batch`] verifies several in one forward.

use super::proposer::{FeatureKind, Features, Proposer};
use super::tree::DraftTree;
use super::verify::{greedy_verify_lazy, sample_verify, Accepted};
use crate::cuda::sample;
use crate::error::{EngineError, Result};
use crate::generate::{FinishReason, GenerateRequest, GenerationStats};
use crate::kv::KvCache;
use crate::model::{AttnMask, ForwardOptions, LogitsRows, Model, SeqInput, SeqOutput};
use crate::grammar::{GrammarState, TokenMask};
use crate::processors::{self, logprob_of, History, TokenLogprob};
use crate::sampling::{target_probs, Sampler, SamplingParams};

/// Nodes per constrained tree whose grammar masks are computed during the
/// verify forward; the walk rarely goes further (it follows one path), so
/// masks for more nodes would mostly be wasted work.
const MASKS_AHEAD: usize = 8;
use aerie_kernels::cpu::ops;
use serde::Serialize;
use std::time::Instant;

/// Speculation counters, named as SGLang reports them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpecStats {
    /// Verification forwards run.
    pub spec_verify_ct: usize,
    /// Draft tokens the target accepted, summed over verifications.
    pub spec_num_correct_drafts: usize,
    /// Most draft tokens each verification could have accepted (the
    /// proposed tree's depth), summed.
    pub spec_num_proposed_drafts: usize,
    /// Draft nodes verified (each tree's size less its root), summed: the
    /// rows speculation added to the verify forwards.
    pub spec_verified_nodes: usize,
    /// Tokens emitted per verification, the bonus token included.
    pub spec_accept_length: f64,
    /// `spec_num_correct_drafts / spec_num_proposed_drafts`.
    pub spec_accept_rate: f64,
    /// Each verification's depth budget, summed: the depth the adaptive
    /// budget allowed (0 for a plain row), or without one the depth of the
    /// tree the drafter proposed.
    pub spec_budget_sum: usize,
    /// `spec_budget_sum / spec_verify_ct`.
    pub spec_mean_budget: f64,
    /// `[i]` = verifications that accepted exactly `i` drafts.
    pub spec_correct_drafts_histogram: Vec<usize>,
    /// Wall time spent proposing (draft forwards), ms.
    pub draft_ms: f64,
    /// Wall time spent in verification forwards, ms.
    pub verify_ms: f64,
    /// Draft candidates the request's output constraint refused: for a
    /// drafter that prunes as it grows (in process), candidates it never
    /// added; for a remote one, proposed nodes pruned before verification
    /// (0 when the draft worker keeps to the constraint itself).
    pub spec_refused_drafts: usize,
}

/// One request being decoded speculatively.
pub struct SpecSession<'p> {
    cache: KvCache,
    proposer: Box<dyn Proposer + 'p>,
    features: FeatureKind,
    sampling: SamplingParams,
    sampler: Sampler,
    stop_ids: Vec<u32>,
    max_tokens: usize,
    prompt_len: usize,
    /// Tokens emitted so far; the last one is the next tree's root.
    pub tokens: Vec<u32>,
    pub finish: Option<FinishReason>,
    pub stats: GenerationStats,
    pub spec: SpecStats,
    verify_emitted: usize,
    /// What the logits processors see: prompt and committed output.
    history: History,
    /// One entry per emitted token when `sampling.logprobs` asks for them.
    pub logprobs: Vec<TokenLogprob>,
    /// The output constraint's state at the committed output.
    grammar: Option<GrammarState>,
    /// The deepest tree the next rounds may verify, when a scheduler chooses
    /// budgets (`--speculative-adaptive`); `Some(0)` makes them plain decode
    /// rows. Only ever lowers the depth, so output is unchanged.
    pub depth_cap: Option<usize>,
}

/// What a forward must export for these feature kinds.
fn forward_options(kinds: &[&FeatureKind]) -> ForwardOptions {
    let mut o = ForwardOptions::default();
    for k in kinds {
        match k {
            FeatureKind::None => {}
            FeatureKind::Hidden => o.want_hidden = true,
            FeatureKind::Aux(l) => {
                for &x in l {
                    if !o.aux_layers.contains(&x) {
                        o.aux_layers.push(x);
                    }
                }
            }
        }
    }
    o
}

/// The `rows` of one forward output as proposer features.
fn features_of(out: &SeqOutput, kind: &FeatureKind, opts: &ForwardOptions, hidden: usize, rows: &[usize]) -> Features {
    match kind {
        FeatureKind::None => Features::empty(),
        FeatureKind::Hidden => Features { width: hidden, data: rows.iter().flat_map(|&r| out.hidden[r * hidden..(r + 1) * hidden].iter().copied()).collect() },
        FeatureKind::Aux(layers) => {
            // The forward returns aux outputs in ascending layer order.
            let mut sorted = opts.aux_layers.clone();
            sorted.sort_unstable();
            let mut want = layers.clone();
            want.sort_unstable();
            let idx: Vec<usize> = want.iter().map(|l| sorted.iter().position(|x| x == l).expect("requested layer")).collect();
            let mut data = Vec::with_capacity(rows.len() * hidden * idx.len());
            for &r in rows {
                for &a in &idx {
                    data.extend_from_slice(&out.aux[a][r * hidden..(r + 1) * hidden]);
                }
            }
            Features { width: hidden * idx.len(), data }
        }
    }
}

impl<'p> SpecSession<'p> {
    /// Prefills the prompt, emits the first token and starts the proposer.
    /// The session owns its proposer: pass `Box::new(&mut p)` to lend one.
    pub fn start(model: &Model, proposer: Box<dyn Proposer + 'p>, req: &GenerateRequest) -> Result<SpecSession<'p>> {
        let seed = req.sampling.seed;
        Ok(Self::start_many(model, vec![(proposer, seed)], req)?.pop().expect("one choice"))
    }

    /// Several independent choices of one request (OpenAI's `n`) from a
    /// single prefill: each gets a copy of the prompt's KV cache, its own
    /// proposer and its own seed, and samples its first token from the
    /// shared prefill logits with that seed. A choice is therefore exactly
    /// the request run alone with the choice's seed.
    pub fn start_many(model: &Model, choices: Vec<(Box<dyn Proposer + 'p>, Option<u64>)>, req: &GenerateRequest) -> Result<Vec<SpecSession<'p>>> {
        if req.prompt_ids.is_empty() {
            return Err(EngineError::InvalidInput("prompt is empty".into()));
        }
        if choices.is_empty() {
            return Err(EngineError::InvalidInput("a request needs at least one choice".into()));
        }
        let limit = model.config.max_position_embeddings;
        if req.prompt_ids.len() >= limit {
            return Err(EngineError::ContextLength { needed: req.prompt_ids.len() + 1, limit });
        }
        let kinds: Vec<FeatureKind> = choices.iter().map(|c| c.0.features()).collect();
        let mut opts = forward_options(&kinds.iter().collect::<Vec<_>>());
        // On a device, a sampled request's first token is drawn there from
        // the prompt's last hidden state (a tree of one node): the logits
        // stay on the device.
        let on_device = model.cuda().filter(|_| sample::samples_on_device(&req.sampling));
        opts.want_hidden |= on_device.is_some();
        let rows = if on_device.is_some() { LogitsRows::None } else { LogitsRows::Last };
        let mut cache = model.new_cache();
        let t0 = Instant::now();
        let out = model.forward(&mut [SeqInput { cache: &mut cache, tokens: req.prompt_ids, positions: None, mask: AttnMask::Causal, logits: rows }], &opts)?;
        let history = History::new(req.prompt_ids);
        let mut logits = out[0].logits.clone();
        if on_device.is_none() {
            processors::apply(&mut logits, &req.sampling.processors, &history.with_path(&[]), req.stop_ids);
        }
        let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
        let n = choices.len();
        let mut sessions = Vec::with_capacity(n);
        let mut cache = Some(cache);
        for (i, ((proposer, seed), features)) in choices.into_iter().zip(kinds).enumerate() {
            // The last choice takes the prefilled cache itself.
            let cache = if i + 1 == n { cache.take().expect("cache kept for the last choice") } else { cache.as_ref().expect("cache").try_clone()? };
            let mut sampler = Sampler::new(seed);
            let mut grammar = req.sampling.grammar.as_ref().map(|g| g.start()).transpose().map_err(EngineError::InvalidInput)?;
            let first = match grammar.as_mut() {
                Some(g) => {
                    let mut masked = logits.clone();
                    g.mask_after(&[], &mut masked, req.stop_ids);
                    let first = sampler.sample(&masked, &req.sampling);
                    g.commit(&[first]);
                    first
                }
                None => match on_device {
                    Some(cuda) => {
                        let hidden = &out[0].hidden[out[0].hidden.len() - model.config.hidden_size..];
                        let last = *req.prompt_ids.last().expect("the prompt is not empty");
                        cuda.sample_next(hidden, last, &req.sampling, &mut sampler)?
                    }
                    None => sampler.sample(&logits, &req.sampling),
                },
            };
            let mut logprobs = Vec::new();
            if let Some(top) = req.sampling.logprobs {
                logprobs.push(logprob_of(&out[0].logits, first, top));
            }
            let mut s = SpecSession {
                cache,
                features: features.clone(),
                sampling: SamplingParams { seed, ..req.sampling.clone() },
                sampler,
                stop_ids: req.stop_ids.to_vec(),
                max_tokens: req.max_tokens,
                prompt_len: req.prompt_ids.len(),
                tokens: Vec::new(),
                finish: None,
                stats: GenerationStats { prompt_tokens: req.prompt_ids.len(), prefill_ms, ..Default::default() },
                spec: SpecStats::default(),
                verify_emitted: 0,
                history: history.clone(),
                logprobs,
                grammar,
                depth_cap: None,
                proposer,
            };
            if req.max_tokens == 0 {
                s.finish = Some(FinishReason::Length);
                s.logprobs.clear();
                sessions.push(s);
                continue;
            }
            s.tokens.push(first);
            s.history.push(first);
            s.check_finished(model);
            if s.finish.is_none() {
                let rows: Vec<usize> = (0..req.prompt_ids.len()).collect();
                let feats = features_of(&out[0], &features, &opts, model.config.hidden_size, &rows);
                let t = Instant::now();
                let mut stream = req.prompt_ids.to_vec();
                stream.push(first);
                s.proposer.begin(&stream, &feats)?;
                s.spec.draft_ms += t.elapsed().as_secs_f64() * 1e3;
            }
            sessions.push(s);
        }
        Ok(sessions)
    }

    fn check_finished(&mut self, model: &Model) {
        if self.finish.is_some() {
            return;
        }
        if self.tokens.last().is_some_and(|t| self.stop_ids.contains(t)) {
            self.finish = Some(FinishReason::Stop);
        } else if self.tokens.len() >= self.max_tokens || self.prompt_len + self.tokens.len() >= model.config.max_position_embeddings {
            // The last emitted token would sit at the last position: plain
            // decoding stops there too.
            self.finish = Some(FinishReason::Length);
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Asks the drafter for this session's next tree now (a remote drafter
    /// then works while other sessions verify; `--speculative-overlap`);
    /// the next [`step_batch`] of this session collects it. Nothing for a
    /// finished session or one whose budget is 0; asking twice is once.
    pub fn request_ahead(&mut self, model: &Model) -> Result<()> {
        if !self.is_finished() {
            let budget = self.depth_budget(model);
            if budget > 0 {
                self.proposer.request_proposal(budget)?;
            }
        }
        Ok(())
    }

    /// The deepest tree this round may verify: the bonus token after the
    /// deepest node must still fit the context and `max_tokens`.
    fn depth_budget(&self, model: &Model) -> usize {
        let limit = model.config.max_position_embeddings;
        let by_context = limit.saturating_sub(2 + self.cache.len());
        let by_tokens = self.max_tokens.saturating_sub(self.tokens.len() + 1);
        by_context.min(by_tokens).min(self.depth_cap.unwrap_or(usize::MAX))
    }

    /// Final statistics.
    fn finish_stats(&mut self) {
        let s = &mut self.spec;
        s.spec_accept_length = if s.spec_verify_ct > 0 { self.verify_emitted as f64 / s.spec_verify_ct as f64 } else { 0.0 };
        s.spec_accept_rate =
            if s.spec_num_proposed_drafts > 0 { s.spec_num_correct_drafts as f64 / s.spec_num_proposed_drafts as f64 } else { 0.0 };
        s.spec_mean_budget = if s.spec_verify_ct > 0 { s.spec_budget_sum as f64 / s.spec_verify_ct as f64 } else { 0.0 };
        self.stats.completion_tokens = self.tokens.len();
    }
}

/// Runs one speculative round for every unfinished session, verifying all
/// their trees in one target forward. Returns each session's new tokens.
pub fn step_batch(model: &Model, sessions: &mut [&mut SpecSession]) -> Result<Vec<Vec<u32>>> {
    // Ask every drafter first, so remote ones work while the rest are asked.
    // A session whose budget is 0 (an adaptive choice, or the end of its
    // context or tokens) verifies its root alone: its drafter is not asked,
    // so the round trip and the draft forward are saved, and what it was
    // sent since is caught up in one forward at its next proposal.
    for s in sessions.iter_mut() {
        s.request_ahead(model)?;
    }
    let mut trees = Vec::with_capacity(sessions.len());
    for s in sessions.iter_mut() {
        if s.is_finished() {
            trees.push(None);
            continue;
        }
        let t = Instant::now();
        let budget = s.depth_budget(model);
        if budget == 0 {
            // A tree asked for ahead of this step (`request_ahead`) under an
            // earlier budget is not collected now; withdraw it.
            s.proposer.cancel_request();
            let root = *s.tokens.last().expect("an unfinished session has emitted its first token");
            trees.push(Some(DraftTree::chain(root, &[])));
            continue;
        }
        // Under a constraint the tree holds only what the grammar admits:
        // a forbidden node could never be accepted, so verifying it is waste.
        let proposed = match s.grammar.as_mut() {
            Some(g) => {
                let refused = &mut s.spec.spec_refused_drafts;
                s.proposer.propose_within(budget, &mut |path, t| {
                    let ok = g.allows(path, t);
                    *refused += usize::from(!ok);
                    ok
                })?
            }
            None => s.proposer.propose(budget)?,
        };
        proposed.validate()?;
        let tree = proposed.limit_depth(s.depth_budget(model));
        s.spec.draft_ms += t.elapsed().as_secs_f64() * 1e3;
        let root = *s.tokens.last().expect("an unfinished session has emitted its first token");
        if tree.tokens.first() != Some(&root) {
            return Err(EngineError::InvalidInput(format!(
                "proposer `{}` rooted its tree at {:?}, expected the last committed token {root}",
                s.proposer.name(),
                tree.tokens.first()
            )));
        }
        trees.push(Some(tree));
    }
    let kinds: Vec<&FeatureKind> = sessions.iter().filter(|s| !s.is_finished()).map(|s| &s.features).collect();
    let mut opts = forward_options(&kinds);
    // Logits are computed lazily from the final hidden states, only for the
    // nodes verification walks through.
    opts.want_hidden = true;
    let t = Instant::now();
    let mut bases = Vec::new();
    let positions: Vec<Option<Vec<u32>>> =
        sessions.iter().zip(&trees).map(|(s, t)| t.as_ref().map(|t| t.positions(s.cache.len()))).collect();
    // Under a constraint, the grammar masks of each tree's first nodes are
    // computed on a second thread while the forward runs (they depend only
    // on the tree); the walk computes any other node's mask itself.
    let mut ahead: Vec<Vec<Option<TokenMask>>> = (0..sessions.len()).map(|_| Vec::new()).collect();
    let outs = {
        let mut inputs = Vec::new();
        let mut jobs: Vec<(usize, &mut GrammarState, &DraftTree)> = Vec::new();
        for (k, ((s, tree), pos)) in sessions.iter_mut().zip(&trees).zip(&positions).enumerate() {
            if let (Some(tree), Some(pos)) = (tree, pos) {
                let SpecSession { cache, grammar, .. } = &mut **s;
                bases.push(cache.len());
                inputs.push(SeqInput { cache, tokens: &tree.tokens, positions: Some(pos), mask: tree.mask(), logits: LogitsRows::None });
                if let Some(g) = grammar.as_mut() {
                    jobs.push((k, g, tree));
                }
            }
        }
        if inputs.is_empty() {
            return Ok(vec![Vec::new(); sessions.len()]);
        }
        if jobs.is_empty() {
            model.forward(&mut inputs, &opts)?
        } else {
            let (outs, masks) = std::thread::scope(|sc| {
                let masker = sc.spawn(move || {
                    jobs.into_iter()
                        .map(|(k, g, tree)| (k, (0..tree.len().min(MASKS_AHEAD)).map(|i| Some(g.mask_for(&tree.path_tokens(i)))).collect::<Vec<_>>()))
                        .collect::<Vec<_>>()
                });
                let outs = model.forward(&mut inputs, &opts);
                (outs, masker.join())
            });
            for (k, m) in masks.map_err(|_| EngineError::InvalidInput("the grammar mask thread panicked".into()))? {
                ahead[k] = m;
            }
            outs?
        }
    };
    // Sampled requests on a device: every tree's walk runs there, in one
    // call, and only the accepted paths come back.
    let mut on_device = sample_on_device(model, sessions, &trees, &outs)?;
    let verify_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut outs = outs.into_iter();
    let mut bases = bases.into_iter();
    let mut news = Vec::with_capacity(sessions.len());
    for (k, (s, tree)) in sessions.iter_mut().zip(&trees).enumerate() {
        let Some(tree) = tree else {
            news.push(Vec::new());
            continue;
        };
        let pre = &mut ahead[k];
        let out = outs.next().expect("one output per tree");
        let base = bases.next().expect("one base per tree");
        let t = Instant::now();
        let mut logits = PathLogits::new(model, tree, &out.hidden);
        // Each node's logits, processed with the history after its own path
        // (see `processors`); raw rows are kept when logprobs are reported.
        let params = s.sampling.clone();
        let plain_greedy = params.is_greedy() && params.processors.is_noop() && s.grammar.is_none() && params.logprobs.is_none();
        let mut raw: Vec<(usize, Vec<f32>)> = Vec::new();
        let mut row = |i: usize| -> Option<Vec<f32>> {
            let mut l = logits.row(i).ok()?;
            if params.logprobs.is_some() {
                raw.push((i, l.clone()));
            }
            if !params.processors.is_noop() || s.grammar.is_some() {
                let path = tree.path_tokens(i);
                processors::apply(&mut l, &params.processors, &s.history.with_path(&path), &s.stop_ids);
                if let Some(g) = s.grammar.as_mut() {
                    match pre.get_mut(i).and_then(Option::take) {
                        Some(m) => m.apply(&mut l, &s.stop_ids),
                        None => g.mask_after(&path, &mut l, &s.stop_ids),
                    }
                }
            }
            Some(l)
        };
        let acc: Accepted = if let Some(a) = on_device[k].take() {
            drop(row);
            a
        } else if plain_greedy {
            // Nothing needs a node's logits but their argmax: on a device
            // only the ids leave it.
            drop(row);
            greedy_verify_lazy(tree, &mut |i| logits.argmax(i).unwrap_or(0))
        } else if params.is_greedy() {
            greedy_verify_lazy(tree, &mut |i| row(i).map_or(0, |l| ops::argmax(&l).0 as u32))
        } else {
            // After an error any well-formed distribution keeps verification
            // going; its result is discarded below.
            let vocab = model.config.vocab_size;
            let uniform = || vec![1.0 / vocab as f32; vocab];
            sample_verify(tree, &mut |i| row(i).map_or_else(uniform, |l| target_probs(&l, &params)), &mut s.sampler)
        };
        // A failed lm_head (a device error) voids the round's result.
        if let Some(e) = logits.error.take() {
            return Err(e);
        }
        s.spec.verify_ms += verify_ms + t.elapsed().as_secs_f64() * 1e3;
        s.spec.spec_verify_ct += 1;
        s.spec.spec_budget_sum += s.depth_cap.unwrap_or(tree.max_depth());
        s.spec.spec_num_proposed_drafts += tree.max_depth();
        s.spec.spec_verified_nodes += tree.len() - 1;
        s.spec.spec_num_correct_drafts += acc.num_correct_drafts();
        let hist = &mut s.spec.spec_correct_drafts_histogram;
        if hist.len() <= acc.num_correct_drafts() {
            hist.resize(acc.num_correct_drafts() + 1, 0);
        }
        hist[acc.num_correct_drafts()] += 1;
        s.cache.keep_rows(base, &acc.path)?;
        // Emit until a stop token or the token budget; the rest is dropped.
        let mut new = Vec::new();
        for (j, &tok) in acc.tokens.iter().enumerate() {
            if let Some(top) = s.sampling.logprobs {
                let node = acc.path[j];
                let l = &raw.iter().find(|r| r.0 == node).expect("the walk scored every node on its path").1;
                s.logprobs.push(logprob_of(l, tok, top));
            }
            s.tokens.push(tok);
            s.history.push(tok);
            new.push(tok);
            s.check_finished(model);
            if s.is_finished() {
                break;
            }
        }
        s.verify_emitted += new.len();
        if let Some(g) = s.grammar.as_mut() {
            g.commit(&new);
        }
        if !s.is_finished() {
            let feats = features_of(&out, &s.features, &opts, model.config.hidden_size, &acc.path);
            let t = Instant::now();
            s.proposer.commit(&acc.tokens, &feats)?;
            s.spec.draft_ms += t.elapsed().as_secs_f64() * 1e3;
        }
        news.push(new);
    }
    Ok(news)
}

/// The accepted path of each session whose sampled request can be verified
/// on the model's device (see [`crate::cuda::sample`]), `None` for the rest
/// and on the CPU. `outs` holds one output per session with a tree.
fn sample_on_device(model: &Model, sessions: &mut [&mut SpecSession], trees: &[Option<DraftTree>], outs: &[SeqOutput]) -> Result<Vec<Option<Accepted>>> {
    let mut found = vec![None; sessions.len()];
    let Some(cuda) = model.cuda() else { return Ok(found) };
    // Coins first (each session's seeded source, in its walk's order), then
    // the jobs that borrow them.
    let coins: Vec<Option<Vec<f32>>> = sessions
        .iter_mut()
        .zip(trees)
        .map(|(s, tree)| match tree {
            Some(t) if sample::samples_on_device(&s.sampling) => Some((0..sample::coins_needed(t)).map(|_| s.sampler.uniform()).collect()),
            _ => None,
        })
        .collect();
    let mut jobs = Vec::new();
    let mut owners = Vec::new();
    let mut outs = outs.iter();
    for (k, (s, tree)) in sessions.iter().zip(trees).enumerate() {
        let Some(tree) = tree else { continue };
        let out = outs.next().expect("one output per tree");
        if let Some(c) = &coins[k] {
            jobs.push(sample::TreeToSample { hidden: &out.hidden, tree, params: &s.sampling, coins: c });
            owners.push(k);
        }
    }
    if !jobs.is_empty() {
        for (k, a) in owners.into_iter().zip(cuda.sample_trees(&jobs)?) {
            found[k] = Some(a);
        }
    }
    Ok(found)
}

/// Speculative generation of one request, calling `on_token` per new token.
pub fn speculative_generate(
    model: &Model,
    proposer: &mut dyn Proposer,
    req: &GenerateRequest,
    on_token: &mut dyn FnMut(u32),
) -> Result<(crate::generate::GenerationOutput, SpecStats)> {
    let mut s = SpecSession::start(model, Box::new(proposer), req)?;
    for &t in &s.tokens {
        on_token(t);
    }
    let t1 = Instant::now();
    while !s.is_finished() {
        let new = step_batch(model, &mut [&mut s])?;
        for &t in &new[0] {
            on_token(t);
        }
    }
    s.stats.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
    s.finish_stats();
    s.stats.prefill_tok_s = s.stats.prompt_tokens as f64 / (s.stats.prefill_ms / 1e3).max(1e-9);
    s.stats.decode_tok_s = s.tokens.len() as f64 / (s.stats.decode_ms / 1e3).max(1e-9);
    let out = crate::generate::GenerationOutput {
        token_ids: s.tokens.clone(),
        finish_reason: s.finish.unwrap_or(FinishReason::Length),
        stats: s.stats.clone(),
    };
    Ok((out, s.spec.clone()))
}

impl SpecSession<'_> {
    /// Closes the session's statistics (call once it is finished).
    pub fn finalize(&mut self) {
        self.finish_stats();
    }
}

/// A node's children are scored with it when the node and its children are
/// at most this many rows.
const LOOKAHEAD_ROWS: usize = 4;

/// Target logits of tree nodes, computed on demand from the final hidden
/// states, for the nodes verification walks through. Why the lookahead: the
/// lm_head (28M weights for SmolLM2) is memory-bound, so scoring a node with
/// its few children costs about as much as the node alone, and an accepted
/// child then needs no second pass over the head. Rows are batch-invariant,
/// so a row's logits are the same alone or with others.
struct PathLogits<'a> {
    model: &'a Model,
    hidden: &'a [f32],
    children: Vec<Vec<usize>>,
    done: Vec<Option<Vec<f32>>>,
    done_ids: Vec<Option<u32>>,
    /// The first lm_head error; verification's callbacks cannot return one.
    error: Option<EngineError>,
}

impl<'a> PathLogits<'a> {
    fn new(model: &'a Model, tree: &DraftTree, hidden: &'a [f32]) -> Self {
        PathLogits { model, hidden, children: tree.children(), done: vec![None; tree.len()], done_ids: vec![None; tree.len()], error: None }
    }

    /// The nodes scored with `i`: itself, and its children when they are
    /// few (see [`LOOKAHEAD_ROWS`]).
    fn batch_of(&self, i: usize) -> Vec<usize> {
        let mut rows = vec![i];
        if 1 + self.children[i].len() <= LOOKAHEAD_ROWS {
            rows.extend(&self.children[i]);
        }
        rows
    }

    /// The final hidden states of `rows`, stacked.
    fn hidden_of(&self, rows: &[usize]) -> Vec<f32> {
        let h = self.model.config.hidden_size;
        rows.iter().flat_map(|&r| self.hidden[r * h..(r + 1) * h].iter().copied()).collect()
    }

    /// The greedy token after node `i` (each node asked for at most once),
    /// from [`Model::lm_head_argmax`]: the same token as the argmax of
    /// [`Self::row`], without the logits leaving a device.
    fn argmax(&mut self, i: usize) -> std::result::Result<u32, ()> {
        if let Some(t) = self.done_ids[i].take() {
            return Ok(t);
        }
        if self.error.is_some() {
            return Err(());
        }
        let rows = self.batch_of(i);
        match self.model.lm_head_argmax(&self.hidden_of(&rows)) {
            Ok(ids) => {
                for (&r, &t) in rows.iter().zip(&ids).skip(1) {
                    self.done_ids[r] = Some(t);
                }
                ids.first().copied().ok_or(())
            }
            Err(e) => {
                self.error = Some(e);
                Err(())
            }
        }
    }

    /// The logits after node `i` (each node is asked for at most once). An
    /// error is also kept in `self.error`.
    fn row(&mut self, i: usize) -> std::result::Result<Vec<f32>, ()> {
        if let Some(l) = self.done[i].take() {
            return Ok(l);
        }
        if self.error.is_some() {
            return Err(());
        }
        let rows = self.batch_of(i);
        let mut all = match self.model.lm_head(&self.hidden_of(&rows)) {
            Ok(a) => a,
            Err(e) => {
                self.error = Some(e);
                return Err(());
            }
        };
        let v = all.len() / rows.len();
        for (j, &r) in rows.iter().enumerate().skip(1) {
            self.done[r] = Some(all[j * v..(j + 1) * v].to_vec());
        }
        all.truncate(v);
        Ok(all)
    }
}
