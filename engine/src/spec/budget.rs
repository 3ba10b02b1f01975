//! Speculation budgets chosen per request and per step
//! (`--speculative-adaptive`).
//!
//! Strategy. Before each step the scheduler picks, for every running
//! request j, the depth d_j of the draft tree it will verify (0: a plain
//! decode row), to maximise the batch's expected tokens per second:
//!
//! ```text
//!   maximise  Σ_j E_j(d_j) / T(d)
//!   E_j(d) = 1 + Σ_{i=1..d} Π_{k=1..i} q_jk           (tokens the step emits)
//!   T(d)   = fixed + per_row · Σ_j (1 + w_j · d_j) + per_level · Σ_j d_j
//!            + draft_round · [some d_j > 0]
//! ```
//!
//! q_jk is the probability that request j's draft at depth k is accepted
//! once depth k−1 was ([`Acceptance`]); w_j the nodes its trees hold per
//! level (1 for a chain). `fixed` (the verify forward's own cost),
//! `per_row` (one more row in it), `per_level` (one more draft step) and
//! `draft_round` (asking the drafters at all: the round trip, the catch-up
//! forwards; a step where every depth is 0 asks no drafter) come from
//! [`CostModel`], a calibration at start-up refined by every step's measured
//! times.
//!
//! The choice is greedy: every request starts at 0, and the level with the
//! best gain per cost is added while it raises the ratio. A request's gains
//! fall with depth (a product of probabilities), so this reaches the best
//! ratio of the problem with fractional depths. When a level's gain is
//! worth less than its cost at the batch's current rate the request stays
//! shallow; when verify rows are free and acceptance is certain, every
//! request gets the maximum. The draft round is paid once for the batch, so
//! the greedy plan (made as if it were paid) is kept only if it beats the
//! plan where no request drafts and the round is saved.
//!
//! Exploration: a request held at 0 for [`BudgetConfig::probe_every`] steps
//! is given depth 1 once, so its acceptance keeps being measured; every
//! request idle for half as long is probed in the same step, so that the
//! probes of a large batch share one draft round. A probe is worth its
//! cost only if the request could turn out to deserve a draft: it is made
//! when an optimistic acceptance (the estimate plus two standard errors)
//! would pay for one level at the batch's current rate,
//!
//! ```text
//!   q_opt · T_plain > B · (per_row · w + per_level + draft_round / m)
//! ```
//!
//! (B requests, m of them probed together). Where rows are dear (a busy CPU
//! worker) even a likely draft cannot pay, and a probe costs more than its
//! row: the drafter first catches up on every token since its last draft.
//! Of those requests one, a sentinel (the one probed last, whose backlog is
//! shortest), is probed once per [`BudgetConfig::probe_every_hopeless`]
//! steps, so that a cost model gone stale cannot shut drafting off for
//! good; the others' drafters are left idle.
//!
//! Changing depths never changes output: a budget only shortens the tree the
//! verifier sees, and verification is exact for any tree.

use crate::{AttnMask, ForwardOptions, LogitsRows, Model, Result, SeqInput};
use std::time::Instant;

/// Settings of the budget choice.
#[derive(Debug, Clone)]
pub struct BudgetConfig {
    /// The deepest budget (the drafter's own tree depth).
    pub max_depth: usize,
    /// How many observations the worker-wide acceptance counts as for a
    /// request with none of its own.
    pub prior_weight: f64,
    /// Per-step decay of old observations (acceptance and cost).
    pub decay: f64,
    /// Steps a request may stay at depth 0 before it is probed at depth 1,
    /// when a draft could pay for it.
    pub probe_every: u32,
    /// The same when not even an optimistic acceptance would pay.
    pub probe_every_hopeless: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig { max_depth: 1, prior_weight: 4.0, decay: 0.98, probe_every: 16, probe_every_hopeless: 64 }
    }
}

