//! `aerie bench serve | sweep | compare | forward`: the CLI over
//! `aerie-bench` (`forward`, the forward pass alone, is in
//! `bench_forward.rs`).
//!
//! - `serve` measures running servers (one or more `--base-url`s,
//!   interleaved when several);
//! - `sweep` starts a fresh local cluster per speculative setting;
//! - `compare` starts Aerie (with and without speculation) and llama.cpp's
//!   server on the same GGUF, installing the peer on demand.
//!
//! All write per-request JSONL (`--output`) and, with `--report-dir`, a
//! Markdown report with SVG plots.

use aerie_bench::dataset::{self, Prompt};
use aerie_bench::report::{write_serve_report, Meta};
use aerie_bench::runner::{require_loopback, run_interleaved, model_name, Load, LoadSpec, RequestRecord, Server};
use aerie_bench::servers::{llama_cpp_python, start_aerie, start_llama_cpp, LocalServer};
use aerie_bench::summary::Summary;
use aerie_bench::sweep::{self, Grid, Setting, SweepRow};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    cmd: BenchCmd,
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Measure running OpenAI-compatible servers (loopback only).
    Serve(ServeBenchArgs),
    /// Sweep speculative settings (steps × topk × draft tokens, plus the
    /// baseline), each on a fresh local cluster.
    Sweep(SweepArgs),
    /// Aerie against llama.cpp's OpenAI server on the same GGUF, interleaved.
    Compare(CompareArgs),
    /// The forward pass alone on a device: prefill, batch-1 decode and the
    /// verify cost curve (optionally on random weights of any shape).
    Forward(crate::bench_forward::ForwardBenchArgs),
    /// The shared-memory all-reduce of a tensor-parallel group: latency and
    /// bandwidth by message size, ranks as processes.
    Collective(crate::bench_collective::CollectiveBenchArgs),
    /// Tensor-parallel decoding (f32 path) over rank processes against the
    /// unsharded model on the same cores.
    Tp(crate::bench_tp::TpBenchArgs),
    /// The per-step hand-off of hidden features to a draft process, by
    /// transport (inline, shared memory, CUDA IPC) and rows.
    Features(crate::bench_features::FeaturesBenchArgs),
}

/// The workload, shared by every subcommand.
#[derive(Args, Debug, Clone)]
struct Workload {
    /// mt-bench, sharegpt, categories, or a JSONL file with `turns` or `prompt`.
    #[arg(long, default_value = "mt-bench")]
    dataset: String,
    /// Prompts to send (evenly spaced over the dataset).
    #[arg(long, default_value_t = 16)]
    num_prompts: usize,
    /// Completion tokens per request.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Closed-loop concurrency; a comma list runs each in turn (1 = single stream).
    #[arg(long, value_delimiter = ',', default_value = "1", conflicts_with = "request_rate")]
    concurrency: Vec<usize>,
    /// Poisson arrivals at this many requests/s instead of a concurrency (`inf`: all at once).
    #[arg(long)]
    request_rate: Option<f64>,
    /// No request starts after this many seconds (per server and load).
    #[arg(long)]
    time_limit_secs: Option<u64>,
    /// One request's longest time, seconds.
    #[arg(long, default_value_t = 300)]
    request_timeout_secs: u64,
    /// Seed of the Poisson schedule.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Model name sent in requests (default: the first of the server's /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// Write one JSON line per request (and per summary or sweep point) here.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Write report.md and SVG plots into this directory.
    #[arg(long)]
    report_dir: Option<PathBuf>,
    /// A Markdown file whose text ends the report as its verdict.
    #[arg(long)]
    verdict: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ServeBenchArgs {
    /// A server as `URL` or `LABEL=URL` (`http://host:port`, with or without `/v1`); repeat to compare several.
    #[arg(long, required = true)]
    base_url: Vec<String>,
    #[arg(long, env = "AERIE_API_KEY")]
    api_key: Option<String>,
    /// The label speedups are computed against.
    #[arg(long)]
    baseline: Option<String>,
    /// Extra request-body fields for one server, as `LABEL=JSON` (a JSON
    /// object merged into each of its requests, e.g. a `response_format`);
    /// repeat for several. The same URL may appear under two labels to
    /// compare request settings on one server.
    #[arg(long)]
    extra_body: Vec<String>,
    #[command(flatten)]
    workload: Workload,
}

#[derive(Args, Debug)]
struct SweepArgs {
    #[arg(long, value_delimiter = ',', default_value = "1,3,5")]
    steps: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    topk: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "2,4,8")]
    draft_tokens: Vec<usize>,
    /// Skip the non-speculative baseline (no speedups then).
    #[arg(long)]
    no_baseline: bool,
    #[command(flatten)]
    local: LocalServers,
    #[command(flatten)]
    workload: Workload,
}

