//! Statistics over request records: percentiles, and τ (mean accepted
//! tokens per verification round) aggregated over requests.
//!
//! Percentiles interpolate linearly between order statistics (numpy's
//! default, which SGLang's `bench_serving` uses), so p50 of [1, 2, 3, 4] is
//! 2.5. τ over several requests weights each request by its number of
//! verification rounds: pooling rounds, not averaging per-request means,
//! keeps a short request from counting as much as a long one.

use serde::Serialize;

/// The p-th percentile (0 ≤ p ≤ 100) of `xs`, or `None` when empty.
pub fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = (p.clamp(0.0, 100.0) / 100.0) * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    Some(v[lo] + (v[hi] - v[lo]) * (rank - lo as f64))
}

/// Mean and the three percentiles every latency is reported with, in
/// milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

impl Latency {
    /// From samples in seconds; `None` when there are none.
    pub fn from_secs(xs: &[f64]) -> Option<Latency> {
        let ms = |p| percentile(xs, p).map(|s| s * 1e3);
        Some(Latency { mean_ms: xs.iter().sum::<f64>() / xs.len().max(1) as f64 * 1e3, p50_ms: ms(50.0)?, p90_ms: ms(90.0)?, p99_ms: ms(99.0)? })
    }
}

/// One request's speculation counters, as the usage extension reports them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpecCounters {
    /// Verification rounds.
    pub verify_ct: u64,
    /// Mean tokens committed per round (accepted drafts + the bonus token).
    pub accept_length: f64,
    /// Accepted drafts over drafts offered.
    pub accept_rate: f64,
}

/// Pooled τ and acceptance rate over requests, weighting by rounds; `None`
/// when no request reported a round (no speculation, or a server without
/// the extension).
pub fn pooled_acceptance(reqs: impl IntoIterator<Item = SpecCounters>) -> Option<(f64, f64)> {
    let (mut rounds, mut tokens, mut rate) = (0u64, 0f64, 0f64);
    for c in reqs {
        rounds += c.verify_ct;
        tokens += c.accept_length * c.verify_ct as f64;
        rate += c.accept_rate * c.verify_ct as f64;
    }
    (rounds > 0).then(|| (tokens / rounds as f64, rate / rounds as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_order_statistics() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[4.0, 1.0, 3.0, 2.0], 50.0), Some(2.5));
        assert_eq!(percentile(&[4.0, 1.0, 3.0, 2.0], 0.0), Some(1.0));
        assert_eq!(percentile(&[4.0, 1.0, 3.0, 2.0], 100.0), Some(4.0));
        let xs: Vec<f64> = (1..=101).map(f64::from).collect();
        assert_eq!(percentile(&xs, 90.0), Some(91.0));
        assert!((percentile(&xs, 99.5).unwrap() - 100.5).abs() < 1e-9);
        let l = Latency::from_secs(&[0.001, 0.002, 0.003]).unwrap();
        assert!((l.mean_ms - 2.0).abs() < 1e-9 && (l.p50_ms - 2.0).abs() < 1e-9 && (l.p99_ms - 2.98).abs() < 1e-9, "{l:?}");
        assert_eq!(Latency::from_secs(&[]), None);
    }

    #[test]
    fn tau_pools_rounds_rather_than_averaging_requests() {
        let long = SpecCounters { verify_ct: 90, accept_length: 2.0, accept_rate: 0.25 };
        let short = SpecCounters { verify_ct: 10, accept_length: 4.0, accept_rate: 0.75 };
        let (tau, rate) = pooled_acceptance([long, short]).unwrap();
        // (90*2 + 10*4) / 100, not (2 + 4) / 2.
        assert!((tau - 2.2).abs() < 1e-9, "{tau}");
        assert!((rate - 0.3).abs() < 1e-9, "{rate}");
        assert_eq!(pooled_acceptance([]), None);
        assert_eq!(pooled_acceptance([SpecCounters { verify_ct: 0, accept_length: 0.0, accept_rate: 0.0 }]), None);
    }
}
