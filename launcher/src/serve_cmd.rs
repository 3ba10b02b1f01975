//! `aerie serve`: the local cluster as child processes.
//!
//! Strategy. Resolve (and if needed fetch) the model once, then start the
//! draft workers, the target workers (each on a free port) and the router
//! (on `--port`, default 30000) as `aerie draft-worker` / `target-worker` /
//! `router` children of this binary. Wait for
//! every child's READY line; a child that exits first makes `serve` fail
//! with that child's last stderr lines. Once up, print the endpoints and
//! supervise. SIGINT/SIGTERM shut down in order: the router, the targets
//! (they drain their requests), then the drafts. Children get SIGTERM if
//! `serve` itself dies.
//!
//! Supervision. A child that dies once the cluster is up is started again on
//! the same ports, so every address the others hold stays right (workers get
//! fixed ports just below the kernel's ephemeral range, where no outgoing
//! connection can take them while they are down): the
//! router's probes see a restarted target healthy again within its health
//! interval, and targets reopen draft sessions on their next request. The
//! requests the dead child was serving end with errors (the router retries
//! those that had not started on another target); the rest of the cluster
//! keeps serving. Restarts back off (0.5 s doubling to 30 s, back to 0.5 s
//! after a minute up). `--exit-on-worker-failure` stops the whole cluster
//! instead, with the child's last stderr lines.
//!
//! Discovery. With `--etcd-endpoints` the workers register in etcd (ids
//! `serve-target-<i>`, `serve-draft-<i>`) and the router finds them there,
//! as it would in Kubernetes; `serve` reports ready once the router sees
//! them all. Without it the router gets static address lists.
//!
//! Default: SmolLM2 with Aerie's shipped EAGLE head as a (1, 1, 2) chain with
//! `--speculative-min-draft-score 0.3` and its 2,048-token hot vocabulary,
//! the setting that measured fastest on CPU;
//! `--no-speculation` (or `--draft-workers 0`) serves without draft workers.

use crate::spec_args::SpecArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Target model: `smollm2`, a GGUF file or a Hugging Face directory.
    #[arg(long, default_value = "smollm2")]
    pub model_path: String,
    /// Address the workers bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Draft worker processes (0 = no speculation).
    #[arg(long, default_value_t = 1)]
    pub draft_workers: usize,
    /// Target worker processes.
    #[arg(long, default_value_t = 1)]
    pub target_workers: usize,
    /// The router's HTTP port (the OpenAI endpoint).
    #[arg(long, default_value_t = 30000)]
    pub port: u16,
    /// Require `Authorization: Bearer <key>` at the router.
    #[arg(long, env = "AERIE_API_KEY")]
    pub api_key: Option<String>,
    /// Routing policy: round_robin, least_load or prefix_affinity.
    #[arg(long, default_value = "least_load")]
    pub policy: String,
    /// How the model writes tool calls: `hermes` (also `qwen25`) or
    /// `llama3`. Default: read from the chat template.
    #[arg(long)]
    pub tool_call_parser: Option<String>,
    /// Where the workers' models run. With several target workers on one
    /// device, each takes an equal share of --mem-fraction-static.
    #[command(flatten)]
    pub device: crate::device_args::DeviceArgs,
    /// Per target worker: most requests decoded at once.
    #[arg(long, default_value_t = 16)]
    pub max_running_requests: usize,
    /// How features reach the draft workers (passed to each target worker):
    /// auto (CUDA IPC when both run on one GPU, else shared memory),
    /// cuda-ipc, shm or inline.
    #[arg(long, default_value = "auto")]
    pub feature_transport: aerie_target_worker::FeatureTransportMode,
    /// Tensor-parallel degree of each target worker (SGLang's `--tp-size`):
    /// N rank processes sharing the worker's cores.
    #[arg(long, alias = "tensor-parallel-size", default_value_t = 1)]
    pub tp_size: usize,
    /// Longest wait for every worker to become ready, seconds.
    #[arg(long, default_value_t = 600)]
    pub startup_timeout_secs: u64,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Serve without speculation (same as `--draft-workers 0`).
    #[arg(long)]
    pub no_speculation: bool,
    /// Stop the whole cluster when a worker dies, instead of restarting it.
    #[arg(long)]
    pub exit_on_worker_failure: bool,
    /// Target workers choose each request's draft depth per step from
    /// measured costs and acceptance (see `aerie target-worker --help`).
    /// On by default here; `--speculative-adaptive false` verifies the
    /// drafter's whole tree every step (the fixed setting).
    #[arg(long, num_args = 0..=1, default_value_t = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub speculative_adaptive: bool,
    /// Target workers verify half their running requests per step while
    /// the draft workers draft for the other half (see `aerie target-worker
    /// --help`).
    #[arg(long)]
    pub speculative_overlap: bool,
    /// The router cancels a request not finished within this, seconds, and
    /// answers 504.
    #[arg(long, default_value_t = 1800)]
    pub request_timeout_secs: u64,
    /// With `--etcd-endpoints`, the workers register in etcd (as
    /// `serve-<role>-<i>`) and the router finds them there, as in a
    /// Kubernetes deployment; without, the router gets a static list.
    #[command(flatten)]
    pub etcd: crate::cluster_args::EtcdArgs,
}

