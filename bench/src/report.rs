//! Reports: a Markdown file and SVG plots in one directory, stating the
//! machine, the date, the commit and the exact command, so a figure in
//! `docs/benchmarks/` can be traced back to how it was made.
//!
//! Plots of a serve or compare run: stream tok/s by category (every server
//! and load), τ by category (speculative servers), and, when a baseline
//! server and more than one concurrency were run, the speedup over the
//! baseline against concurrency. A sweep adds one heat map per concurrency.

use crate::error::{BenchError, Result};
use crate::plot::{bar_chart, line_chart, Bars, Lines};
use crate::stats::Latency;
use crate::summary::Summary;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where and how a run was made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Meta {
    /// UTC, `YYYY-MM-DD HH:MM`.
    pub date: String,
    pub machine: String,
    pub commit: String,
    pub command: String,
}

impl Meta {
    /// This process's command line, this machine, now, and the git commit of
    /// the working directory (`AERIE_COMMIT` overrides; "unknown" without git).
    pub fn collect() -> Meta {
        let command = std::env::args().map(|a| if a.contains(' ') { format!("'{a}'") } else { a }).collect::<Vec<_>>().join(" ");
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git").args(args).output().ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        // A working tree with uncommitted changes to tracked files is not
        // the commit; say so.
        let commit = std::env::var("AERIE_COMMIT").ok().or_else(|| {
            let head = git(&["rev-parse", "--short", "HEAD"])?;
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            Some(if dirty { format!("{head} (with uncommitted changes)") } else { head })
        });
        Meta { date: utc_now(), machine: machine(), commit: commit.unwrap_or_else(|| "unknown".into()), command }
    }

    pub fn markdown(&self) -> String {
        format!("- Date: {} UTC\n- Machine: {}\n- Commit: {}\n- Command: `{}`\n", self.date, self.machine, self.commit, self.command)
    }
}

/// CPU model, cores and memory from /proc.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| t.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string())).unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem_gib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| t.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<f64>().ok())).map(|kb| kb / 1048576.0);
    match mem_gib {
        Some(m) => format!("{cpu}, {cores} cores, {m:.0} GiB"),
        None => format!("{cpu}, {cores} cores"),
    }
}

/// Now as `YYYY-MM-DD HH:MM` (UTC), from the civil-from-days algorithm.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format_utc(secs)
}

pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let (h, m) = ((secs % 86400) / 3600, (secs % 3600) / 60);
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (mo <= 2) as i64;
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}")
}

/// A figure with `digits` decimals, or a dash when there is none.
pub(crate) fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn lat(l: &Option<Latency>) -> String {
    l.map_or("–".into(), |l| format!("{:.0} / {:.0} / {:.0}", l.p50_ms, l.p90_ms, l.p99_ms))
}

/// The summary of `baseline` under the same load as `s`.
fn baseline_of<'a>(all: &'a [Summary], baseline: Option<&str>, s: &Summary) -> Option<&'a Summary> {
    all.iter().find(|b| Some(b.label.as_str()) == baseline && b.load == s.load)
}

/// Markdown tables of a serve/compare run: one row per server and load,
/// then per-category stream tok/s and τ for each load.
pub fn serve_markdown(summaries: &[Summary], baseline: Option<&str>) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "| server | load | requests (failed) | output tok/s | stream tok/s | speedup | TTFT p50/p90/p99 ms | ITL p50/p90/p99 ms | E2E p50/p90/p99 ms | τ | accept rate |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for s in summaries {
        let speedup = baseline_of(summaries, baseline, s).filter(|b| b.output_tok_s > 0.0).map(|b| s.output_tok_s / b.output_tok_s);
        let _ = writeln!(
            md,
            "| {} | {} | {} ({}) | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |",
            s.label,
            s.load,
            s.all.requests,
            s.all.failed,
            s.output_tok_s,
            s.all.stream_tok_s,
            opt(speedup, 2),
            lat(&s.all.ttft),
            lat(&s.all.itl),
            lat(&s.all.e2e),
            opt(s.all.tau, 2),
            opt(s.all.accept_rate, 2)
        );
    }
    let loads = unique_in_order(summaries.iter().map(|s| s.load.as_str()));
    for load in loads {
        let here: Vec<&Summary> = summaries.iter().filter(|s| s.load == load).collect();
        let cats: BTreeSet<&String> = here.iter().flat_map(|s| s.by_category.keys()).collect();
        let _ = writeln!(md, "\nBy category, {load} (stream tok/s, τ in brackets; ratios of stream tok/s):\n");
        let _ = write!(md, "| category |");
        for s in &here {
            let _ = write!(md, " {} |", s.label);
        }
        let base = here.iter().find(|s| Some(s.label.as_str()) == baseline);
        let others: Vec<&&Summary> = here.iter().filter(|s| base.is_some_and(|b| b.label != s.label)).collect();
        for s in &others {
            let _ = write!(md, " {} ÷ {} |", s.label, base.map_or("", |b| b.label.as_str()));
        }
        let _ = writeln!(md);
        let cols = here.len() + others.len();
        let _ = writeln!(md, "|---|{}", "---|".repeat(cols));
        for c in cats {
            let _ = write!(md, "| {c} |");
            for s in &here {
                let f = s.by_category.get(c);
                let _ = write!(md, " {} ({}) |", opt(f.map(|f| f.stream_tok_s), 1), opt(f.and_then(|f| f.tau), 2));
            }
            let bt = base.and_then(|b| b.by_category.get(c)).map(|f| f.stream_tok_s).filter(|&x| x > 0.0);
            for s in &others {
                let _ = write!(md, " {} |", opt(bt.and_then(|bt| s.by_category.get(c).map(|f| f.stream_tok_s / bt)), 2));
            }
            let _ = writeln!(md);
        }
    }
    md
}

