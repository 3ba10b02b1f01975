//! `aerie bench sweep`: which speculative setting is fastest, per
//! concurrency (the counterpart of SGLang's `bench_speculative.py`).
//!
//! Strategy. The grid is steps × topk × draft tokens, plus the baseline
//! without speculation. Each setting gets a fresh local cluster (`aerie
//! serve` with the setting's flags and the sweep's pass-through arguments),
//! one warm-up request, then the same prompts at every concurrency of the
//! grid. Settings the tree cannot hold are skipped with the reason
//! (`TreeSpec::validate`: more draft tokens than topk + (steps-1)·topk²),
//! and so are chains (topk 1) whose token count is not steps + 1: a chain
//! verifies exactly steps + 1 tokens, so other counts repeat a point.
//! Each measured (setting, concurrency) is one JSONL line; the speedup is
//! over the baseline at the same concurrency.

use crate::dataset::Prompt;
use crate::error::{BenchError, Result};
use crate::plot::{heat_map, Heat};
use crate::runner::{run, Load, LoadSpec, Server};
use crate::summary::Summary;
use aerie_engine::spec::TreeSpec;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The grid; every list must be non-empty.
#[derive(Debug, Clone)]
pub struct Grid {
    pub concurrency: Vec<usize>,
    pub steps: Vec<usize>,
    pub topk: Vec<usize>,
    pub draft_tokens: Vec<usize>,
    /// Also measure the non-speculative baseline (needed for speedups).
    pub baseline: bool,
}

/// One cluster configuration of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Baseline,
    Tree(TreeSpec),
}

impl Setting {
    /// `aerie serve` flags for this setting.
    pub fn serve_args(&self) -> Vec<String> {
        match self {
            Setting::Baseline => vec!["--no-speculation".into()],
            Setting::Tree(t) => vec![
                "--speculative-num-steps".into(),
                t.num_steps.to_string(),
                "--speculative-eagle-topk".into(),
                t.topk.to_string(),
                "--speculative-num-draft-tokens".into(),
                t.num_draft_tokens.to_string(),
                // A fixed setting: `aerie serve` adapts budgets by default.
                "--speculative-adaptive".into(),
                "false".into(),
            ],
        }
    }

    pub fn label(&self) -> String {
        match self {
            Setting::Baseline => "baseline".into(),
            Setting::Tree(t) => format!("steps {} topk {} tokens {}", t.num_steps, t.topk, t.num_draft_tokens),
        }
    }
}

/// What a grid comes to.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The settings to run, baseline first.
    pub run: Vec<Setting>,
    /// The trees left out, with why.
    pub skipped: Vec<(TreeSpec, String)>,
}

/// The settings to run and the skipped ones.
pub fn settings(grid: &Grid) -> Result<Plan> {
    for (name, v) in [("concurrency", &grid.concurrency), ("steps", &grid.steps), ("topk", &grid.topk), ("draft tokens", &grid.draft_tokens)] {
        if v.is_empty() || v.contains(&0) {
            return Err(BenchError::Config(format!("sweep {name}: give one or more positive values")));
        }
    }
    let mut run = Vec::new();
    let mut skipped = Vec::new();
    if grid.baseline {
        run.push(Setting::Baseline);
    }
    for &num_steps in &grid.steps {
        for &topk in &grid.topk {
            for &num_draft_tokens in &grid.draft_tokens {
                let t = TreeSpec { num_steps, topk, num_draft_tokens };
                if let Err(e) = t.validate() {
                    skipped.push((t, e.to_string()));
                } else if topk == 1 && num_draft_tokens != num_steps + 1 {
                    skipped.push((t, format!("a chain of {num_steps} steps verifies {} tokens", num_steps + 1)));
                } else {
                    run.push(Setting::Tree(t));
                }
            }
        }
    }
    if !run.iter().any(|s| matches!(s, Setting::Tree(_))) && !grid.baseline {
        return Err(BenchError::Config("every point of the sweep grid is impossible".into()));
    }
    Ok(Plan { run, skipped })
}

/// One measured (setting, concurrency): a JSONL line of `bench sweep`.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    /// Always "sweep_point".
    #[serde(rename = "type")]
    pub kind: String,
    pub speculative: bool,
    pub steps: Option<usize>,
    pub topk: Option<usize>,
    pub draft_tokens: Option<usize>,
    pub concurrency: usize,
    pub output_tok_s: f64,
    pub stream_tok_s: f64,
    pub requests: usize,
    pub failed: usize,
    pub ttft_p50_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
    pub tau: Option<f64>,
    pub accept_rate: Option<f64>,
    /// output_tok_s over the baseline's at the same concurrency.
    pub speedup: Option<f64>,
}