/// A started worker.
pub struct Worker {
    pub name: String,
    pub child: Child,
    pub grpc: String,
    pub metrics: String,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// The command line it was started with (for a restart).
    args: Vec<String>,
    started: Instant,
}

/// The binary this process runs, for starting workers. On Linux that is
/// `/proc/<pid>/exe`, which names the running file itself: after a rebuild
/// or an upgrade has replaced or deleted `target/release/aerie`, the path
/// `current_exe` returns ends in " (deleted)" and a restarted worker would
/// fail to start (the hour-long soak lost every worker that way), or start
/// a different build beside the router. Elsewhere, `current_exe`.
fn own_binary() -> Result<std::path::PathBuf> {
    let proc_exe = std::path::PathBuf::from(format!("/proc/{}/exe", std::process::id()));
    if proc_exe.exists() {
        return Ok(proc_exe);
    }
    std::env::current_exe().context("locating the aerie binary")
}

/// Starts `aerie <args>` and waits for its READY line.
pub fn spawn_worker(name: &str, args: &[String], timeout: Duration) -> Result<Worker> {
    let mut cmd = Command::new(own_binary()?);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to send
    // SIGTERM to this child when its parent dies.
    unsafe {
        use std::os::unix::process::CommandExt;
        // Its own process group: a terminal's Ctrl-C reaches `serve` only,
        // which then stops the children in order.
        cmd.process_group(0);
        // `ps` shows the binary's name, not `/proc/<pid>/exe`.
        if let Ok(path) = std::env::current_exe() {
            cmd.arg0(path.to_string_lossy().trim_end_matches(" (deleted)").to_string());
        }
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let (ready_tx, ready_rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let prefix = name.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if line.starts_with("READY ") {
                let _ = ready_tx.send(line);
            } else {
                println!("[{prefix}] {line}");
            }
        }
    });
    let (prefix, t2) = (name.to_string(), tail.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            eprintln!("[{prefix}] {line}");
            let mut t = t2.lock().unwrap_or_else(|e| e.into_inner());
            if t.len() == 20 {
                t.pop_front();
            }
            t.push_back(line);
        }
    });
    let t0 = Instant::now();
    loop {
        match ready_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let field = |k: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(k))
                        .map(str::to_string)
                        .unwrap_or_default()
                };
                return Ok(Worker {
                    name: name.to_string(),
                    child,
                    grpc: field("grpc="),
                    metrics: field("metrics="),
                    stderr_tail: tail,
                    args: args.to_vec(),
                    started: Instant::now(),
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if let Some(status) = child.try_wait()? {
            std::thread::sleep(Duration::from_millis(100)); // let the stderr reader catch up
            let tail = tail
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n");
            bail!("{name} failed at startup ({status}):\n{tail}");
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            bail!("{name} was not ready within {} s", timeout.as_secs());
        }
    }
}

