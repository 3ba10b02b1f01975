//! When each request is sent.
//!
//! - Single stream and fixed concurrency need no schedule: C workers each
//!   send their next request as soon as their last one ends.
//! - A request rate R (requests/s) sends at Poisson arrival times: the gaps
//!   are independent exponentials with mean 1/R, drawn from a seeded RNG so
//!   a run can be repeated exactly. R = ∞ sends everything at once.

use rand::{Rng, SeedableRng};

/// Send times in seconds from the start for `n` requests at `rate`/s.
pub fn poisson_arrivals(n: usize, rate: f64, seed: u64) -> Vec<f64> {
    if !rate.is_finite() {
        return vec![0.0; n];
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut t = 0.0;
    (0..n)
        .map(|_| {
            // Inverse transform: U in (0, 1], so ln U is finite.
            let u: f64 = 1.0 - rng.gen::<f64>();
            t += -u.ln() / rate;
            t
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_gaps_are_exponential_with_the_asked_rate() {
        let n = 20_000;
        let ts = poisson_arrivals(n, 4.0, 7);
        assert_eq!(ts.len(), n);
        assert!(ts.windows(2).all(|w| w[1] >= w[0]));
        let gaps: Vec<f64> = std::iter::once(ts[0]).chain(ts.windows(2).map(|w| w[1] - w[0])).collect();
        let mean = gaps.iter().sum::<f64>() / n as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n as f64;
        // Mean 1/R = 0.25 s; an exponential's standard deviation equals its mean.
        assert!((mean - 0.25).abs() < 0.01, "mean gap {mean}");
        assert!((var.sqrt() / mean - 1.0).abs() < 0.05, "cv {}", var.sqrt() / mean);
        // P(gap > mean) = e^-1 for an exponential.
        let above = gaps.iter().filter(|&&g| g > 0.25).count() as f64 / n as f64;
        assert!((above - (-1f64).exp()).abs() < 0.02, "{above}");
        assert_eq!(poisson_arrivals(50, 4.0, 7), ts[..50].to_vec(), "same seed, same schedule");
        assert_ne!(poisson_arrivals(50, 4.0, 8), ts[..50].to_vec());
        assert_eq!(poisson_arrivals(3, f64::INFINITY, 1), vec![0.0; 3]);
    }
}