/// A line `y = a + b·x` fitted, where it is asked for, to the recent
/// observations near that `x`: locally weighted least squares over the last
/// [`WINDOW`] observations, each weighted by `decay^age` and by how near its
/// `x` is to the query (a kernel `1 − u²`, `u = (x − x_q) / h`,
/// `h = max(2, x_q / 2)`), with a prior line `a0 + b0·x` held as a penalty
/// on each coefficient (ridge regression toward the prior):
///
/// ```text
///   minimise  Σ w_i (y_i − a − b·x_i)² + λa (a − a0)² + λb (b − b0)²
/// ```
///
/// Local, because a verify forward's cost is not one line: on a CPU the
/// second row of a batch of one costs a fifth of the first, while rows
/// added to a batch of sixteen cost nearly their share; a line fitted
/// across both prices a lone request's draft row at the busy batch's rate.
/// λa is tiny, so the intercept follows the data as soon as there are any.
/// λb ([`SLOPE_PRIOR`]) weighs the prior slope like a tenth of one
/// observation at unit distance from the data's mean `x`: observations at
/// one `x` only (every step of a lone request at depth 0 has one row) say
/// nothing of the slope and leave the prior's, while a few at a second `x`
/// outweigh it. An earlier form (one global fit, the prior as two
/// pseudo-points at x = 1 and 9 that never faded) let a calibration slowed
/// by a busy machine at start-up fix the slope for good: a row priced at
/// 6× its cost, so no request ever drafted.
#[derive(Debug, Clone)]
struct Line {
    /// The last observations, oldest first.
    points: std::collections::VecDeque<(f64, f64)>,
    /// The prior intercept and slope.
    prior: (f64, f64),
    decay: f64,
}

/// Observations a [`Line`] keeps.
const WINDOW: usize = 256;
/// λb: the weight of the prior slope, in units of Σw(x − x̄)².
const SLOPE_PRIOR: f64 = 0.1;
/// λa: the weight of the prior intercept, in observations.
const INTERCEPT_PRIOR: f64 = 1e-6;

impl Line {
    /// The prior line through two points.
    fn new(points: [(f64, f64); 2], decay: f64) -> Line {
        let [(x0, y0), (x1, y1)] = points;
        let b0 = if (x1 - x0).abs() > 1e-12 { (y1 - y0) / (x1 - x0) } else { 0.0 };
        Line { points: std::collections::VecDeque::with_capacity(WINDOW), prior: (y0 - b0 * x0, b0), decay }
    }

    fn observe(&mut self, x: f64, y: f64) {
        if !(x.is_finite() && y.is_finite()) {
            return;
        }
        if self.points.len() == WINDOW {
            self.points.pop_front();
        }
        self.points.push_back((x, y));
    }

    /// (intercept, slope) of the line near `xq` (over every `x` when
    /// `None`), both at least 0.
    fn fit(&self, xq: Option<f64>) -> (f64, f64) {
        let (xq, h) = match xq {
            Some(x) => (x, (0.5 * x).max(2.0)),
            None => (0.0, f64::INFINITY),
        };
        let (mut w, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let mut age = 1.0;
        for &(x, y) in self.points.iter().rev() {
            let u = (x - xq) / h;
            let k = (1.0 - u * u).max(0.0) * age;
            age *= self.decay;
            w += k;
            sx += k * x;
            sy += k * y;
            sxx += k * x * x;
            sxy += k * x * y;
        }
        let (a0, b0) = self.prior;
        // The normal equations:
        //   (w + λa)·a + sx·b        = sy + λa·a0
        //   sx·a       + (sxx + λb)·b = sxy + λb·b0
        let (m11, m12, m22) = (w + INTERCEPT_PRIOR, sx, sxx + SLOPE_PRIOR);
        let (r1, r2) = (sy + INTERCEPT_PRIOR * a0, sxy + SLOPE_PRIOR * b0);
        let det = m11 * m22 - m12 * m12;
        let (a, b) = if det.abs() > 1e-18 { ((r1 * m22 - m12 * r2) / det, (m11 * r2 - m12 * r1) / det) } else { (a0, b0) };
        // Neither cost can be negative. A negative slope is noise the
        // window cannot resolve (on a loaded machine, steps of nearby row
        // counts whose times cross): the slope then stays the prior's, a
        // calibration's measured cost of a row, and the intercept is refitted
        // with it; only a prior slope of 0 (the draft line's) gives 0. A
        // negative intercept is refitted the same way with it held at 0.
        if b < 0.0 {
            let b = b0.max(0.0);
            let a = (r1 - m12 * b) / m11;
            return if a >= 0.0 { (a, b) } else { (0.0, (r2 / m22).max(0.0)) };
        }
        if a < 0.0 {
            return (0.0, (r2 / m22).max(0.0));
        }
        (a, b)
    }
}

/// Step time as a function of the rows verified and the draft levels grown,
/// in seconds.
#[derive(Debug, Clone)]
pub struct CostModel {
    verify: Line,
    draft: Line,
}

/// The fitted coefficients, seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Costs {
    /// A round's cost whatever the budgets: the verify forward's fixed part.
    pub fixed: f64,
    /// One more row in the verify forward.
    pub per_row: f64,
    /// One more draft level of one request.
    pub per_level: f64,
    /// Asking the drafters at all (paid when some request drafts).
    pub draft_round: f64,
}

