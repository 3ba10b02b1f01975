//! `aerie bench` against real local clusters: the JSONL schema, the
//! report, greedy equality between the speculative and the plain server,
//! and a 2-point sweep.

use crate::common;

use serde_json::Value;
use std::process::Command;

fn aerie_bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aerie")).args(["--threads", "1", "bench"]).args(args).output().unwrap()
}

fn jsonl(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

fn svg(path: &std::path::Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"), "{}", path.display());
    s
}

#[test]
fn bench_serve_measures_two_servers_interleaved_and_writes_records_summaries_and_a_report() {
    let _g = common::serial();
    let eagle = common::serve(&[]);
    let plain = common::serve(&["--no-speculation"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run.jsonl");
    let report = dir.path().join("report");
    let o = aerie_bench(&[
        "serve",
        "--base-url",
        &format!("eagle=http://{}/v1", eagle.addr),
        "--base-url",
        &format!("plain=http://{}", plain.addr), // no /v1, as SGLang's bench_serving passes it
        "--baseline",
        "plain",
        "--dataset",
        "categories",
        "--num-prompts",
        "3",
        "--max-tokens",
        "16",
        "--concurrency",
        "1,2",
        "--output",
        out.to_str().unwrap(),
        "--report-dir",
        report.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("| eagle | concurrency 1 |") && stdout.contains("| plain | concurrency 2 |"), "{stdout}");

    let lines = jsonl(&out);
    let reqs: Vec<&Value> = lines.iter().filter(|v| v["type"] == "request").collect();
    let sums: Vec<&Value> = lines.iter().filter(|v| v["type"] == "summary").collect();
    assert_eq!((reqs.len(), sums.len()), (3 * 2 * 2, 2 * 2), "3 prompts x 2 servers x 2 loads");
    for r in &reqs {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["token_count_source"], "usage", "{r}");
        let (n, ttft, e2e) = (r["completion_tokens"].as_u64().unwrap(), r["ttft_s"].as_f64().unwrap(), r["e2e_s"].as_f64().unwrap());
        assert!(n > 0 && n <= 16 && ttft > 0.0 && ttft <= e2e, "{r}");
        assert!(["predictable", "semi-predictable", "creative"].contains(&r["category"].as_str().unwrap()), "{r}");
        let spec = r["spec_verify_ct"].as_u64();
        if r["label"] == "eagle" {
            assert!(spec.is_some_and(|c| c > 0 && c <= n) && r["spec_accept_length"].as_f64().unwrap() >= 1.0, "{r}");
        } else {
            assert_eq!(spec, None, "{r}");
        }
    }
    // Lossless: greedy text is the same with and without speculation.
    for r in reqs.iter().filter(|r| r["label"] == "eagle") {
        let twin = reqs.iter().find(|p| p["label"] == "plain" && p["prompt_id"] == r["prompt_id"] && p["load"] == r["load"]).unwrap();
        assert_eq!(r["text"], twin["text"], "{}", r["prompt_id"]);
    }
    for s in &sums {
        assert_eq!((s["requests"].as_u64(), s["failed"].as_u64()), (Some(3), Some(0)), "{s}");
        assert!(s["output_tok_s"].as_f64().unwrap() > 0.0 && s["e2e"]["p99_ms"].as_f64().unwrap() > 0.0, "{s}");
        assert_eq!(s["by_category"].as_object().unwrap().len(), 3, "{s}");
        assert_eq!(s["tau"].is_number(), s["label"] == "eagle", "{s}");
    }

    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    for needle in ["Machine:", "Commit:", "Command: `", "bench serve", "| server | load |", "By category, concurrency 2", "| eagle ÷ plain |", "tok_s_by_category.svg", "speedup_vs_concurrency.svg"] {
        assert!(md.contains(needle), "{needle} missing from\n{md}");
    }
    assert!(svg(&report.join("tok_s_by_category.svg")).contains("predictable"));
    assert!(svg(&report.join("tau_by_category.svg")).contains("eagle"));
    assert!(svg(&report.join("speedup_vs_concurrency.svg")).contains("concurrency"));

    // Poisson arrivals: every request is sent at its scheduled time, not
    // before, and the summary names the rate.
    let out = dir.path().join("rate.jsonl");
    let o = aerie_bench(&["serve", "--base-url", &format!("http://{}/v1", eagle.addr), "--dataset", "categories", "--num-prompts", "4", "--max-tokens", "8", "--request-rate", "4", "--seed", "3", "--output", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = jsonl(&out);
    let sent: Vec<f64> = lines.iter().filter(|v| v["type"] == "request").map(|v| v["sent_at_s"].as_f64().unwrap()).collect();
    let planned = aerie_bench_schedule(4, 4.0, 3);
    assert_eq!(sent.len(), 4);
    for (s, p) in sent.iter().zip(&planned) {
        assert!(s >= p && *s < p + 0.5, "sent at {s}, scheduled at {p}");
    }
    assert!(lines.iter().any(|v| v["type"] == "summary" && v["load"] == "rate 4/s" && v["failed"] == 0));
}

/// The schedule `bench serve --request-rate R --seed S` uses (the same code).
fn aerie_bench_schedule(n: usize, rate: f64, seed: u64) -> Vec<f64> {
    aerie_bench::schedule::poisson_arrivals(n, rate, seed)
}

#[test]
fn a_two_point_sweep_starts_its_own_clusters_and_names_the_best_setting() {
    let _g = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep.jsonl");
    let report = dir.path().join("sweep");
    let o = aerie_bench(&[
        "sweep", "--steps", "1", "--topk", "1", "--draft-tokens", "2,3", "--dataset", "categories", "--num-prompts", "2", "--max-tokens", "12", "--output", out.to_str().unwrap(), "--report-dir", report.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    // steps 1 topk 1 holds one draft: 3 tokens is impossible, and said so.
    assert!(stderr.contains("skipping steps 1 topk 1 tokens 3"), "{stderr}");
    let rows = jsonl(&out);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r["type"] == "sweep_point" && r["concurrency"] == 1 && r["failed"] == 0 && r["output_tok_s"].as_f64().unwrap() > 0.0));
    let base = rows.iter().find(|r| r["speculative"] == false).unwrap();
    let spec = rows.iter().find(|r| r["speculative"] == true).unwrap();
    assert_eq!(base["speedup"].as_f64(), Some(1.0));
    assert_eq!((spec["steps"].as_u64(), spec["topk"].as_u64(), spec["draft_tokens"].as_u64()), (Some(1), Some(1), Some(2)));
    assert!(spec["tau"].as_f64().unwrap() >= 1.0 && spec["speedup"].as_f64().unwrap() > 0.0, "{spec}");
    assert!(stdout.contains("Best per concurrency:") && stdout.contains("concurrency 1: "), "{stdout}");
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("| steps 1 topk 1 tokens 2 | 1 |") && md.contains("| baseline | 1 |") && md.contains("Skipped:"), "{md}");
    assert!(svg(&report.join("sweep_heatmap_c1.svg")).contains("Speedup"));
}

#[test]
fn bench_refuses_remote_servers_and_bad_settings_before_sending_anything() {
    let o = aerie_bench(&["serve", "--base-url", "http://10.1.2.3:30000/v1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("loopback"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = aerie_bench(&["serve", "--base-url", "http://127.0.0.1:1/v1", "--concurrency", "0"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--concurrency must be positive"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = aerie_bench(&["sweep", "--steps", "1", "--topk", "1", "--draft-tokens", "5", "--no-baseline"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("every point of the sweep grid is impossible"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = aerie_bench(&["serve", "--base-url", "http://127.0.0.1:1/v1", "--model", "m", "--dataset", "/no/such.jsonl"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a known dataset"), "{}", String::from_utf8_lossy(&o.stderr));
}