/// How `sweep` and `compare` start their own servers.
#[derive(Args, Debug)]
struct LocalServers {
    /// An extra `aerie serve` argument for every Aerie cluster started (repeat; e.g. `--serve-arg=--max-running-requests=8`).
    #[arg(long, allow_hyphen_values = true)]
    serve_arg: Vec<String>,
    /// Longest wait for a started server to become ready, seconds.
    #[arg(long, default_value_t = 600)]
    startup_timeout_secs: u64,
    /// Show the started servers' logs.
    #[arg(long)]
    verbose: bool,
}

impl LocalServers {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.startup_timeout_secs)
    }
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// The GGUF both servers load (`smollm2` or a path).
    #[arg(long, default_value = "smollm2")]
    model_path: String,
    /// Leave out Aerie without speculation.
    #[arg(long)]
    no_plain: bool,
    /// Fail instead of installing the peer when it is missing.
    #[arg(long)]
    no_install_peer: bool,
    #[command(flatten)]
    local: LocalServers,
    #[command(flatten)]
    workload: Workload,
}

impl Workload {
    fn loads(&self) -> Result<Vec<Load>> {
        if let Some(r) = self.request_rate {
            if r.is_nan() || r <= 0.0 {
                bail!("--request-rate must be positive");
            }
            return Ok(vec![Load::Rate(r)]);
        }
        if self.concurrency.is_empty() || self.concurrency.contains(&0) {
            bail!("--concurrency must be positive");
        }
        Ok(self.concurrency.iter().map(|&c| Load::Concurrency(c)).collect())
    }

    fn spec(&self, load: Load) -> LoadSpec {
        LoadSpec { load, max_tokens: self.max_tokens, temperature: self.temperature, time_limit: self.time_limit_secs.map(Duration::from_secs), timeout: Duration::from_secs(self.request_timeout_secs), seed: self.seed }
    }

    fn prompts(&self) -> Result<Vec<Prompt>> {
        if self.num_prompts == 0 || self.max_tokens == 0 {
            bail!("--num-prompts and --max-tokens must be positive");
        }
        Ok(dataset::load(&self.dataset, self.num_prompts)?)
    }

    fn verdict(&self) -> Result<String> {
        self.verdict.as_ref().map_or(Ok(String::new()), |p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
    }
}

/// Appends JSON lines to `--output`, if given.
struct Jsonl(Option<std::fs::File>);

impl Jsonl {
    fn open(path: &Option<PathBuf>) -> Result<Jsonl> {
        let Some(p) = path else { return Ok(Jsonl(None)) };
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(Jsonl(Some(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)))
    }

    fn write(&mut self, v: &impl serde::Serialize) -> Result<()> {
        if let Some(f) = &mut self.0 {
            writeln!(f, "{}", serde_json::to_string(v)?)?;
        }
        Ok(())
    }
}

fn progress(total: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total as u64);
    pb.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} requests, {elapsed}").unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "));
    pb.set_message(what.to_string());
    pb
}

/// Runs every load over the servers, interleaved; writes records and
/// summaries; prints and returns the summaries.
fn measure(servers: &[Server], prompts: &[Prompt], w: &Workload, out: &mut Jsonl) -> Result<Vec<Summary>> {
    let loads = w.loads()?;
    let pb = progress(prompts.len() * servers.len() * loads.len(), "bench");
    let mut summaries = Vec::new();
    for load in loads {
        pb.set_message(load.to_string());
        let spec = w.spec(load);
        // Warm-up: one short request per server, not recorded.
        let warm = LoadSpec { max_tokens: 8, load: Load::Concurrency(1), ..spec.clone() };
        run_interleaved(servers, &prompts[..1], &warm, 1, &|_| {});
        let round = match load {
            Load::Concurrency(c) => (2 * c).max(4),
            Load::Rate(_) => 8,
        };
        let outs = run_interleaved(servers, prompts, &spec, round, &|_: &RequestRecord| pb.inc(1));
        for (server, o) in servers.iter().zip(outs) {
            for r in &o.records {
                out.write(r)?;
            }
            let s = Summary::of(&server.label, load, &o.records, o.wall_s);
            out.write(&s)?;
            summaries.push(s);
        }
    }
    pb.finish_and_clear();
    Ok(summaries)
}