impl CostModel {
    /// From two measured verify forwards, (rows, seconds) each; the draft
    /// cost starts at zero and is learnt from the steps.
    pub fn new(verify_points: [(f64, f64); 2], decay: f64) -> CostModel {
        CostModel { verify: Line::new(verify_points, decay), draft: Line::new([(0.0, 0.0), (1.0, 0.0)], decay) }
    }

    /// Times verify forwards of `model` (1 row and 9 rows, after a 32-token
    /// context) for the prior. The two sizes are timed in turn, three times
    /// each, and the fastest of each kept: a machine busy at start-up (other
    /// workers loading) only ever slows a timing, and taking the two in
    /// turn lets both see the same load. About as long as three 40-token
    /// prefills.
    pub fn calibrate(model: &Model, decay: f64) -> Result<CostModel> {
        let ctx: Vec<u32> = (0..32u32).map(|i| 100 + i).collect();
        let time = |rows: usize| -> Result<f64> {
            let mut cache = model.new_cache();
            model.forward(&mut [SeqInput { cache: &mut cache, tokens: &ctx, positions: None, mask: AttnMask::Causal, logits: LogitsRows::None }], &ForwardOptions::default())?;
            let toks = &ctx[..rows];
            let t = Instant::now();
            let opts = ForwardOptions { want_hidden: true, ..Default::default() };
            model.forward(&mut [SeqInput { cache: &mut cache, tokens: toks, positions: None, mask: AttnMask::Causal, logits: LogitsRows::Last }], &opts)?;
            Ok(t.elapsed().as_secs_f64())
        };
        let (mut one, mut nine) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..3 {
            one = one.min(time(1)?);
            nine = nine.min(time(9)?);
        }
        Ok(CostModel::new([(1.0, one), (9.0, nine)], decay))
    }

    /// One step: the rows its verify forward held and how long it took, the
    /// draft levels grown in all and how long the drafting took. A step
    /// where no request drafted teaches the draft line nothing (its round
    /// was not paid).
    pub fn observe(&mut self, rows: usize, verify_secs: f64, levels: usize, draft_secs: f64) {
        self.verify.observe(rows as f64, verify_secs);
        if levels > 0 {
            self.draft.observe(levels as f64, draft_secs);
        }
    }

    /// The costs near the last step's rows.
    pub fn costs(&self) -> Costs {
        self.costs_at(self.verify.points.back().map_or(1, |&(rows, _)| rows as usize))
    }

    /// The costs for a step whose plain part has `rows` rows: the verify
    /// line fitted near there, the draft line over every level count.
    pub fn costs_at(&self, rows: usize) -> Costs {
        let (va, vb) = self.verify.fit(Some(rows.max(1) as f64));
        // The draft's round trip and per-level cost: one line over all.
        let (da, db) = self.draft.fit(None);
        Costs { fixed: va, per_row: vb, per_level: db, draft_round: da }
    }
}

/// One request's acceptance by depth: decayed counts of drafts tried and
/// accepted at each depth, shrunk toward the worker-wide rates.
#[derive(Debug, Clone, Default)]
pub struct Acceptance {
    tried: Vec<f64>,
    accepted: Vec<f64>,
    /// Steps since this request last verified a draft.
    idle_steps: u32,
}

impl Acceptance {
    /// A verified tree `depth` deep of which `accepted` levels were kept:
    /// depth k was tried if k−1 was accepted.
    pub fn observe(&mut self, depth: usize, accepted: usize, decay: f64) {
        if depth == 0 {
            self.idle_steps = self.idle_steps.saturating_add(1);
            return;
        }
        self.idle_steps = 0;
        if self.tried.len() < depth {
            self.tried.resize(depth, 0.0);
            self.accepted.resize(depth, 0.0);
        }
        for k in 0..self.tried.len() {
            self.tried[k] *= decay;
            self.accepted[k] *= decay;
        }
        for k in 0..depth.min(accepted + 1) {
            self.tried[k] += 1.0;
            if k < accepted {
                self.accepted[k] += 1.0;
            }
        }
    }

    /// P(depth k+1 accepted | depth k was), blended with `prior`.
    pub fn rate(&self, k: usize, prior: &Acceptance, weight: f64) -> f64 {
        let own = |a: &Acceptance| (a.tried.get(k).copied().unwrap_or(0.0), a.accepted.get(k).copied().unwrap_or(0.0));
        let (pt, pa) = own(prior);
        // With no worker-wide data either, an even chance.
        let p0 = if pt > 0.0 { pa / pt } else { 0.5 };
        let (t, a) = own(self);
        (a + weight * p0) / (t + weight)
    }