/// `xs` without repeats, in first-seen order (loads keep the order they ran in).
fn unique_in_order<'a>(xs: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = Vec::new();
    for x in xs {
        if !v.contains(&x) {
            v.push(x);
        }
    }
    v
}

/// Writes `report.md` and the plots of a serve/compare run into `dir`;
/// returns the files written.
pub fn write_serve_report(dir: &Path, title: &str, meta: &Meta, summaries: &[Summary], baseline: Option<&str>, verdict: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut md = begin(dir, title, meta)?;
    md.push_str(&serve_markdown(summaries, baseline));
    let cats: Vec<String> = summaries.iter().flat_map(|s| s.by_category.keys().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
    let name = |s: &Summary| format!("{} ({})", s.label, s.load);

    let tok = Bars { title: "Stream tok/s by category".into(), y_label: "tok/s".into(), groups: cats.clone(), series: summaries.iter().map(|s| (name(s), cats.iter().map(|c| s.by_category.get(c).map(|f| f.stream_tok_s)).collect())).collect() };
    let p = dir.join("tok_s_by_category.svg");
    bar_chart(&p, &tok)?;
    md.push_str("\n![stream tok/s by category](tok_s_by_category.svg)\n");
    files.push(p);

    let spec: Vec<&Summary> = summaries.iter().filter(|s| s.all.tau.is_some()).collect();
    if !spec.is_empty() {
        let tau = Bars { title: "τ (tokens per verification round) by category".into(), y_label: "τ".into(), groups: cats.clone(), series: spec.iter().map(|s| (name(s), cats.iter().map(|c| s.by_category.get(c).and_then(|f| f.tau)).collect())).collect() };
        let p = dir.join("tau_by_category.svg");
        bar_chart(&p, &tau)?;
        md.push_str("\n![τ by category](tau_by_category.svg)\n");
        files.push(p);
    }

    if let Some(b) = baseline {
        let mut series = Vec::new();
        let labels = unique_in_order(summaries.iter().map(|s| s.label.as_str()).filter(|l| *l != b));
        for l in labels {
            let mine: Vec<&Summary> = summaries.iter().filter(|s| s.label == l && s.concurrency.is_some()).collect();
            let ratio = |s: &Summary, cat: Option<&str>| -> Option<(f64, f64)> {
                let base = baseline_of(summaries, baseline, s)?;
                let (x, y) = match cat {
                    None => (s.output_tok_s, base.output_tok_s),
                    Some(c) => (s.by_category.get(c)?.stream_tok_s, base.by_category.get(c)?.stream_tok_s),
                };
                (y > 0.0).then(|| (s.concurrency.unwrap_or(1) as f64, x / y))
            };
            series.push((format!("{l}: all"), mine.iter().filter_map(|s| ratio(s, None)).collect::<Vec<_>>()));
            for c in &cats {
                series.push((format!("{l}: {c}"), mine.iter().filter_map(|s| ratio(s, Some(c))).collect()));
            }
        }
        let points = series.iter().map(|s| s.1.len()).max().unwrap_or(0);
        if points > 1 {
            let p = dir.join("speedup_vs_concurrency.svg");
            line_chart(&p, &Lines { title: format!("Speedup over {b} against concurrency"), x_label: "concurrency".into(), y_label: "speedup".into(), series, reference_y: Some(1.0) })?;
            md.push_str("\n![speedup against concurrency](speedup_vs_concurrency.svg)\n");
            files.push(p);
        }
    }
    finish(dir, md, verdict, files)
}

/// Creates the report directory and returns the Markdown's title and
/// provenance lines.
pub(crate) fn begin(dir: &Path, title: &str, meta: &Meta) -> Result<String> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::io(dir, e))?;
    Ok(format!("# {title}\n\n{}\n", meta.markdown()))
}

/// Appends the verdict (if any), writes `report.md`, and returns every file
/// of the report.
pub(crate) fn finish(dir: &Path, mut md: String, verdict: &str, mut files: Vec<PathBuf>) -> Result<Vec<PathBuf>> {
    if !verdict.is_empty() {
        let _ = write!(md, "\n## Verdict\n\n{verdict}\n");
    }
    let p = dir.join("report.md");
    std::fs::write(&p, md).map_err(|e| BenchError::io(&p, e))?;
    files.push(p);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(format_utc(0), "1970-01-01 00:00");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(format_utc(1_795_401_000), "2026-11-23 02:30");
    }
}
