//! Aggregates of one server's run, overall and per category: the
//! "summary" lines of `bench serve --output`.
//!
//! Two speeds are reported because they answer different questions:
//! `output_tok_s` is completion tokens over the run's wall time (what the
//! server delivers under this load), `stream_tok_s` is completion tokens
//! over the summed request times (what one user sees). Per category only
//! the second exists: categories share the wall clock.

use crate::runner::RequestRecord;
use crate::stats::{pooled_acceptance, Latency, SpecCounters};
use serde::Serialize;
use std::collections::BTreeMap;

/// Figures over a set of requests.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Figures {
    pub requests: usize,
    pub failed: usize,
    pub completion_tokens: u64,
    pub stream_tok_s: f64,
    pub ttft: Option<Latency>,
    pub itl: Option<Latency>,
    pub e2e: Option<Latency>,
    /// Pooled mean tokens per verification round; `None` without speculation.
    pub tau: Option<f64>,
    pub accept_rate: Option<f64>,
}

impl Figures {
    pub fn of<'a>(records: impl IntoIterator<Item = &'a RequestRecord>) -> Figures {
        let recs: Vec<&RequestRecord> = records.into_iter().collect();
        let ok: Vec<&&RequestRecord> = recs.iter().filter(|r| r.ok).collect();
        let tokens: u64 = ok.iter().map(|r| r.completion_tokens).sum();
        let busy: f64 = ok.iter().map(|r| r.e2e_s).sum();
        let ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft_s).collect();
        let itl: Vec<f64> = ok.iter().flat_map(|r| r.itl_s.iter().copied()).collect();
        let e2e: Vec<f64> = ok.iter().map(|r| r.e2e_s).collect();
        let spec = ok.iter().filter_map(|r| Some(SpecCounters { verify_ct: r.spec_verify_ct?, accept_length: r.spec_accept_length?, accept_rate: r.spec_accept_rate.unwrap_or(0.0) }));
        let acc = pooled_acceptance(spec);
        Figures {
            requests: recs.len(),
            failed: recs.len() - ok.len(),
            completion_tokens: tokens,
            stream_tok_s: if busy > 0.0 { tokens as f64 / busy } else { 0.0 },
            ttft: Latency::from_secs(&ttft),
            itl: Latency::from_secs(&itl),
            e2e: Latency::from_secs(&e2e),
            tau: acc.map(|a| a.0),
            accept_rate: acc.map(|a| a.1),
        }
    }
}

/// One server under one load.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Always "summary".
    #[serde(rename = "type")]
    pub kind: String,
    pub label: String,
    pub load: String,
    /// The concurrency, when the load was one (for speedup plots).
    pub concurrency: Option<usize>,
    pub wall_s: f64,
    pub output_tok_s: f64,
    pub requests_per_s: f64,
    #[serde(flatten)]
    pub all: Figures,
    pub by_category: BTreeMap<String, Figures>,
}

impl Summary {
    pub fn of(label: &str, load: crate::runner::Load, records: &[RequestRecord], wall_s: f64) -> Summary {
        let all = Figures::of(records);
        let mut cats: BTreeMap<String, Vec<&RequestRecord>> = BTreeMap::new();
        for r in records {
            cats.entry(r.category.clone()).or_default().push(r);
        }
        let wall = wall_s.max(1e-9);
        Summary {
            kind: "summary".into(),
            label: label.to_string(),
            load: load.to_string(),
            concurrency: match load {
                crate::runner::Load::Concurrency(c) => Some(c),
                crate::runner::Load::Rate(_) => None,
            },
            wall_s,
            output_tok_s: all.completion_tokens as f64 / wall,
            requests_per_s: (all.requests - all.failed) as f64 / wall,
            all,
            by_category: cats.into_iter().map(|(k, v)| (k, Figures::of(v))).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Load;

    fn rec(cat: &str, ok: bool, tokens: u64, e2e: f64, spec: Option<(u64, f64)>) -> RequestRecord {
        RequestRecord {
            kind: "request".into(),
            label: "x".into(),
            load: "concurrency 2".into(),
            prompt_id: "1".into(),
            category: cat.into(),
            ok,
            error: (!ok).then(|| "boom".into()),
            prompt_tokens: 5,
            completion_tokens: tokens,
            token_count_source: "usage".into(),
            sent_at_s: 0.0,
            ttft_s: Some(0.1),
            e2e_s: e2e,
            itl_s: vec![0.02; tokens.saturating_sub(1) as usize],
            finish_reason: Some("length".into()),
            spec_verify_ct: spec.map(|s| s.0),
            spec_accept_length: spec.map(|s| s.1),
            spec_accept_rate: spec.map(|_| 0.5),
            spec_mean_budget: None,
            text: String::new(),
        }
    }

    #[test]
    fn summaries_count_failures_apart_and_split_by_category() {
        let recs = vec![rec("a", true, 100, 2.0, Some((50, 2.0))), rec("a", false, 0, 0.5, None), rec("b", true, 50, 0.5, Some((10, 5.0)))];
        let s = Summary::of("x", Load::Concurrency(2), &recs, 2.0);
        assert_eq!((s.all.requests, s.all.failed, s.all.completion_tokens), (3, 1, 150));
        assert!((s.output_tok_s - 75.0).abs() < 1e-9);
        assert!((s.all.stream_tok_s - 60.0).abs() < 1e-9, "150 tokens over 2.5 busy seconds");
        assert!((s.requests_per_s - 1.0).abs() < 1e-9);
        assert!((s.all.tau.unwrap() - 150.0 / 60.0).abs() < 1e-9);
        assert_eq!(s.concurrency, Some(2));
        assert_eq!(s.by_category["a"].failed, 1);
        assert!((s.by_category["b"].stream_tok_s - 100.0).abs() < 1e-9);
        assert_eq!(s.by_category["b"].tau, Some(5.0));
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["type"], "summary");
        assert!(v["ttft"]["p99_ms"].is_number() && v["by_category"]["a"]["e2e"]["p50_ms"].is_number(), "{v}");
        let plain = Summary::of("p", Load::Rate(2.0), &[rec("a", true, 10, 1.0, None)], 1.0);
        assert_eq!((plain.all.tau, plain.concurrency), (None, None));
    }
}
