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
//! probes of a large batch share one draft round.
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
    /// Steps a request may stay at depth 0 before it is probed at depth 1.
    pub probe_every: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig { max_depth: 1, prior_weight: 4.0, decay: 0.98, probe_every: 16 }
    }
}

/// A line `y = a + b·x` fitted by exponentially weighted least squares, held
/// near a prior line by two pseudo-points that never fade (so a run of
/// equal `x` cannot leave the slope undefined).
#[derive(Debug, Clone)]
struct Line {
    /// Σw, Σwx, Σwy, Σwxx, Σwxy of the observations.
    sums: [f64; 5],
    prior: [(f64, f64); 2],
    prior_weight: f64,
    decay: f64,
}

impl Line {
    fn new(prior: [(f64, f64); 2], prior_weight: f64, decay: f64) -> Line {
        Line { sums: [0.0; 5], prior, prior_weight, decay }
    }

    fn observe(&mut self, x: f64, y: f64) {
        if !(x.is_finite() && y.is_finite()) {
            return;
        }
        for s in &mut self.sums {
            *s *= self.decay;
        }
        let [w, sx, sy, sxx, sxy] = &mut self.sums;
        *w += 1.0;
        *sx += x;
        *sy += y;
        *sxx += x * x;
        *sxy += x * y;
    }

    /// (intercept, slope), both at least 0.
    fn fit(&self) -> (f64, f64) {
        let [mut w, mut sx, mut sy, mut sxx, mut sxy] = self.sums;
        for &(x, y) in &self.prior {
            w += self.prior_weight;
            sx += self.prior_weight * x;
            sy += self.prior_weight * y;
            sxx += self.prior_weight * x * x;
            sxy += self.prior_weight * x * y;
        }
        let var = w * sxx - sx * sx;
        let b = if var > 1e-12 { ((w * sxy - sx * sy) / var).max(0.0) } else { 0.0 };
        let a = ((sy - b * sx) / w).max(0.0);
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
        CostModel { verify: Line::new(verify_points, 0.5, decay), draft: Line::new([(0.0, 0.0), (1.0, 0.0)], 0.5, decay) }
    }

    /// Times two verify forwards of `model` (1 row, then 9 rows, after a
    /// 32-token context) for the prior; about as long as a 40-token prefill.
    pub fn calibrate(model: &Model, decay: f64) -> Result<CostModel> {
        let ctx: Vec<u32> = (0..32u32).map(|i| 100 + i).collect();
        let time = |rows: usize| -> Result<f64> {
            let mut best = f64::INFINITY;
            for _ in 0..2 {
                let mut cache = model.new_cache();
                model.forward(&mut [SeqInput { cache: &mut cache, tokens: &ctx, positions: None, mask: AttnMask::Causal, logits: LogitsRows::None }], &ForwardOptions::default())?;
                let toks = &ctx[..rows];
                let t = Instant::now();
                let opts = ForwardOptions { want_hidden: true, ..Default::default() };
                model.forward(&mut [SeqInput { cache: &mut cache, tokens: toks, positions: None, mask: AttnMask::Causal, logits: LogitsRows::Last }], &opts)?;
                best = best.min(t.elapsed().as_secs_f64());
            }
            Ok(best)
        };
        let one = time(1)?;
        let nine = time(9)?;
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

    pub fn costs(&self) -> Costs {
        let (va, vb) = self.verify.fit();
        let (da, db) = self.draft.fit();
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
    let due = reqs.iter().any(|r| probeable(r) && r.acceptance.idle_steps >= cfg.probe_every);
    if due {
        for (j, r) in reqs.iter().enumerate() {
            if probeable(r) && r.acceptance.idle_steps >= cfg.probe_every / 2 {
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
        let mut a = hopeless(1);
        let costs = Costs { fixed: 0.0, per_row: 0.01, per_level: 0.0, draft_round: 0.0 };
        let c = cfg(2);
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
        // apart, so their idle counts are staggered; verify rows are dear.
        let costs = Costs { fixed: 0.0, per_row: 0.01, per_level: 0.0, draft_round: 0.002 };
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
}