    /// `rate(k)` plus two standard errors of it (at most 1): how well the
    /// drafts at depth k+1 could still turn out to do.
    pub fn optimistic_rate(&self, k: usize, prior: &Acceptance, weight: f64) -> f64 {
        let r = self.rate(k, prior, weight);
        let n = self.tried.get(k).copied().unwrap_or(0.0) + weight;
        (r + 2.0 * (r * (1.0 - r) / n.max(1e-9)).sqrt() + 1.0 / n.max(1.0)).min(1.0)
    }

    /// `rate(k)` for the first `depth` levels: what the budget assumes.
    pub fn rates(&self, depth: usize, prior: &Acceptance, weight: f64) -> Vec<f64> {
        (0..depth).map(|k| self.rate(k, prior, weight)).collect()
    }

    /// Drafts tried at each depth (decayed counts).
    pub fn tried(&self) -> &[f64] {
        &self.tried
    }

    /// Expected tokens one step emits at depth `d` (the bonus token included).
    pub fn expected_tokens(&self, d: usize, prior: &Acceptance, weight: f64) -> f64 {
        let mut reach = 1.0;
        let mut e = 1.0;
        for k in 0..d {
            reach *= self.rate(k, prior, weight);
            e += reach;
        }
        e
    }
}

/// One running request as the budget choice sees it.
pub struct Candidate<'a> {
    pub acceptance: &'a Acceptance,
    /// Rows its trees hold per level (1 for a chain; topk for wide trees).
    pub rows_per_level: f64,
    /// The deepest it may go this step (context and max_tokens left, or 0
    /// for a request without a drafter).
    pub max_depth: usize,
}