impl Worker {
    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return; // already reaped: its pid may belong to someone else now
        }
        // SAFETY: signalling our own child by pid; it has not been reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        while t.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The command line for starting it again on the ports it has now.
    fn restart_args(&self) -> Vec<String> {
        let port = |addr: &str| addr.rsplit(':').next().unwrap_or("0").to_string();
        let mut args = self.args.clone();
        let mut set = |flag: &str, value: String| match args.iter().position(|a| a == flag) {
            Some(i) if i + 1 < args.len() => args[i + 1] = value,
            _ => args.extend([flag.to_string(), value]),
        };
        set("--port", port(&self.grpc));
        if self.name != "router" {
            set("--metrics-port", port(&self.metrics));
        }
        args
    }

    fn last_error(&self) -> String {
        self.stderr_tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The flags a draft worker gets from `serve`'s.
fn draft_flags(a: &ServeArgs) -> Vec<String> {
    let s = &a.spec;
    let mut v = Vec::new();
    let mut push = |k: &str, val: Option<String>| {
        if let Some(x) = val {
            v.push(format!("--{k}"));
            v.push(x);
        }
    };
    // The algorithm defaults to EAGLE; everything else passes through, and
    // the draft worker fills in the shipped head's setting when no tree flag
    // is given (`SpecArgs::apply_shipped_head_defaults`).
    push(
        "speculative-algorithm",
        Some(
            s.speculative_algorithm
                .map(|x| format!("{x:?}").to_uppercase())
                .unwrap_or_else(|| "EAGLE".into()),
        ),
    );
    push(
        "speculative-draft-model-path",
        s.speculative_draft_model_path
            .as_ref()
            .map(|p| p.display().to_string()),
    );
    push(
        "speculative-num-steps",
        s.speculative_num_steps.map(|x| x.to_string()),
    );
    push(
        "speculative-eagle-topk",
        s.speculative_eagle_topk.map(|x| x.to_string()),
    );
    push(
        "speculative-num-draft-tokens",
        s.speculative_num_draft_tokens.map(|x| x.to_string()),
    );
    push(
        "speculative-token-map",
        s.speculative_token_map
            .as_ref()
            .map(|p| p.display().to_string()),
    );
    push(
        "speculative-min-draft-score",
        s.speculative_min_draft_score.map(|x| x.to_string()),
    );
    v
}

/// `--etcd-endpoints`/`--cluster` (and a worker's stable id) when serve
/// runs in discovery mode; nothing otherwise.
fn etcd_flags(a: &ServeArgs, worker_id: Option<&str>) -> Vec<String> {
    if a.etcd.etcd_endpoints.is_empty() {
        return Vec::new();
    }
    let mut v = vec!["--etcd-endpoints".to_string(), a.etcd.etcd_endpoints.join(","), "--cluster".into(), a.etcd.cluster.clone()];
    if let Some(id) = worker_id {
        v.extend(["--worker-id".to_string(), id.to_string()]);
    }
    v
}

/// In discovery mode the router learns of the workers from etcd after it
/// starts: "ready" waits until its `/workers` shows every one healthy, so
/// the first request never meets an empty registry.
fn wait_until_discovered(router: &str, key: Option<&str>, targets: usize, drafts: usize, timeout: Duration) -> Result<()> {
    use std::io::{Read, Write};
    let t0 = Instant::now();
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let mut seen = (0, 0);
    loop {
        let view = std::net::TcpStream::connect(router).ok().and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(s, "GET /workers HTTP/1.0\r\nHost: {router}\r\n{auth}\r\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            serde_json::from_str::<serde_json::Value>(out.split_once("\r\n\r\n")?.1).ok()
        });
        let healthy = |v: &serde_json::Value, k: &str| v[k].as_array().map_or(0, |a| a.iter().filter(|w| w["healthy"] == true).count());
        if let Some(v) = view {
            seen = (healthy(&v, "targets"), healthy(&v, "drafts"));
            if seen.0 >= targets && seen.1 >= drafts {
                return Ok(());
            }
        }
        if t0.elapsed() > timeout {
            bail!("the router found {} of {targets} target and {} of {drafts} draft workers in etcd within {} s", seen.0, seen.1, timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `--port P --metrics-port Q` for a worker: free ports just below the
/// kernel's ephemeral range, so that after a crash no outgoing connection
/// (which takes its local port from that range) can be holding the port
/// the worker is restarted on. Empty (the worker picks any free port) where
/// the range leaves no room below it.
fn fixed_ports(host: &str, taken: &mut Vec<u16>) -> Vec<String> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    if low < 12_000 {
        return Vec::new();
    }
    let (first, span) = (low - 10_000, 10_000u32);
    let mut pick = |start: u32| -> Option<u16> {
        (0..span).map(|k| (first + (start + k) % span) as u16).find(|p| !taken.contains(p) && std::net::TcpListener::bind((host, *p)).is_ok()).inspect(|p| taken.push(*p))
    };
    // Spread serve instances on one machine apart.
    let start = std::process::id() * 7 % span;
    match (pick(start), pick(start)) {
        (Some(g), Some(m)) => vec!["--port".into(), g.to_string(), "--metrics-port".into(), m.to_string()],
        _ => Vec::new(),
    }
}

/// First and longest wait before a dead worker is started again.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub fn run(a: ServeArgs) -> Result<()> {
    let model = aerie_engine::fetch::resolve_model(&a.model_path)
        .with_context(|| format!("resolving model `{}`", a.model_path))?;
    let model = model.display().to_string();
    let timeout = Duration::from_secs(a.startup_timeout_secs);
    let speculate = !a.no_speculation && a.draft_workers > 0;
    let mut workers: Vec<Worker> = Vec::new();
    let mut taken = Vec::new();
    let started = (|| -> Result<()> {
        if speculate {
            for i in 0..a.draft_workers {
                let mut args = vec![
                    "draft-worker".to_string(),
                    "--model-path".into(),
                    model.clone(),
                    "--host".into(),
                    a.host.clone(),
                ];
                args.extend(draft_flags(&a));
                args.extend(a.device.to_args());
                args.extend(etcd_flags(&a, Some(&format!("serve-draft-{i}"))));
                args.extend(fixed_ports(&a.host, &mut taken));
                workers.push(spawn_worker(&format!("draft-{i}"), &args, timeout)?);
            }
        }
        let drafts: Vec<String> = workers.iter().map(|w| w.grpc.clone()).collect();
        let mut targets = Vec::new();
        for i in 0..a.target_workers {
            let mut args = vec![
                "target-worker".to_string(),
                "--model-path".into(),
                model.clone(),
                "--host".into(),
                a.host.clone(),
                "--max-running-requests".into(),
                a.max_running_requests.to_string(),
                "--tp-size".into(),
                a.tp_size.to_string(),
            ];
            args.extend(etcd_flags(&a, Some(&format!("serve-target-{i}"))));
            args.extend(fixed_ports(&a.host, &mut taken));
            let mut share = crate::device_args::DeviceArgs { mem_fraction_static: a.device.mem_fraction_static / a.target_workers.max(1) as f64, ..a.device.clone() };
            // Plain decoding has no use for batch invariance: `auto` is the library GEMM then.
            if !speculate && share.gemm.gemm_mode == crate::device_args::GemmMode::Auto {
                share.gemm.gemm_mode = crate::device_args::GemmMode::Library;
            }
            args.extend(share.to_args());
            if a.speculative_adaptive && speculate {
                args.push("--speculative-adaptive".into());
            }
            if a.speculative_overlap && speculate {
                args.push("--speculative-overlap".into());
            }
            args.extend(["--feature-transport".to_string(), a.feature_transport.to_string()]);
            let w = spawn_worker(&format!("target-{i}"), &args, timeout)?;
            targets.push(w.grpc.clone());
            workers.push(w);
        }
        let mut args = vec![
            "router".to_string(),
            "--model-path".into(),
            model.clone(),
            "--served-model-name".into(),
            a.model_path.clone(),
            "--host".into(),
            a.host.clone(),
            "--port".into(),
            a.port.to_string(),
            "--policy".into(),
            a.policy.clone(),
        ];
        args.extend(["--request-timeout-secs".to_string(), a.request_timeout_secs.to_string()]);
        if a.etcd.etcd_endpoints.is_empty() {
            for t in &targets {
                args.extend(["--target".to_string(), format!("http://{t}")]);
            }
            for d in &drafts {
                args.extend(["--draft".to_string(), format!("http://{d}")]);
            }
        } else {
            args.extend(etcd_flags(&a, None));
        }
        if let Some(p) = &a.tool_call_parser {
            args.extend(["--tool-call-parser".to_string(), p.clone()]);
        }
        // The key travels in the environment, not on the command line.
        if let Some(k) = &a.api_key {
            std::env::set_var("AERIE_API_KEY", k);
        }
        let router = spawn_worker("router", &args, timeout)?;
        let router_addr = router.grpc.clone();
        workers.push(router);
        if !a.etcd.etcd_endpoints.is_empty() {
            wait_until_discovered(&router_addr, a.api_key.as_deref(), targets.len(), drafts.len(), timeout)?;
        }
        Ok(())
    })();
    if let Err(e) = started {
        for w in workers.iter_mut().rev() {
            w.stop(Duration::from_secs(5));
        }
        return Err(e);
    }
    println!(
        "aerie cluster ready ({} target, {} draft workers)",
        a.target_workers,
        if speculate { a.draft_workers } else { 0 }
    );
    for w in workers.iter().filter(|w| w.name != "router") {
        println!("  {:<10} grpc://{}  metrics http://{}/metrics", w.name, w.grpc, w.metrics);
    }
    let router = workers.last().map(|w| w.grpc.clone()).unwrap_or_default();
    println!("OpenAI endpoint: http://{router}/v1  (model \"{}\"; metrics http://{router}/metrics)", a.model_path);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let died = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        // Per worker: when it may be started again, and the next backoff.
        let mut restart: Vec<Option<Instant>> = vec![None; workers.len()];
        let mut backoff: Vec<Duration> = vec![MIN_BACKOFF; workers.len()];
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<_, anyhow::Error>(None),
                _ = int.recv() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            for i in 0..workers.len() {
                let w = &mut workers[i];
                if restart[i].is_none() {
                    let Ok(Some(st)) = w.child.try_wait() else {
                        if w.started.elapsed() > Duration::from_secs(60) {
                            backoff[i] = MIN_BACKOFF;
                        }
                        continue;
                    };
                    if a.exit_on_worker_failure {
                        return Ok(Some((i, st)));
                    }
                    eprintln!("[serve] {} exited ({st}); restarting it in {:.1} s\n{}", w.name, backoff[i].as_secs_f64(), w.last_error());
                    restart[i] = Some(Instant::now() + backoff[i]);
                    backoff[i] = (backoff[i] * 2).min(MAX_BACKOFF);
                }
                if restart[i].is_some_and(|t| Instant::now() >= t) {
                    match spawn_worker(&w.name, &w.restart_args(), timeout) {
                        Ok(fresh) => {
                            eprintln!("[serve] {} is back (grpc {})", fresh.name, fresh.grpc);
                            *w = fresh;
                            restart[i] = None;
                        }
                        Err(e) => {
                            eprintln!("[serve] restarting {} failed: {e:#}; next try in {:.1} s", w.name, backoff[i].as_secs_f64());
                            restart[i] = Some(Instant::now() + backoff[i]);
                            backoff[i] = (backoff[i] * 2).min(MAX_BACKOFF);
                        }
                    }
                }
            }
        }
    })?;
    // The router first (it stops accepting and finishes its responses), then
    // targets (they drain), then drafts.
    for w in workers.iter_mut().filter(|w| w.name == "router") {
        w.stop(Duration::from_secs(35));
    }
    for w in workers.iter_mut().filter(|w| w.name.starts_with("target")) {
        w.stop(Duration::from_secs(35));
    }
    for w in workers.iter_mut().filter(|w| w.name.starts_with("draft")) {
        w.stop(Duration::from_secs(5));
    }
    if let Some((i, st)) = died {
        bail!(
            "{} exited ({st}); cluster stopped:\n{}",
            workers[i].name,
            workers[i].last_error()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn flags(args: &[&str]) -> Vec<String> {
        let cli = Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).expect("serve flags parse");
        draft_flags(&cli.serve)
    }

    fn value(v: &[String], flag: &str) -> Option<String> {
        v.iter().position(|a| a == flag).map(|i| v[i + 1].clone())
    }

    #[derive(Parser)]
    struct DraftCli {
        #[command(flatten)]
        spec: SpecArgs,
    }

    /// The draft options a draft worker started with `serve`'s flags ends up
    /// with, given a shipped head in `head`.
    fn draft_options(args: &[&str], head: &std::path::Path) -> aerie_draft_worker::DraftOptions {
        let v = flags(args);
        let mut cli = DraftCli::try_parse_from(std::iter::once("draft-worker".to_string()).chain(v)).expect("draft-worker flags parse");
        cli.spec.apply_shipped_head_defaults(|| Some(head.to_path_buf()));
        cli.spec.options().expect("speculation is on")
    }

    fn head_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("hot_vocab_2048.json"), "[1]").unwrap();
        d
    }

    #[test]
    fn worker_ports_are_free_and_below_the_ephemeral_range() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap().split_whitespace().next().unwrap().parse().unwrap();
        let mut taken = Vec::new();
        let a = fixed_ports("127.0.0.1", &mut taken);
        let b = fixed_ports("127.0.0.1", &mut taken);
        let ports: Vec<u16> = [&a, &b].iter().flat_map(|v| [v[1].parse::<u16>().unwrap(), v[3].parse().unwrap()]).collect();
        assert_eq!((a[0].as_str(), a[2].as_str()), ("--port", "--metrics-port"));
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "{ports:?}");
        for p in ports {
            assert!(p < low && p >= low - 10_000, "port {p} (ephemeral range from {low})");
            std::net::TcpListener::bind(("127.0.0.1", p)).expect("the port is free");
        }
    }

    #[test]
    fn default_is_the_shipped_heads_fast_chain() {
        let head = head_dir();
        let o = draft_options(&[], head.path());
        assert_eq!(o.algorithm, aerie_draft_worker::SpecAlgorithm::Eagle);
        assert_eq!((o.tree.num_steps, o.tree.topk, o.tree.num_draft_tokens), (1, 1, 2));
        assert_eq!(o.min_draft_score, crate::spec_args::SHIPPED_MIN_DRAFT_SCORE);
        assert!(o.token_map.unwrap().ends_with("hot_vocab_2048.json"));
    }

    #[test]
    fn explicit_flags_replace_the_default_setting() {
        let head = head_dir();
        let o = draft_options(&["--speculative-num-steps", "3", "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "4"], head.path());
        assert_eq!((o.tree.num_steps, o.tree.num_draft_tokens), (3, 4));
        assert_eq!(o.min_draft_score, 0.0, "SGLang's fixed tree unless asked");
        let o = draft_options(&["--speculative-min-draft-score", "0.5"], head.path());
        assert_eq!(o.min_draft_score, 0.5);
        assert_eq!(o.tree.num_draft_tokens, 2, "the default chain stays");
        let v = flags(&["--speculative-algorithm", "NGRAM"]);
        assert_eq!(value(&v, "--speculative-min-draft-score"), None);
        assert_eq!(value(&v, "--speculative-num-steps"), None);
        let o = draft_options(&["--speculative-algorithm", "NGRAM"], head.path());
        assert_eq!(o.min_draft_score, 0.0);
        assert_eq!(o.token_map, None);
    }
}