fn print_and_report(summaries: &[Summary], baseline: Option<&str>, w: &Workload, title: &str) -> Result<()> {
    println!("{}", aerie_bench::report::serve_markdown(summaries, baseline));
    if let Some(dir) = &w.report_dir {
        let files = write_serve_report(dir, title, &Meta::collect(), summaries, baseline, &w.verdict()?)?;
        println!("report: {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    let failed: usize = summaries.iter().map(|s| s.all.failed).sum();
    if failed > 0 {
        eprintln!("bench: {failed} request(s) failed; the JSONL records say why");
    }
    Ok(())
}

pub fn run(a: BenchArgs, threads: Option<usize>) -> Result<()> {
    match a.cmd {
        BenchCmd::Serve(a) => serve(a),
        BenchCmd::Sweep(a) => run_sweep(a, threads),
        BenchCmd::Compare(a) => compare(a, threads),
        BenchCmd::Forward(a) => crate::bench_forward::run(a),
        BenchCmd::Collective(a) => crate::bench_collective::run(a),
        BenchCmd::Tp(a) => crate::bench_tp::run(a),
        BenchCmd::Features(a) => crate::bench_features::run(a),
    }
}

fn serve(a: ServeBenchArgs) -> Result<()> {
    let w = &a.workload;
    w.loads()?;
    let mut servers = Vec::new();
    for (i, spec) in a.base_url.iter().enumerate() {
        let (label, url) = match spec.split_once('=') {
            Some((l, u)) if !l.contains("://") => (l.to_string(), u.to_string()),
            _ => (if a.base_url.len() == 1 { "server".to_string() } else { format!("server{}", i + 1) }, spec.clone()),
        };
        // With or without `/v1`, as SGLang's bench_serving passes it.
        let url = aerie_client::openai_base_url(&url);
        require_loopback(&url)?;
        let model = model_name(w.model.as_deref(), &url, a.api_key.as_deref())?;
        servers.push(Server { label, base_url: url, api_key: a.api_key.clone(), model, extra: Default::default() });
    }
    for spec in &a.extra_body {
        let Some((label, body)) = spec.split_once('=') else { bail!("--extra-body {spec}: expected LABEL=JSON") };
        let Some(server) = servers.iter_mut().find(|s| s.label == label) else { bail!("--extra-body {spec}: no --base-url has the label {label}") };
        match serde_json::from_str::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(m)) => server.extra.extend(m),
            _ => bail!("--extra-body {spec}: the value must be a JSON object"),
        }
    }
    if let Some(b) = &a.baseline {
        if !servers.iter().any(|s| &s.label == b) {
            bail!("--baseline {b}: no --base-url has that label");
        }
    }
    let prompts = w.prompts()?;
    let mut out = Jsonl::open(&w.output)?;
    let summaries = measure(&servers, &prompts, w, &mut out)?;
    print_and_report(&summaries, a.baseline.as_deref(), w, &format!("bench serve: {}", w.dataset))
}

fn local_server(s: &LocalServer, label: &str, w: &Workload) -> Result<Server> {
    let model = model_name(w.model.as_deref(), &s.base_url, None)?;
    Ok(Server { label: label.into(), base_url: s.base_url.clone(), api_key: None, model, extra: Default::default() })
}