impl SweepRow {
    fn of(setting: Setting, c: usize, s: &Summary) -> SweepRow {
        let t = match setting {
            Setting::Tree(t) => Some(t),
            Setting::Baseline => None,
        };
        SweepRow {
            kind: "sweep_point".into(),
            speculative: t.is_some(),
            steps: t.map(|t| t.num_steps),
            topk: t.map(|t| t.topk),
            draft_tokens: t.map(|t| t.num_draft_tokens),
            concurrency: c,
            output_tok_s: s.output_tok_s,
            stream_tok_s: s.all.stream_tok_s,
            requests: s.all.requests,
            failed: s.all.failed,
            ttft_p50_ms: s.all.ttft.map(|l| l.p50_ms),
            itl_p50_ms: s.all.itl.map(|l| l.p50_ms),
            tau: s.all.tau,
            accept_rate: s.all.accept_rate,
            speedup: None,
        }
    }

    /// The setting this row measured.
    pub fn setting(&self) -> Setting {
        match (self.steps, self.topk, self.draft_tokens) {
            (Some(num_steps), Some(topk), Some(num_draft_tokens)) => Setting::Tree(TreeSpec { num_steps, topk, num_draft_tokens }),
            _ => Setting::Baseline,
        }
    }
}

/// Fills every row's speedup from the baseline row at its concurrency.
pub fn fill_speedups(rows: &mut [SweepRow]) {
    let base: Vec<(usize, f64)> = rows.iter().filter(|r| !r.speculative && r.output_tok_s > 0.0).map(|r| (r.concurrency, r.output_tok_s)).collect();
    for r in rows.iter_mut() {
        r.speedup = base.iter().find(|b| b.0 == r.concurrency).map(|b| r.output_tok_s / b.1);
    }
}

/// The fastest row per concurrency (by output tok/s), in concurrency order.
pub fn best_per_concurrency(rows: &[SweepRow]) -> Vec<&SweepRow> {
    let mut cs: Vec<usize> = rows.iter().map(|r| r.concurrency).collect();
    cs.sort_unstable();
    cs.dedup();
    cs.into_iter().filter_map(|c| rows.iter().filter(|r| r.concurrency == c && r.failed == 0).max_by(|a, b| a.output_tok_s.total_cmp(&b.output_tok_s))).collect()
}

/// Starts a cluster for a setting; the launcher supplies it.
pub type StartCluster<'a> = dyn Fn(&Setting) -> Result<crate::servers::LocalServer> + 'a;

/// Runs the sweep; `on_row` sees each row as it is measured (for JSONL
/// output and progress). `model` is the name sent in requests (default:
/// the first the cluster lists). Returns all rows with speedups filled in.
pub fn run_sweep(grid: &Grid, prompts: &[Prompt], spec: &LoadSpec, model: Option<&str>, start: &StartCluster, on_row: &mut dyn FnMut(&SweepRow), on_request: &(dyn Fn(&crate::runner::RequestRecord) + Sync)) -> Result<Vec<SweepRow>> {
    let todo = settings(grid)?.run;
    let mut rows = Vec::new();
    for setting in todo {
        let cluster = start(&setting)?;
        let model = crate::runner::model_name(model, &cluster.base_url, None)?;
        let server = Server { label: setting.label(), base_url: cluster.base_url.clone(), api_key: None, model, extra: Default::default() };
        let warm = LoadSpec { max_tokens: 8, ..spec.clone() };
        let _ = run(&server, &prompts[..1.min(prompts.len())], &warm, &|_| {});
        for &c in &grid.concurrency {
            let load = LoadSpec { load: Load::Concurrency(c), ..spec.clone() };
            let out = run(&server, prompts, &load, on_request);
            let s = Summary::of(&server.label, load.load, &out.records, out.wall_s);
            let row = SweepRow::of(setting, c, &s);
            on_row(&row);
            rows.push(row);
        }
    }
    fill_speedups(&mut rows);
    Ok(rows)
}

