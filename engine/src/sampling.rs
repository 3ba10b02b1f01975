//! Turning logits into a token: greedy argmax, or sampling from the target
//! distribution after temperature, top-k, top-p and min-p.
//!
//! `target_probs` is the distribution every sampler here draws from; the
//! speculative verifier (which must preserve exactly this distribution) uses
//! the same function, so plain and speculative sampling agree by design.

use crate::grammar::Grammar;
use crate::processors::Processors;
use aerie_kernels::cpu::ops;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 1.0 disables nucleus filtering.
    pub top_p: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 0.0 disables min-p.
    pub min_p: f32,
    pub seed: Option<u64>,
    /// Penalties, bias and `min_tokens`, applied before argmax or sampling.
    pub processors: Processors,
    /// Report each emitted token's log-probability and this many top
    /// alternatives (OpenAI's `logprobs`/`top_logprobs`); `None` is off.
    pub logprobs: Option<usize>,
    /// Output constraint (JSON Schema, regex, grammar); `None` is free text.
    pub grammar: Option<Grammar>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_p: 1.0, top_k: 0, min_p: 0.0, seed: None, processors: Processors::default(), logprobs: None, grammar: None }
    }
}

impl SamplingParams {
    /// Temperature 0 or top-k 1; also a temperature so small that its
    /// reciprocal overflows f32, where scaled logits would be NaN.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1 || !(1.0 / self.temperature).is_finite()
    }

    /// Checks ranges; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!("temperature must be >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        Ok(())
    }
}

/// The sampling distribution over the vocabulary (zeros outside the kept set).
pub fn target_probs(logits: &[f32], p: &SamplingParams) -> Vec<f32> {
    let mut probs = vec![0.0f32; logits.len()];
    if p.is_greedy() {
        probs[ops::argmax(logits).0] = 1.0;
        return probs;
    }
    let inv_t = 1.0 / p.temperature;
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let k = if p.top_k > 0 { p.top_k.min(logits.len()) } else { logits.len() };
    // Sort descending by logit, ties by id, so the kept set is deterministic.
    let cmp = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_unstable_by(cmp);
    let max = logits[idx[0] as usize] * inv_t;
    let mut vals: Vec<f32> = idx.iter().map(|&i| (logits[i as usize] * inv_t - max).exp()).collect();
    let sum: f32 = vals.iter().sum();
    vals.iter_mut().for_each(|v| *v /= sum);
    let mut keep = vals.len();
    if p.top_p < 1.0 {
        let mut cum = 0.0;
        for (i, &v) in vals.iter().enumerate() {
            cum += v;
            if cum >= p.top_p {
                keep = i + 1;
                break;
            }
        }
    }
    if p.min_p > 0.0 {
        let floor = vals[0] * p.min_p;
        keep = keep.min(vals.iter().take_while(|&&v| v >= floor).count().max(1));
    }
    let sum: f32 = vals[..keep].iter().sum();
    for (&i, &v) in idx[..keep].iter().zip(&vals[..keep]) {
        probs[i as usize] = v / sum;
    }
    probs
}

/// A seeded random source for one request.
pub struct Sampler {
    rng: StdRng,
}

impl Sampler {
    pub fn new(seed: Option<u64>) -> Self {
        Sampler { rng: seed.map_or_else(StdRng::from_entropy, StdRng::seed_from_u64) }
    }

    /// A uniform draw in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        self.rng.gen::<f32>()
    }

    /// Draws an index from a probability vector (inverse CDF).
    pub fn draw(&mut self, probs: &[f32]) -> u32 {
        let u = self.uniform() * probs.iter().sum::<f32>();
        let mut cum = 0.0;
        let mut last = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                cum += p;
                last = i;
                if u < cum {
                    return i as u32;
                }
            }
        }
        last as u32
    }

    /// Picks the next token from logits.
    pub fn sample(&mut self, logits: &[f32], p: &SamplingParams) -> u32 {
        if p.is_greedy() {
            return ops::argmax(logits).0 as u32;
        }
        self.draw(&target_probs(logits, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temperature whose reciprocal overflows would scale logits to NaN:
    /// it samples greedily, on the CPU and the device alike.
    #[test]
    fn a_vanishing_temperature_is_greedy() {
        let p = SamplingParams { temperature: 1e-39, ..Default::default() };
        assert!(p.validate().is_ok() && p.is_greedy());
        assert!(!SamplingParams { temperature: 1e-30, ..Default::default() }.is_greedy());
        let logits = [0.5f32, 3.0, -1.0, 2.9];
        assert_eq!(target_probs(&logits, &p), vec![0.0, 1.0, 0.0, 0.0]);
    }
}