fn run_sweep(a: SweepArgs, threads: Option<usize>) -> Result<()> {
    let w = &a.workload;
    if w.request_rate.is_some() {
        bail!("bench sweep measures concurrencies; --request-rate is for bench serve");
    }
    let grid = Grid { concurrency: w.concurrency.clone(), steps: a.steps.clone(), topk: a.topk.clone(), draft_tokens: a.draft_tokens.clone(), baseline: !a.no_baseline };
    let plan = sweep::settings(&grid)?;
    for (t, why) in &plan.skipped {
        eprintln!("sweep: skipping {}: {why}", Setting::Tree(*t).label());
    }
    let prompts = w.prompts()?;
    let exe = std::env::current_exe()?;
    let start = |s: &Setting| {
        let mut args = s.serve_args();
        args.extend(a.local.serve_arg.iter().cloned());
        start_aerie(&exe, &s.label(), threads, &args, a.local.timeout(), a.local.verbose)
    };
    let mut out = Jsonl::open(&w.output)?;
    let pb = progress(plan.run.len() * grid.concurrency.len() * prompts.len(), "sweep");
    let mut failed_write = None;
    let rows = sweep::run_sweep(&grid, &prompts, &w.spec(Load::Concurrency(1)), w.model.as_deref(), &start, &mut |r: &SweepRow| {
        // A hidden bar (no terminal) drops println; the row must still show.
        let line = format!("{} at concurrency {}: {:.1} tok/s, τ {}", r.setting().label(), r.concurrency, r.output_tok_s, r.tau.map_or("–".into(), |t| format!("{t:.2}")));
        if pb.is_hidden() {
            eprintln!("{line}");
        } else {
            pb.println(line);
        }
        if let Err(e) = out.write(r) {
            failed_write.get_or_insert(e);
        }
    }, &|_| pb.inc(1))?;
    pb.finish_and_clear();
    if let Some(e) = failed_write {
        return Err(e);
    }
    // The rows were written as measured; rewrite them with speedups filled.
    if let Some(p) = &w.output {
        let mut f = Jsonl::open(&Some(p.clone()))?;
        for r in &rows {
            f.write(r)?;
        }
    }
    println!("Best per concurrency:");
    for r in sweep::best_per_concurrency(&rows) {
        let setting = r.setting().serve_args().join(" ");
        println!("  concurrency {}: {setting}  ({:.1} tok/s, speedup {})", r.concurrency, r.output_tok_s, r.speedup.map_or("–".into(), |x| format!("{x:.2}")));
    }
    if let Some(dir) = &w.report_dir {
        let files = sweep::write_report(dir, &Meta::collect(), &grid, &rows, &w.verdict()?)?;
        println!("report: {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    Ok(())
}

fn compare(a: CompareArgs, threads: Option<usize>) -> Result<()> {
    let w = &a.workload;
    w.loads()?;
    let prompts = w.prompts()?;
    let gguf = aerie_engine::fetch::resolve_model(&a.model_path)?;
    if gguf.extension().is_none_or(|e| e != "gguf") {
        bail!("--model-path {}: the peer loads GGUF files only", gguf.display());
    }
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let python = llama_cpp_python(!a.no_install_peer)?;
    let exe = std::env::current_exe()?;
    let (timeout, verbose) = (a.local.timeout(), a.local.verbose);
    let mut base = vec!["--model-path".to_string(), gguf.display().to_string()];
    base.extend(a.local.serve_arg.iter().cloned());
    let mut local = vec![("aerie", start_aerie(&exe, "aerie", Some(threads), &base, timeout, verbose)?)];
    if !a.no_plain {
        let mut plain = base.clone();
        plain.push("--no-speculation".into());
        local.push(("aerie-plain", start_aerie(&exe, "aerie-plain", Some(threads), &plain, timeout, verbose)?));
    }
    local.push(("llama.cpp", start_llama_cpp(&python, &gguf, threads, timeout, verbose)?));
    let mut servers = Vec::new();
    for (label, s) in &local {
        let mut srv = local_server(s, label, w)?;
        if *label == "llama.cpp" {
            // llama.cpp's server defaults to a repeat penalty of 1.1; Aerie
            // has none, and greedy outputs are only comparable without it.
            srv.extra.insert("repeat_penalty".into(), serde_json::json!(1.0));
        }
        servers.push(srv);
    }
    let mut out = Jsonl::open(&w.output)?;
    let summaries = measure(&servers, &prompts, w, &mut out)?;
    print_and_report(&summaries, Some("llama.cpp"), w, &format!("bench compare: Aerie against llama.cpp's server, {}", w.dataset))
}