/// Writes `report.md` (all rows, the best per concurrency, the skipped
/// settings) and one speedup heat map per concurrency into `dir`.
pub fn write_report(dir: &Path, meta: &crate::report::Meta, grid: &Grid, rows: &[SweepRow], verdict: &str) -> Result<Vec<PathBuf>> {
    let skipped = settings(grid)?.skipped;
    let mut files = Vec::new();
    let mut md = crate::report::begin(dir, "Speculative settings sweep", meta)?;
    let _ = writeln!(md, "| setting | concurrency | output tok/s | speedup | stream tok/s | τ | accept rate | TTFT p50 ms | ITL p50 ms | failed |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    let f = crate::report::opt;
    for r in rows {
        let _ = writeln!(md, "| {} | {} | {:.1} | {} | {:.1} | {} | {} | {} | {} | {} |", r.setting().label(), r.concurrency, r.output_tok_s, f(r.speedup, 2), r.stream_tok_s, f(r.tau, 2), f(r.accept_rate, 2), f(r.ttft_p50_ms, 0), f(r.itl_p50_ms, 1), r.failed);
    }
    let _ = writeln!(md, "\nBest per concurrency:\n");
    for r in best_per_concurrency(rows) {
        let _ = writeln!(md, "- concurrency {}: {} ({:.1} tok/s, speedup {})", r.concurrency, r.setting().label(), r.output_tok_s, f(r.speedup, 2));
    }
    if !skipped.is_empty() {
        let _ = writeln!(md, "\nSkipped:\n");
        for (t, why) in &skipped {
            let _ = writeln!(md, "- {}: {why}", Setting::Tree(*t).label());
        }
    }
    let spec_rows: Vec<&SweepRow> = rows.iter().filter(|r| r.speculative).collect();
    let mut steps: Vec<usize> = spec_rows.iter().filter_map(|r| r.steps).collect();
    steps.sort_unstable();
    steps.dedup();
    let mut shapes: Vec<(usize, usize)> = spec_rows.iter().filter_map(|r| Some((r.topk?, r.draft_tokens?))).collect();
    shapes.sort_unstable();
    shapes.dedup();
    let mut cs: Vec<usize> = rows.iter().map(|r| r.concurrency).collect();
    cs.sort_unstable();
    cs.dedup();
    if !spec_rows.is_empty() && rows.iter().any(|r| r.speedup.is_some()) {
        for c in cs {
            let values = shapes.iter().map(|&(k, n)| steps.iter().map(|&s| spec_rows.iter().find(|r| r.concurrency == c && r.steps == Some(s) && r.topk == Some(k) && r.draft_tokens == Some(n)).and_then(|r| r.speedup)).collect()).collect();
            let heat = Heat {
                title: format!("Speedup over no speculation, concurrency {c}"),
                x_label: "speculative-num-steps".into(),
                y_label: "topk / draft tokens".into(),
                xs: steps.iter().map(|s| s.to_string()).collect(),
                ys: shapes.iter().map(|(k, n)| format!("topk {k} / {n}")).collect(),
                values,
                value_label: "speedup".into(),
            };
            let p = dir.join(format!("sweep_heatmap_c{c}.svg"));
            heat_map(&p, &heat)?;
            let _ = writeln!(md, "\n![speedup heat map, concurrency {c}](sweep_heatmap_c{c}.svg)");
            files.push(p);
        }
    }
    crate::report::finish(dir, md, verdict, files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_skips_impossible_and_redundant_trees() {
        let grid = Grid { concurrency: vec![1, 4], steps: vec![1, 3], topk: vec![1, 4], draft_tokens: vec![2, 4, 8], baseline: true };
        let Plan { run, skipped } = settings(&grid).unwrap();
        let trees: Vec<(usize, usize, usize)> = run.iter().filter_map(|s| match s { Setting::Tree(t) => Some((t.num_steps, t.topk, t.num_draft_tokens)), _ => None }).collect();
        assert_eq!(run[0], Setting::Baseline);
        // steps 1 topk 4 holds at most 4 drafts + root = 5 tokens: 8 is impossible.
        assert_eq!(trees, vec![(1, 1, 2), (1, 4, 2), (1, 4, 4), (3, 1, 4), (3, 4, 2), (3, 4, 4), (3, 4, 8)]);
        assert_eq!(skipped.len(), 12 - trees.len());
        assert!(skipped.iter().any(|(t, why)| (t.num_steps, t.topk, t.num_draft_tokens) == (1, 4, 8) && why.contains("impossible")));
        assert!(skipped.iter().any(|(t, why)| (t.num_steps, t.topk, t.num_draft_tokens) == (3, 1, 2) && why.contains("chain")));
        assert!(settings(&Grid { steps: vec![], ..grid.clone() }).is_err());
        assert!(settings(&Grid { concurrency: vec![0], ..grid.clone() }).is_err());
        assert!(settings(&Grid { steps: vec![1], topk: vec![1], draft_tokens: vec![5], baseline: false, ..grid }).is_err());
        assert_eq!(Setting::Tree(TreeSpec { num_steps: 3, topk: 1, num_draft_tokens: 4 }).serve_args().join(" "), "--speculative-num-steps 3 --speculative-eagle-topk 1 --speculative-num-draft-tokens 4 --speculative-adaptive false");
    }

    #[test]
    fn speedups_are_over_the_baseline_at_the_same_concurrency_and_the_best_is_per_concurrency() {
        let row = |spec: bool, steps: usize, c: usize, tok: f64| SweepRow {
            kind: "sweep_point".into(),
            speculative: spec,
            steps: spec.then_some(steps),
            topk: spec.then_some(1),
            draft_tokens: spec.then_some(steps + 1),
            concurrency: c,
            output_tok_s: tok,
            stream_tok_s: tok,
            requests: 4,
            failed: 0,
            ttft_p50_ms: None,
            itl_p50_ms: None,
            tau: None,
            accept_rate: None,
            speedup: None,
        };
        let mut rows = vec![row(false, 0, 1, 50.0), row(false, 0, 8, 200.0), row(true, 3, 1, 75.0), row(true, 3, 8, 150.0), row(true, 5, 1, 60.0)];
        fill_speedups(&mut rows);
        assert_eq!(rows.iter().map(|r| r.speedup.unwrap()).collect::<Vec<_>>(), vec![1.0, 1.0, 1.5, 0.75, 1.2]);
        let best = best_per_concurrency(&rows);
        assert_eq!(best.iter().map(|r| (r.concurrency, r.setting().label())).collect::<Vec<_>>(), vec![(1, "steps 3 topk 1 tokens 4".to_string()), (8, "baseline".to_string())]);
    }
}
