//! Routing policies: which healthy target worker gets a request.

pub mod least_load;
pub mod prefix_affinity;
pub mod round_robin;

use crate::worker::TargetHandle;
use std::sync::Arc;

/// Picks a target among healthy candidates (never empty when called).
pub trait RoutingPolicy: Send + Sync {
    /// The name used in flags and metric labels.
    fn name(&self) -> &'static str;
    /// Index into `candidates`.
    fn pick(&self, candidates: &[Arc<TargetHandle>], prompt: &[u32]) -> usize;
}

/// A policy by its flag name.
pub fn by_name(name: &str, prefix_tokens: usize) -> Result<Box<dyn RoutingPolicy>, String> {
    match name {
        "round_robin" => Ok(Box::new(round_robin::RoundRobin::default())),
        "least_load" => Ok(Box::new(least_load::LeastLoad)),
        "prefix_affinity" => Ok(Box::new(prefix_affinity::PrefixAffinity { prefix_tokens })),
        o => Err(format!("unknown routing policy `{o}` (round_robin, least_load, prefix_affinity)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::Worker;

    fn targets(n: usize) -> Vec<Arc<TargetHandle>> {
        (0..n).map(|i| TargetHandle::new(&format!("http://10.0.0.{i}:31000")).unwrap()).collect()
    }

    #[test]
    fn unknown_policy_names_are_refused_with_the_choices() {
        let e = by_name("random", 64).err().unwrap();
        assert!(e.contains("random") && e.contains("least_load"), "{e}");
        for n in ["round_robin", "least_load", "prefix_affinity"] {
            assert_eq!(by_name(n, 64).unwrap().name(), n);
        }
    }

    #[tokio::test]
    async fn round_robin_visits_every_candidate_in_turn() {
        let p = by_name("round_robin", 64).unwrap();
        let c = targets(3);
        let picks: Vec<usize> = (0..9).map(|_| p.pick(&c, &[1, 2])).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
        // The candidate set may shrink between calls: still in range.
        assert!(p.pick(&c[..1], &[]) == 0);
    }

    #[tokio::test]
    async fn least_load_follows_reported_and_in_flight_load() {
        let p = by_name("least_load", 64).unwrap();
        let c = targets(3);
        assert_eq!(p.pick(&c, &[]), 0, "ties go to the first");
        c[0].record_probe(String::new(), 5, true);
        c[1].record_probe(String::new(), 2, true);
        c[2].record_probe(String::new(), 3, true);
        assert_eq!(p.pick(&c, &[]), 1);
        // Requests this router sent count until they finish.
        let g1 = c[1].track();
        let g2 = c[1].track();
        assert_eq!(c[1].load(), 4);
        assert_eq!(p.pick(&c, &[]), 2);
        drop((g1, g2));
        assert_eq!(p.pick(&c, &[]), 1);
    }

    #[tokio::test]
    async fn prefix_affinity_keeps_a_shared_prefix_on_one_target_and_spreads_others() {
        let p = by_name("prefix_affinity", 4).unwrap();
        let c = targets(4);
        // Same first 4 tokens, different tails: same target.
        let a = p.pick(&c, &[7, 8, 9, 10, 1, 2, 3]);
        assert_eq!(p.pick(&c, &[7, 8, 9, 10, 99]), a);
        assert_eq!(p.pick(&c, &[7, 8, 9, 10]), a);
        // Many distinct prefixes use every target.
        let mut used = [0usize; 4];
        for k in 0..400u32 {
            used[p.pick(&c, &[k, k + 1, k + 2, k + 3])] += 1;
        }
        assert!(used.iter().all(|&n| n > 40), "uneven spread: {used:?}");
        // Rendezvous hashing: removing a target moves only its own prefixes.
        let survivors: Vec<Arc<TargetHandle>> = c.iter().enumerate().filter(|(i, _)| *i != 3).map(|(_, t)| t.clone()).collect();
        for k in 0..400u32 {
            let prompt = [k, k + 1, k + 2, k + 3];
            let before = c[p.pick(&c, &prompt)].addr().to_string();
            let after = survivors[p.pick(&survivors, &prompt)].addr().to_string();
            if before != c[3].addr() {
                assert_eq!(before, after, "prefix {k} moved although its target stayed");
            }
        }
        // Deterministic across policy instances (every router agrees).
        let q = by_name("prefix_affinity", 4).unwrap();
        assert_eq!(q.pick(&c, &[7, 8, 9, 10]), a);
    }
}
