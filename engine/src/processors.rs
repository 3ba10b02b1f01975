//! Logits processors: `logit_bias`, `min_tokens`, and the repetition,
//! frequency and presence penalties, applied to the target's raw logits
//! before greedy argmax or sampling.
//!
//! Strategy. A processor depends on what was generated before the token
//! being chosen. Plain decoding knows that history; speculative
//! verification scores a whole tree at once, so each node's logits are
//! processed with the history *as it would stand after the node's own
//! path*: the committed output plus the node's ancestors in the tree
//! ([`History::with_path`]). Processing is a pure function of (raw logits,
//! history), so verification sees at every node exactly the distribution
//! plain decoding would see after the same tokens, and greedy output and
//! the sampled distribution stay those of plain decoding.
//!
//! Semantics follow OpenAI and vLLM: `frequency_penalty` subtracts
//! `penalty × count` and `presence_penalty` subtracts `penalty` once, over
//! the generated tokens only; `repetition_penalty` (vLLM/SGLang) divides a
//! positive logit or multiplies a negative one for every token seen in the
//! prompt or the output; `min_tokens` forbids the stop tokens until that
//! many tokens were generated. Order: bias, min_tokens, repetition,
//! frequency/presence.

use std::collections::{HashMap, HashSet};

/// What the processors do; all default to off.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Processors {
    /// OpenAI `presence_penalty`, in [-2, 2].
    pub presence_penalty: f32,
    /// OpenAI `frequency_penalty`, in [-2, 2].
    pub frequency_penalty: f32,
    /// vLLM/SGLang `repetition_penalty`, > 0; 1 (or 0, meaning unset) is off.
    pub repetition_penalty: f32,
    /// OpenAI `logit_bias`: added to the token's logit.
    pub logit_bias: Vec<(u32, f32)>,
    /// Stop tokens are forbidden until this many tokens were generated.
    pub min_tokens: usize,
}

impl Processors {
    pub fn is_noop(&self) -> bool {
        self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
            && !self.repeats()
            && self.logit_bias.is_empty()
            && self.min_tokens == 0
    }

    fn repeats(&self) -> bool {
        self.repetition_penalty != 0.0 && self.repetition_penalty != 1.0
    }

    pub fn validate(&self, vocab: usize) -> Result<(), String> {
        for (name, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if !v.is_finite() || !(-2.0..=2.0).contains(&v) {
                return Err(format!("{name} must be between -2 and 2, got {v}"));
            }
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty < 0.0 || self.repetition_penalty > 2.0 {
            return Err(format!("repetition_penalty must be in (0, 2], got {}", self.repetition_penalty));
        }
        for &(t, b) in &self.logit_bias {
            if t as usize >= vocab {
                return Err(format!("logit_bias names token {t}, outside the vocabulary of {vocab}"));
            }
            if !b.is_finite() || !(-100.0..=100.0).contains(&b) {
                return Err(format!("logit_bias values must be between -100 and 100, got {b} for token {t}"));
            }
        }
        Ok(())
    }
}

/// The tokens the processors look at: the prompt (for the repetition
/// penalty) and the generated output, kept as counts.
#[derive(Debug, Clone, Default)]
pub struct History {
    prompt: HashSet<u32>,
    output: HashMap<u32, u32>,
    generated: usize,
}

impl History {
    pub fn new(prompt: &[u32]) -> Self {
        History { prompt: prompt.iter().copied().collect(), output: HashMap::new(), generated: 0 }
    }

    /// Records a generated token.
    pub fn push(&mut self, tok: u32) {
        *self.output.entry(tok).or_default() += 1;
        self.generated += 1;
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// This history extended by `path` (a tree node's ancestors, root's
    /// child first), without copying the committed counts.
    pub fn with_path<'a>(&'a self, path: &'a [u32]) -> PathHistory<'a> {
        PathHistory { base: self, path }
    }
}

/// A [`History`] plus the tokens of one tree path.
pub struct PathHistory<'a> {
    base: &'a History,
    path: &'a [u32],
}

impl PathHistory<'_> {
    #[cfg(test)]
    fn count(&self, tok: u32) -> u32 {
        self.base.output.get(&tok).copied().unwrap_or(0) + self.path.iter().filter(|&&t| t == tok).count() as u32
    }

    fn generated(&self) -> usize {
        self.base.generated + self.path.len()
    }

    /// Every distinct generated token with its count.
    fn output_counts(&self) -> HashMap<u32, u32> {
        let mut c = self.base.output.clone();
        for &t in self.path {
            *c.entry(t).or_default() += 1;
        }
        c
    }
}