/// The depth of each candidate's tree this step.
pub fn choose(cfg: &BudgetConfig, costs: Costs, prior: &Acceptance, reqs: &[Candidate]) -> Vec<usize> {
    let mut d = vec![0usize; reqs.len()];
    let plain_time = costs.fixed + costs.per_row * reqs.len() as f64;
    let mut gain: f64 = reqs.len() as f64;
    let mut time = plain_time + costs.draft_round;
    // Each request's next level: (its expected extra tokens, its extra time).
    let next = |j: usize, dj: usize| -> Option<(f64, f64)> {
        let r = &reqs[j];
        if dj >= r.max_depth.min(cfg.max_depth) {
            return None;
        }
        let extra = r.acceptance.expected_tokens(dj + 1, prior, cfg.prior_weight) - r.acceptance.expected_tokens(dj, prior, cfg.prior_weight);
        Some((extra, costs.per_row * r.rows_per_level + costs.per_level))
    };
    loop {
        let mut best: Option<(usize, f64, f64)> = None;
        for j in 0..reqs.len() {
            if let Some((g, c)) = next(j, d[j]) {
                // Ties (and free levels) go to the earlier request.
                let better = match best {
                    None => true,
                    Some((_, bg, bc)) => g * bc > bg * c,
                };
                if better {
                    best = Some((j, g, c));
                }
            }
        }
        let Some((j, g, c)) = best else { break };
        // Worth it only if it raises tokens per second: g/c > gain/time.
        if g * time <= gain * c || g <= 0.0 {
            break;
        }
        d[j] += 1;
        gain += g;
        time += c;
    }
    // Drafting at all must beat not asking the drafters.
    let planned = d.clone();
    if gain * plain_time <= reqs.len() as f64 * time {
        d.iter_mut().for_each(|x| *x = 0);
    }
    // Probes. Requests that reach `probe_every` at different steps would
    // make nearly every step of a large batch pay a draft round for one
    // probe, so when one is due, every request idle for half as long is
    // probed with it: they then stay in step, and a batch held at 0 pays
    // one round per `probe_every / 2` steps or fewer. A round paid for
    // probes is paid for everyone, so the plan made as if it were paid
    // applies too.
    let probeable = |r: &Candidate| r.max_depth > 0 && cfg.max_depth > 0;
    let idle = |r: &Candidate, every: u32| probeable(r) && r.acceptance.idle_steps >= every;
    let sharing = reqs.iter().filter(|r| idle(r, cfg.probe_every / 2)).count().max(1) as f64;
    let could_pay = |r: &Candidate| {
        let q = r.acceptance.optimistic_rate(0, prior, cfg.prior_weight);
        let cost = costs.per_row * r.rows_per_level + costs.per_level + costs.draft_round / sharing;
        q * plain_time > reqs.len() as f64 * cost
    };
    let pays: Vec<bool> = reqs.iter().map(|r| could_pay(r)).collect();
    // Requests a draft could pay for are probed by the ordinary rule, and
    // share the round.
    let mut probe = vec![false; reqs.len()];
    if reqs.iter().zip(&pays).any(|(r, &p)| p && idle(r, cfg.probe_every)) {
        for (j, r) in reqs.iter().enumerate() {
            probe[j] = pays[j] && idle(r, cfg.probe_every / 2);
        }
    }
    // The rest only keep the models current, and a probe makes its
    // drafter catch up on every token since the last one (a head forward
    // over all of them): probing each in turn would cost that for every
    // token of the batch. So one of them, a sentinel, is probed per
    // `probe_every_hopeless` steps: the one probed most recently (whose
    // backlog is shortest), once even it has been idle that long.
    let rare = cfg.probe_every_hopeless.max(cfg.probe_every);
    let sentinel = (0..reqs.len()).filter(|&j| !pays[j] && probeable(&reqs[j])).min_by_key(|&j| reqs[j].acceptance.idle_steps);
    if let Some(j) = sentinel.filter(|&j| idle(&reqs[j], rare)) {
        probe[j] = true;
    }
    if probe.iter().any(|&p| p) {
        for j in 0..reqs.len() {
            if probe[j] {
                d[j] = d[j].max(1);
            }
            d[j] = d[j].max(planned[j]);
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certain(depth: usize) -> Acceptance {
        let mut a = Acceptance::default();
        for _ in 0..50 {
            a.observe(depth, depth, 1.0);
        }
        a
    }

    fn hopeless(depth: usize) -> Acceptance {
        let mut a = Acceptance::default();
        for _ in 0..50 {
            a.observe(depth, 0, 1.0);
        }
        a
    }

    fn cfg(max_depth: usize) -> BudgetConfig {
        BudgetConfig { max_depth, ..Default::default() }
    }

    #[test]
    fn free_verify_and_certain_acceptance_take_the_maximum() {
        let a = certain(5);
        let costs = Costs { fixed: 0.01, per_row: 0.0, per_level: 0.0, draft_round: 0.0 };
        let reqs: Vec<Candidate> = (0..4).map(|_| Candidate { acceptance: &a, rows_per_level: 1.0, max_depth: 5 }).collect();
        assert_eq!(choose(&cfg(5), costs, &a, &reqs), vec![5; 4]);
    }

    #[test]
    fn a_draft_that_costs_more_than_it_gains_gets_no_budget() {
        // Acceptance 0.3 per level; one more row costs as much as the whole
        // step without it: a level would buy 0.3 tokens for a doubled time.
        let mut a = Acceptance::default();
        for i in 0..100 {
            a.observe(1, usize::from(i % 10 < 3), 1.0);
        }
        let costs = Costs { fixed: 0.0, per_row: 0.01, per_level: 0.0, draft_round: 0.0 };
        let reqs = [Candidate { acceptance: &a, rows_per_level: 1.0, max_depth: 4 }];
        assert_eq!(choose(&cfg(4), costs, &a, &reqs), vec![0]);
        // The same acceptance when rows are cheap next to the fixed cost
        // (a memory-bound GPU step): worth drafting.
        let cheap = Costs { fixed: 0.02, per_row: 0.0005, per_level: 0.0, draft_round: 0.0 };
        assert!(choose(&cfg(4), cheap, &a, &reqs)[0] >= 1);
        // A drafter that is never right gets nothing even when rows are cheap.
        let h = hopeless(3);
        let reqs = [Candidate { acceptance: &h, rows_per_level: 1.0, max_depth: 4 }];
        assert_eq!(choose(&cfg(4), cheap, &h, &reqs), vec![0]);
    }

    #[test]
    fn the_better_drafted_request_gets_the_deeper_tree() {
        let good = certain(3);
        let mut fair = Acceptance::default();
        for i in 0..60 {
            fair.observe(3, usize::from(i % 2 == 0), 1.0);
        }
        let prior = Acceptance::default();
        let costs = Costs { fixed: 0.02, per_row: 0.004, per_level: 0.0, draft_round: 0.0 };
        let reqs = [Candidate { acceptance: &fair, rows_per_level: 1.0, max_depth: 3 }, Candidate { acceptance: &good, rows_per_level: 1.0, max_depth: 3 }];
        let d = choose(&cfg(3), costs, &prior, &reqs);
        assert!(d[1] > d[0], "{d:?}");
        assert_eq!(d[1], 3);
    }

    #[test]
    fn a_draft_round_worth_less_than_every_gain_together_is_skipped() {
        // Acceptance 0.5 at depth 1, rows free, per level free: drafting
        // gains 0.5 token per request for one round trip.
        let mut a = Acceptance::default();
        for i in 0..100 {
            a.observe(1, usize::from(i % 2 == 0), 1.0);
        }
        let reqs: Vec<Candidate> = (0..4).map(|_| Candidate { acceptance: &a, rows_per_level: 1.0, max_depth: 1 }).collect();
        // A round trip as long as the verify forward: 4 → 6 tokens for twice
        // the time; not worth it.
        let dear = Costs { fixed: 0.01, per_row: 0.0, per_level: 0.0, draft_round: 0.01 };
        assert_eq!(choose(&cfg(1), dear, &a, &reqs), vec![0; 4]);
        // A tenth of it: 6 tokens in 1.1× the time; every request drafts.
        let cheap = Costs { draft_round: 0.001, ..dear };
        assert_eq!(choose(&cfg(1), cheap, &a, &reqs), vec![1; 4]);
    }

    #[test]
    fn limits_and_requests_without_drafts_are_respected() {
        let a = certain(5);
        let costs = Costs { fixed: 0.01, per_row: 0.0, per_level: 0.0, draft_round: 0.0 };
        let reqs = [Candidate { acceptance: &a, rows_per_level: 1.0, max_depth: 2 }, Candidate { acceptance: &a, rows_per_level: 1.0, max_depth: 0 }];
        assert_eq!(choose(&cfg(5), costs, &a, &reqs), vec![2, 0]);
    }

    #[test]
    fn an_idle_request_is_probed_now_and_then() {
        // The ordinary rhythm (the rare one set to the same): a probe
        // every probe_every + 1 steps.
        let mut a = hopeless(1);
        let costs = Costs { fixed: 0.0, per_row: 0.01, per_level: 0.0, draft_round: 0.0 };
        let c = BudgetConfig { probe_every_hopeless: 16, ..cfg(2) };
        let mut probes = 0;
        for _ in 0..64 {
            let d = choose(&c, costs, &a, &[Candidate { acceptance: &a, rows_per_level: 1.0, max_depth: 2 }])[0];
            probes += usize::from(d > 0);
            a.observe(d, 0, c.decay);
        }
        assert_eq!(probes, 64 / (c.probe_every as usize + 1));
    }

    #[test]
    fn probes_of_a_large_batch_share_their_draft_rounds() {
        // Sixteen requests whose drafts are never right, joined one step
        // apart, so their idle counts are staggered.
        // Rows cheap enough that a draft could pay if the drafts improved.
        let costs = Costs { fixed: 0.02, per_row: 0.0001, per_level: 0.0, draft_round: 0.0005 };
        let c = cfg(2);
        let mut accs: Vec<Acceptance> = (0..16)
            .map(|j| {
                let mut a = Acceptance::default();
                a.observe(1, 0, c.decay);
                for _ in 0..j {
                    a.observe(0, 0, c.decay);
                }
                a
            })
            .collect();
        let (mut rounds, mut probes) = (0, 0);
        for _ in 0..64 {
            let d = {
                let reqs: Vec<Candidate> = accs.iter().map(|a| Candidate { acceptance: a, rows_per_level: 1.0, max_depth: 2 }).collect();
                choose(&c, costs, &accs[0], &reqs)
            };
            rounds += usize::from(d.iter().any(|&x| x > 0));
            probes += d.iter().filter(|&&x| x > 0).count();
            for (a, &x) in accs.iter_mut().zip(&d) {
                a.observe(x, 0, c.decay);
            }
        }
        // Every request is still probed now and then, but the rounds are
        // shared: at most one per probe_every / 2 steps (64 steps: 8), not
        // one per step.
        assert!(rounds <= 64 / (c.probe_every as usize / 2) + 1, "{rounds} rounds");
        assert!(probes >= 16 * 2, "{probes} probes");
    }

    #[test]
    fn acceptance_counts_only_the_levels_reached_and_leans_on_the_prior_when_new() {
        let mut a = Acceptance::default();
        a.observe(4, 1, 1.0); // depth 1 kept, depth 2 refused, 3 and 4 never reached
        assert_eq!(a.tried, vec![1.0, 1.0, 0.0, 0.0]);
        assert_eq!(a.accepted, vec![1.0, 0.0, 0.0, 0.0]);
        let prior = certain(2);
        let fresh = Acceptance::default();
        assert!((fresh.rate(0, &prior, 4.0) - 1.0).abs() < 1e-9);
        assert!((fresh.expected_tokens(2, &prior, 4.0) - 3.0).abs() < 1e-9);
        // Its own refusal pulls depth 2 below the prior's certainty.
        assert!(a.rate(1, &prior, 4.0) < 0.85);
    }

    #[test]
    fn the_cost_model_recovers_a_line_and_survives_constant_rows() {
        let mut m = CostModel::new([(1.0, 0.010), (9.0, 0.018)], 0.98);
        let c = m.costs();
        assert!((c.per_row - 0.001).abs() < 1e-9 && (c.fixed - 0.009).abs() < 1e-9, "{c:?}");
        // The machine turns out slower per row: 2 ms + 3 ms per row, and
        // drafting 1 ms per level.
        for i in 0..400 {
            let rows = 1 + i % 16;
            let levels = i % 5;
            m.observe(rows, 0.002 + 0.003 * rows as f64, levels, 0.001 * levels as f64);
        }
        let c = m.costs();
        assert!((c.per_row - 0.003).abs() < 2e-4, "{c:?}");
        assert!((c.per_level - 0.001).abs() < 1e-4, "{c:?}");
        assert!((c.fixed - 0.002).abs() < 1e-3, "{c:?}");
        assert!(c.draft_round.abs() < 1e-3, "{c:?}");
        // A long run of one batch size keeps the slope defined.
        for _ in 0..2000 {
            m.observe(8, 0.026, 0, 0.0);
        }
        let c = m.costs();
        assert!(c.per_row > 0.0 && c.per_row.is_finite(), "{c:?}");
    }
    #[test]
    fn noise_that_slopes_the_wrong_way_keeps_the_calibrated_row_cost() {
        // Calibrated at 1 ms a row. Then, on a loaded machine, steps of 5
        // rows happen to take less than steps of 4: the local fit's slope
        // is negative, and a row must not come out free.
        let mut m = CostModel::new([(1.0, 0.010), (9.0, 0.018)], 0.98);
        for i in 0..64 {
            let (rows, secs) = if i % 2 == 0 { (4, 0.020) } else { (5, 0.019) };
            m.observe(rows, secs, 0, 0.0);
        }
        let c = m.costs_at(5);
        assert!((c.per_row - 0.001).abs() < 1e-9, "{c:?}");
        // The intercept follows the steps with that slope: 19.5 ms at 4.5 rows.
        assert!((c.fixed + 4.5 * c.per_row - 0.0195).abs() < 2e-4, "{c:?}");
        // With no prior slope (the draft line's), it is 0.
        let mut d = CostModel::new([(1.0, 0.010), (9.0, 0.010)], 0.98);
        for i in 0..64 {
            let (rows, secs) = if i % 2 == 0 { (4, 0.020) } else { (5, 0.019) };
            d.observe(rows, secs, 0, 0.0);
        }
        assert_eq!(d.costs_at(5).per_row, 0.0);
    }

    /// Probes over `steps` steps for one request that is never right,
    /// alone in its batch.
    fn probes_of_a_hopeless_request(costs: Costs, steps: usize) -> usize {
        let c = cfg(2);
        let mut a = Acceptance::default();
        let mut probes = 0;
        for _ in 0..steps {
            let d = choose(&c, costs, &a, &[Candidate { acceptance: &a, rows_per_level: 1.0, max_depth: 2 }])[0];
            probes += usize::from(d > 0);
            a.observe(d, 0, c.decay);
        }
        probes
    }

    #[test]
    fn probes_stop_where_not_even_a_good_draft_could_pay() {
        // A verify row (and the draft round) cost more than the whole plain
        // step: not even a certain draft pays for a level, so the request
        // is probed only at the rare rhythm: over 512 steps, 512 / 65 = 7,
        // not 512 / 17 = 30.
        let dear = Costs { fixed: 0.0, per_row: 0.01, per_level: 0.0, draft_round: 0.001 };
        let p = probes_of_a_hopeless_request(dear, 512);
        assert!((6..=8).contains(&p), "{p} probes");
        // Rows nearly free next to the step: a draft could pay if the
        // request improved, so it keeps being probed at the ordinary rhythm.
        let cheap = Costs { fixed: 0.02, per_row: 0.00001, per_level: 0.0, draft_round: 0.0 };
        let p = probes_of_a_hopeless_request(cheap, 512);
        assert!(p >= 512 / 17 - 1, "{p} probes");
    }

    #[test]
    fn where_no_draft_can_pay_one_sentinel_is_probed() {
        // Sixteen requests, rows as dear as the step: only one of them is
        // probed, once per probe_every_hopeless steps, and always the same
        // one while it runs.
        let costs = Costs { fixed: 0.0, per_row: 0.01, per_level: 0.0, draft_round: 0.001 };
        let c = cfg(2);
        let mut accs: Vec<Acceptance> = vec![Acceptance::default(); 16];
        let mut probed = vec![0usize; 16];
        for _ in 0..512 {
            let d = {
                let reqs: Vec<Candidate> = accs.iter().map(|a| Candidate { acceptance: a, rows_per_level: 1.0, max_depth: 2 }).collect();
                choose(&c, costs, &accs[0], &reqs)
            };
            assert!(d.iter().filter(|&&x| x > 0).count() <= 1, "{d:?}");
            for ((a, &x), p) in accs.iter_mut().zip(&d).zip(probed.iter_mut()) {
                *p += usize::from(x > 0);
                a.observe(x, 0, c.decay);
            }
        }
        let total: usize = probed.iter().sum();
        assert!((6..=8).contains(&total), "{probed:?}");
        assert_eq!(probed.iter().filter(|&&p| p > 0).count(), 1, "{probed:?}");
    }

    #[test]
    fn a_calibration_slowed_at_start_up_is_unlearnt_from_a_few_probes() {
        // Calibrated while other workers loaded: 33 ms for one row, 90 ms
        // for nine (a row priced at 7.1 ms). The machine, idle now, takes
        // 9.8 ms for one row and 1.96 ms per further row.
        let mut m = CostModel::new([(1.0, 0.033), (9.0, 0.090)], 0.98);
        let true_time = |rows: usize| 0.00784 + 0.00196 * rows as f64;
        // A lone request at depth 0: one row a step. The steps say nothing
        // of the slope, so the prior's stays, and the intercept follows
        // what the steps take.
        for _ in 0..64 {
            m.observe(1, true_time(1), 0, 0.0);
        }
        let c = m.costs();
        assert!((c.per_row - 0.007125).abs() < 1e-4, "{c:?}");
        assert!((c.fixed + c.per_row - true_time(1)).abs() < 5e-4, "{c:?}");
        // One probe (two rows) in 64 steps is enough to bring the price of
        // a row within 1.5× of the truth, and a probe every 16 steps within
        // 15%.
        m.observe(2, true_time(2), 1, 0.001);
        for _ in 0..8 {
            m.observe(1, true_time(1), 0, 0.0);
        }
        let c = m.costs();
        assert!(c.per_row < 1.5 * 0.00196, "{c:?}");
        for i in 0..160 {
            if i % 16 == 0 {
                m.observe(2, true_time(2), 1, 0.001);
            } else {
                m.observe(1, true_time(1), 0, 0.0);
            }
        }
        let c = m.costs();
        assert!((c.per_row - 0.00196).abs() < 0.15 * 0.00196, "{c:?}");
        assert!((c.fixed - 0.00784).abs() < 0.1 * 0.00784, "{c:?}");
    }

    #[test]
    fn a_row_is_priced_where_the_batch_is() {
        // A CPU verify forward: the second row of a batch of one costs
        // 1.96 ms, rows added to a batch of sixteen or more 4 ms each.
        let t = |rows: usize| if rows <= 4 { 0.00784 + 0.00196 * rows as f64 } else { 0.004 * rows as f64 - 0.0082 };
        let mut m = CostModel::new([(1.0, 0.010), (9.0, 0.030)], 0.98);
        for i in 0..256 {
            let rows = if i % 3 == 0 { 1 + i % 2 } else { 16 + i % 9 };
            m.observe(rows, t(rows), 0, 0.0);
        }
        let lone = m.costs_at(1);
        let busy = m.costs_at(20);
        assert!((lone.per_row - 0.00196).abs() < 0.15 * 0.00196, "{lone:?}");
        assert!((busy.per_row - 0.004).abs() < 0.15 * 0.004, "{busy:?}");
        assert!((lone.fixed + lone.per_row - t(1)).abs() < 0.05 * t(1), "{lone:?}");
    }

    #[test]
    fn the_optimistic_rate_narrows_with_evidence() {
        let prior = Acceptance::default();
        let mut a = Acceptance::default();
        let fresh = a.optimistic_rate(0, &prior, 4.0);
        for i in 0..200 {
            a.observe(1, usize::from(i % 2 == 0), 1.0);
        }
        let known = a.optimistic_rate(0, &prior, 4.0);
        assert!(fresh > 0.9, "{fresh}");
        assert!(known > 0.5 && known < 0.6, "{known}");
        assert!(a.optimistic_rate(0, &prior, 4.0) >= a.rate(0, &prior, 4.0));
    }
}