/// Applies `p` to `logits` in place, for the next token after `h`.
/// `stop_ids` are the tokens `min_tokens` holds back.
pub fn apply(logits: &mut [f32], p: &Processors, h: &PathHistory, stop_ids: &[u32]) {
    if p.is_noop() {
        return;
    }
    for &(t, b) in &p.logit_bias {
        if let Some(l) = logits.get_mut(t as usize) {
            *l += b;
        }
    }
    if h.generated() < p.min_tokens {
        for &t in stop_ids {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    if p.repeats() {
        let counts = h.output_counts();
        let seen = h.base.prompt.iter().chain(counts.keys());
        let mut done = HashSet::new();
        for &t in seen {
            if !done.insert(t) {
                continue;
            }
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
            }
        }
    }
    if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
        let counts = if h.path.is_empty() { None } else { Some(h.output_counts()) };
        let counts = counts.as_ref().unwrap_or(&h.base.output);
        for (&t, &c) in counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= p.frequency_penalty * c as f32 + p.presence_penalty;
            }
        }
    }
}

/// A token's log-probability under the raw (unprocessed) logits, with the
/// `top` most likely tokens: what OpenAI's `logprobs` report.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// Most likely tokens first (ties by id), `top_logprobs` of them.
    pub top: Vec<(u32, f32)>,
}

/// The log-softmax of `logits` at `token`, plus the `top` best.
pub fn logprob_of(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Summed in f64 so the value does not depend on summation order beyond
    // what f32 rounding of each term already fixes.
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_z = max as f64 + sum.ln();
    let lp = |t: u32| (logits[t as usize] as f64 - log_z) as f32;
    let mut best = Vec::new();
    if top > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let cmp = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
        let k = top.min(idx.len());
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
        idx.sort_unstable_by(cmp);
        best = idx.into_iter().map(|t| (t, lp(t))).collect();
    }
    TokenLogprob { token, logprob: lp(token), top: best }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_count_the_path_as_generated_output() {
        let p = Processors { frequency_penalty: 0.5, presence_penalty: 0.25, ..Default::default() };
        let mut h = History::new(&[9]);
        h.push(1);
        let mut a = vec![1.0f32; 4];
        apply(&mut a, &p, &h.with_path(&[1, 2]), &[]);
        // token 1: twice (once committed, once on the path); token 2 once.
        assert_eq!(a, vec![1.0, 1.0 - 1.0 - 0.25, 1.0 - 0.5 - 0.25, 1.0]);
        // The same as committing the path first.
        let mut h2 = h.clone();
        h2.push(1);
        h2.push(2);
        let mut b = vec![1.0f32; 4];
        apply(&mut b, &p, &h2.with_path(&[]), &[]);
        assert_eq!(a, b);
        assert_eq!(h.with_path(&[1, 2]).count(1), 2);
    }

    #[test]
    fn repetition_divides_positive_and_multiplies_negative_logits_of_prompt_and_output() {
        let p = Processors { repetition_penalty: 2.0, ..Default::default() };
        let mut h = History::new(&[0]);
        h.push(1);
        let mut a = vec![4.0f32, -4.0, 4.0];
        apply(&mut a, &p, &h.with_path(&[]), &[]);
        assert_eq!(a, vec![2.0, -8.0, 4.0]);
    }

    #[test]
    fn min_tokens_holds_back_stop_tokens_and_bias_adds() {
        let p = Processors { min_tokens: 2, logit_bias: vec![(0, 3.0)], ..Default::default() };
        let h = History::new(&[]);
        let mut a = vec![0.0f32; 3];
        apply(&mut a, &p, &h.with_path(&[5]), &[2]);
        assert_eq!(a, vec![3.0, 0.0, f32::NEG_INFINITY]);
        let mut b = vec![0.0f32; 3];
        apply(&mut b, &p, &h.with_path(&[5, 5]), &[2]);
        assert_eq!(b, vec![3.0, 0.0, 0.0]);
    }

    #[test]
    fn logprobs_are_a_log_softmax_with_sorted_tops() {
        let l = [1.0f32, 3.0, 2.0, 3.0];
        let r = logprob_of(&l, 2, 3);
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        assert!((r.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(r.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        assert!(logprob_of(&l, 0, 0).top.is_empty());
    }

    #[test]
    fn validation_names_the_field() {
        let bad = Processors { presence_penalty: 3.0, ..Default::default() };
        assert!(bad.validate(10).unwrap_err().contains("presence_penalty"));
        let bad = Processors { logit_bias: vec![(10, 1.0)], ..Default::default() };
        assert!(bad.validate(10).unwrap_err().contains("token 10"));
    }
}
