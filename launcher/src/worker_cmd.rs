//! `aerie target-worker` and `aerie draft-worker`: one process per role.
//!
//! Each worker binds its gRPC port and its metrics port, then prints one line
//! to stdout that `aerie serve` and the tests wait for:
//! `READY role=target grpc=127.0.0.1:31000 metrics=127.0.0.1:31001`.
//! SIGTERM or SIGINT drains: no new requests, in-flight ones finish (up to
//! the grace period), then the process exits 0.

use crate::cluster_args::{EtcdArgs, RegisterArgs, Registrant};
use crate::device_args::DeviceArgs;
use crate::metrics_http;
use aerie_discovery::{Role, Status};
use std::sync::atomic::{AtomicBool, Ordering};
use crate::spec_args::SpecArgs;
use aerie_draft_worker::service::{DraftServer, SessionLimits};
use aerie_draft_worker::{ProposerFactory, SpecAlgorithm};
use aerie_engine::{DType, Engine, GrammarCompiler};
use aerie_proto::v1::draft_service_server::DraftServiceServer;
use aerie_proto::v1::target_service_server::TargetServiceServer;
use aerie_target_worker::{FeatureTransportMode, TargetConfig, TargetServer};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::wrappers::TcpListenerStream;

use aerie_proto::MAX_MESSAGE_BYTES;

#[derive(Args, Debug, Clone)]
pub struct ListenArgs {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// gRPC port (0: any free port; the READY line says which).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Prometheus `/metrics` port (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub metrics_port: u16,
}

#[derive(Args, Debug)]
pub struct TargetWorkerArgs {
    /// Target model: `smollm2`, a GGUF file or a Hugging Face directory.
    #[arg(long, default_value = "smollm2")]
    pub model_path: String,
    #[command(flatten)]
    pub listen: ListenArgs,
    /// Most requests decoded at once.
    #[arg(long, default_value_t = 16)]
    pub max_running_requests: usize,
    /// KV budget in tokens across running requests.
    #[arg(long, default_value_t = 65_536)]
    pub max_total_tokens: usize,
    /// Requests that may wait; beyond this Generate answers RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 64)]
    pub max_queued_requests: usize,
    /// How features reach draft workers: auto (CUDA IPC when the draft
    /// worker is on this worker's GPU, else shared memory on one host, else
    /// inline), cuda-ipc, shm or inline.
    #[arg(long, default_value = "auto")]
    pub feature_transport: FeatureTransportMode,
    /// Shared-memory ring per draft session, bytes.
    #[arg(long, default_value_t = aerie_proto::transport::DEFAULT_RING_BYTES)]
    pub shm_ring_bytes: u64,
    /// Longest wait for one proposal before a request drops speculation, ms.
    #[arg(long, default_value_t = 10_000)]
    pub propose_timeout_ms: u64,
    /// Longest wait to open a session to a draft worker, ms.
    #[arg(long, default_value_t = 3_000)]
    pub draft_connect_timeout_ms: u64,
    /// Choose each request's draft depth at every step from measured costs
    /// and acceptance (0 = a plain decode row) instead of always verifying
    /// the drafter's whole tree (SGLang's flag name).
    #[arg(long)]
    pub speculative_adaptive: bool,
    /// Split the running requests into two halves and verify one while the
    /// draft workers draft for the other, alternating each step.
    #[arg(long)]
    pub speculative_overlap: bool,
    /// On SIGTERM, how long in-flight requests may take to finish, seconds.
    #[arg(long, default_value_t = 30)]
    pub drain_grace_secs: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Tensor-parallel degree (SGLang's `--tp-size`): this process becomes
    /// rank 0 of a group of N rank processes on this host, over shared
    /// memory, each with `--threads / N` kernel threads (the CPU backend).
    #[arg(long, alias = "tensor-parallel-size", default_value_t = 1)]
    pub tp_size: usize,
    /// This process's rank in group `--tp-group`, for groups whose ranks are
    /// started by hand (rank 0 then starts none; the others join it).
    #[arg(long, requires = "tp_group")]
    pub tp_rank: Option<usize>,
    /// The name of the tensor-parallel group to create (rank 0) or join.
    #[arg(long, requires = "tp_rank")]
    pub tp_group: Option<String>,
    #[command(flatten)]
    pub register: RegisterArgs,
}

#[derive(Args, Debug)]
pub struct DraftWorkerArgs {
    /// The target model the drafter serves (its embeddings, lm_head and fingerprint).
    #[arg(long, default_value = "smollm2")]
    pub model_path: String,
    #[command(flatten)]
    pub listen: ListenArgs,
    /// Speculation flags; the algorithm defaults to EAGLE, and EAGLE without
    /// a draft path uses the shipped head: with no tree flag, as the (1, 1, 2)
    /// chain of `aerie serve`, over its 2,048-id hot vocabulary.
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Accepted as on the other roles; the drafters run on the CPU for now.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Sessions (one per target worker) held at once; past it the least
    /// recently used is closed.
    #[arg(long, default_value_t = 64)]
    pub max_sessions: usize,
    /// Sequences held per session; past it the least recently used is dropped.
    #[arg(long, default_value_t = 256)]
    pub max_sequences_per_session: usize,
    /// A session with no sequences and no messages this long is closed, seconds.
    #[arg(long, default_value_t = 300)]
    pub session_idle_timeout_secs: u64,
    #[command(flatten)]
    pub register: RegisterArgs,
}

async fn bind(host: &str, port: u16) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("binding {host}:{port}"))
}

/// Binds the gRPC and metrics ports and starts serving `/metrics` and the
/// health endpoints, which report `ready`.
async fn listen(l: &ListenArgs, handle: metrics_exporter_prometheus::PrometheusHandle, ready: Arc<AtomicBool>, debug: metrics_http::DebugView) -> Result<(tokio::net::TcpListener, SocketAddr, SocketAddr)> {
    let listener = bind(&l.host, l.port).await?;
    let mlistener = bind(&l.host, l.metrics_port).await?;
    let (grpc, metrics) = (listener.local_addr()?, mlistener.local_addr()?);
    tokio::spawn(metrics_http::serve(mlistener, handle, ready, debug));
    Ok((listener, grpc, metrics))
}

/// A gRPC server that pings its clients too, so a router or target that
/// vanishes without closing its socket (a partition, a frozen host) has its
/// streams ended within seconds: the target then aborts those requests and
/// frees their KV, the draft frees their sessions.
fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(aerie_proto::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(aerie_proto::KEEPALIVE_TIMEOUT))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // The forward passes run on their own threads; the runtime only moves messages.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn announce(role: &str, grpc: SocketAddr, metrics: SocketAddr) {
    // Flushed at once: `aerie serve` and tests block on this line.
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "READY role={role} grpc={grpc} metrics={metrics}");
    let _ = out.flush();
}

pub fn run_target(a: TargetWorkerArgs, threads: Option<usize>) -> Result<()> {
    if a.tp_size == 0 || a.tp_size > aerie_target_worker::collective::shm::MAX_RANKS {
        bail!("--tp-size {} must be 1 to {}", a.tp_size, aerie_target_worker::collective::shm::MAX_RANKS);
    }
    if let Some(r) = a.tp_rank {
        if r >= a.tp_size {
            bail!("--tp-rank {r} is not a rank of a group of --tp-size {}", a.tp_size);
        }
        if r > 0 {
            return crate::tp_group::follow(&a, r);
        }
    }
    if a.tp_size > 1 && a.device.device != aerie_engine::cuda::select::DeviceSpec::Cpu {
        bail!("--tp-size {} runs on the CPU only so far (the NCCL and CUDA-IPC collectives are still to come); drop --device or use --tp-size 1", a.tp_size);
    }
    let dtype = a.device.load_dtype()?;
    // The other ranks load while this one does.
    let group = (a.tp_size > 1).then(|| crate::tp_group::Group::start(&a, crate::tp_group::threads_per_rank(threads, a.tp_size))).transpose()?;
    // The device first: no driver is an error before minutes of loading.
    let device = aerie_engine::cuda::select::open_device(a.device.device)?;
    let mut engine = Engine::load(&a.model_path, dtype)
        .with_context(|| format!("loading target model `{}`", a.model_path))?;
    if let Some(g) = &group {
        engine.model = Arc::new(g.form(&a, &engine.model)?);
    }
    let mut max_total_tokens = a.max_total_tokens;
    if let Some(dev) = device {
        // The pool holds the admitted budget plus every running request's
        // verify tree and partly filled last page.
        let slack = a.max_running_requests * (aerie_engine::cuda::MAX_TREE_NODES + aerie_engine::cuda::kv::PAGE_SIZE);
        let model = Arc::try_unwrap(engine.model).map_err(|_| anyhow::anyhow!("the model is shared"))?;
        let model = crate::device_args::place(model, dev, &a.device, a.max_total_tokens + slack)?;
        let slots = model.cuda().map_or(0, |c| c.pool.slots());
        max_total_tokens = max_total_tokens.min(slots.saturating_sub(slack));
        if max_total_tokens == 0 {
            bail!("the KV pool ({slots} tokens) cannot hold the trees of {} running requests: lower --max-running-requests or raise --mem-fraction-static", a.max_running_requests);
        }
        engine.model = Arc::new(model);
    }
    // A target worker verifies drafts whenever a draft worker pairs with it:
    // batch-invariant projections unless told otherwise (`aerie serve
    // --no-speculation` passes library); a library-GEMM target decodes
    // requests that name a draft worker without speculation.
    if !a.device.gemm.apply_target(&engine.model)? {
        tracing::info!("requests that name a draft worker are decoded without speculation here (library GEMMs)");
    }
    let cfg = TargetConfig {
        model_id: a.model_path.clone(),
        max_running_requests: a.max_running_requests,
        max_total_tokens,
        max_queued_requests: a.max_queued_requests,
        feature_transport: a.feature_transport,
        shm_ring_bytes: a.shm_ring_bytes,
        propose_timeout: Duration::from_millis(a.propose_timeout_ms),
        draft_connect_timeout: Duration::from_millis(a.draft_connect_timeout_ms),
        speculative_adaptive: a.speculative_adaptive,
        speculative_overlap: a.speculative_overlap,
    };
    // Rings of target workers killed before their drafts mapped them.
    for p in aerie_proto::transport::sweep_stale_rings(std::path::Path::new("/dev/shm"), Duration::from_secs(10)) {
        tracing::info!("removed stale shared-memory ring {}", p.display());
    }
    // Device rings of the interpreted device, left by workers killed before
    // their drafts opened them.
    let ipc = aerie_kernels::cuda::interp_ipc::IPC_FILE_PREFIX;
    for p in aerie_proto::transport::sweep_stale_files(std::path::Path::new(aerie_kernels::cuda::interp_ipc::IPC_DIR), ipc, Duration::from_secs(10)) {
        tracing::info!("removed stale interpreted-device IPC memory {}", p.display());
    }
    let handle = metrics_http::install()?;
    let rt = runtime()?;
    rt.block_on(async move {
        let ready = Arc::new(AtomicBool::new(false));
        let debug = metrics_http::DebugView::default();
        let (listener, grpc, maddr) = listen(&a.listen, handle, ready.clone(), debug.clone()).await?;
        let server = TargetServer::start(&engine, cfg).context("starting the scheduler")?;
        let shared = server.shared();
        if let Some(g) = &group {
            g.watch(shared.clone());
        }
        let view = shared.clone();
        let _ = debug.set(Box::new(move || view.spec_budget_view()));
        let svc = TargetServiceServer::new(server).max_decoding_message_size(MAX_MESSAGE_BYTES);
        ready.store(true, Ordering::Release);
        // Registered once it can serve: the listener is bound, so connections queue.
        let registration = a.register.register(Registrant { role: Role::Target, grpc, model_fingerprint: engine.model.fingerprint.clone(), capacity: a.max_running_requests as u32 })?;
        announce("target", grpc, maddr);
        let serve = grpc_server().add_service(svc).serve_with_incoming(TcpListenerStream::new(listener));
        let grace = Duration::from_secs(a.drain_grace_secs);
        tokio::select! {
            r = serve => r.context("gRPC server failed")?,
            why = group_failure(shared.clone()) => {
                // Every request has been failed; let their errors leave,
                // then go, so that Kubernetes restarts the pod.
                ready.store(false, Ordering::Release);
                if let Some(r) = registration {
                    r.deregister(Duration::from_secs(2)).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(g) = &group {
                    g.kill();
                }
                bail!("{why}");
            }
            _ = termination() => {
                // Routers first, so new requests go elsewhere; then refuse the stragglers.
                ready.store(false, Ordering::Release);
                if let Some(r) = &registration {
                    r.set_status(Status::Draining);
                }
                shared.start_draining();
                tracing::info!("draining: {} running, {} waiting", shared.running(), shared.waiting());
                let t = Instant::now();
                while !shared.is_idle() && t.elapsed() < grace {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if !shared.is_idle() {
                    tracing::warn!("grace period over with {} requests unfinished", shared.running() + shared.waiting());
                }
                // Let the last chunks leave before the sockets close.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(r) = registration {
                    r.deregister(Duration::from_secs(5)).await;
                }
                if let Some(g) = &group {
                    g.stop(&engine.model);
                }
            }
        }
        Ok(())
    })
}

/// Resolves with the reason once the worker cannot serve any more.
async fn group_failure(shared: Arc<aerie_target_worker::scheduler::Shared>) -> String {
    loop {
        if let Some(why) = shared.fatal() {
            return why;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Most KV tokens a draft worker's device pool holds per head layer.
const DRAFT_KV_TOKENS: usize = 1 << 16;

pub fn run_draft(a: DraftWorkerArgs) -> Result<()> {
    // Drafters read the target's embedding, lm_head and tokenizer, never
    // its decoder layers (MTP layers and heads are loaded on their own).
    // With `--device cuda[:N]` a head's layers and lm_head (or a STANDALONE
    // draft model) run there; the target's embedding stays on the host,
    // where the drafter builds each row's input.
    a.device.load_dtype()?;
    // The device first: no driver is an error before any loading.
    let device = aerie_engine::cuda::select::open_device(a.device.device)?;
    let engine = Engine::load_for_drafting(&a.model_path, DType::Auto)
        .with_context(|| format!("loading target model `{}`", a.model_path))?;
    let device = match device {
        Some(dev) => {
            let (_, total) = dev.memory();
            // Counted as the target's shape with one layer (a head: the
            // embedding-sized lm_head and a decoder layer), at most
            // DRAFT_KV_TOKENS: a colocated target needs the rest.
            let tokens = crate::device_args::kv_tokens_that_fit(&engine.model.config, 1, dev.free_memory() as u64, total as u64, a.device.mem_fraction_static, DRAFT_KV_TOKENS)?;
            tracing::info!("drafting on {}: KV pool of {tokens} tokens per head layer", dev.name());
            Some((dev, tokens))
        }
        None => None,
    };
    let metrics_device = device.as_ref().map(|(d, _)| d.clone());
    let mut spec = a.spec.clone();
    if spec.speculative_algorithm.is_none() {
        spec.speculative_algorithm = Some(SpecAlgorithm::Eagle);
    }
    spec.apply_mtp_defaults(&a.model_path);
    spec.apply_shipped_head_defaults(|| aerie_draft_worker::shipped_head(&engine.model));
    let opts = spec.options().expect("an algorithm is set above");
    let draft_model = opts
        .draft_model_path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| format!("{:?} default", opts.algorithm));
    let factory = ProposerFactory::new_on(opts, engine.model.clone(), &engine.tokenizer, device)
        .context("loading the drafter")?;
    let handle = metrics_http::install()?;
    let rt = runtime()?;
    rt.block_on(async move {
        let ready = Arc::new(AtomicBool::new(false));
        let (listener, grpc, maddr) = listen(&a.listen, handle, ready.clone(), Default::default()).await?;
        if let Some(dev) = metrics_device {
            // Refreshed every second: the heads' KV pages come and go with requests.
            tokio::spawn(async move {
                loop {
                    let (used, total) = dev.memory();
                    metrics::gauge!(aerie_proto::metric_names::DRAFT_DEVICE_MEMORY_USED).set(used as f64);
                    metrics::gauge!(aerie_proto::metric_names::DRAFT_DEVICE_MEMORY_TOTAL).set(total as f64);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        let limits = SessionLimits {
            max_sessions: a.max_sessions,
            max_sequences_per_session: a.max_sequences_per_session,
            idle_timeout: Duration::from_secs(a.session_idle_timeout_secs),
        };
        let eos = engine.tokenizer.eos_ids.first().copied().unwrap_or(0);
        let grammars = GrammarCompiler::new(&engine.tokenizer, eos).map_err(|e| anyhow::anyhow!("building the constrained-decoding token trie: {e}"))?;
        let server = DraftServer::with_limits(factory, Arc::clone(&engine.model), draft_model, limits).with_grammars(grammars);
        tracing::info!(kind = %server.info().kind, features = %server.info().features, "draft worker ready");
        let svc = DraftServiceServer::new(server).max_decoding_message_size(MAX_MESSAGE_BYTES);
        ready.store(true, Ordering::Release);
        let registration = a.register.register(Registrant { role: Role::Draft, grpc, model_fingerprint: engine.model.fingerprint.clone(), capacity: 0 })?;
        announce("draft", grpc, maddr);
        let serve = grpc_server().add_service(svc).serve_with_incoming(TcpListenerStream::new(listener));
        tokio::select! {
            r = serve => r.context("gRPC server failed")?,
            _ = termination() => {
                // Unlisted first so no new session is paired here; the
                // sessions still open end with the process, and their
                // targets carry on without speculation.
                ready.store(false, Ordering::Release);
                if let Some(r) = registration {
                    r.set_status(Status::Draining);
                    r.deregister(Duration::from_secs(5)).await;
                }
            }
        }
        Ok(())
    })
}

#[derive(Args, Debug)]
pub struct RouterArgs {
    /// The served model: its tokenizer and chat template are loaded here.
    #[arg(long, default_value = "smollm2")]
    pub model_path: String,
    /// The name clients send as `model` (default: --model-path as given).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// HTTP port (SGLang's default).
    #[arg(long, default_value_t = 30000)]
    pub port: u16,
    /// A target worker's gRPC address (repeat for several).
    #[arg(long = "target", required_unless_present_any = ["workers_file", "etcd_endpoints"])]
    pub targets: Vec<String>,
    /// A draft worker's gRPC address (repeat; none = no speculation).
    #[arg(long = "draft")]
    pub drafts: Vec<String>,
    /// A TOML worker list (`targets = [...]`, `drafts = [...]`), added to
    /// any --target/--draft given.
    #[arg(long)]
    pub workers_file: Option<std::path::PathBuf>,
    /// round_robin, least_load or prefix_affinity.
    #[arg(long, default_value = "least_load")]
    pub policy: String,
    /// Require `Authorization: Bearer <key>`.
    #[arg(long, env = "AERIE_API_KEY")]
    pub api_key: Option<String>,
    /// Largest request body, bytes (larger: 413).
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Tokens hashed by the prefix_affinity policy.
    #[arg(long, default_value_t = 64)]
    pub prefix_tokens: usize,
    /// Requests in flight per API key (requests without a key share one);
    /// past it 429 with Retry-After. 0: no limit.
    #[arg(long, default_value_t = 0)]
    pub max_concurrent_requests_per_key: usize,
    /// Request line and headers must arrive within this, seconds; an idle
    /// keep-alive connection is closed after it too.
    #[arg(long, default_value_t = 30)]
    pub header_read_timeout_secs: u64,
    /// A request body must arrive within this, seconds (else 408).
    #[arg(long, default_value_t = 60)]
    pub body_read_timeout_secs: u64,
    /// A request not finished within this many seconds is cancelled on its
    /// worker and answered 504 (sgl-model-gateway's flag).
    #[arg(long, default_value_t = 1800)]
    pub request_timeout_secs: u64,
    /// Open HTTP connections at once; past it new ones are closed at once.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// How the model writes tool calls: `hermes` (also `qwen25`) or
    /// `llama3`. Default: read from the chat template (SGLang's flag).
    #[arg(long)]
    pub tool_call_parser: Option<String>,
    /// Discover workers in etcd (added to any static ones).
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// Makes the allocator hand large blocks back to the system when freed.
///
/// Why: glibc raises its mmap threshold to the size of the largest block
/// freed so far, up to 32 MiB, so after one multi-megabyte request body
/// every later body of that size comes from heap arenas that are never
/// returned, and the router's memory stays up after large requests. A
/// fixed 1 MiB threshold keeps every block that large in its own mapping,
/// which `free` unmaps.
fn return_large_blocks_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before any
    // thread of this process allocates large blocks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
    }
}

pub fn run_router(a: RouterArgs) -> Result<()> {
    return_large_blocks_to_the_system();
    let mut workers = aerie_router::config::WorkerList { targets: a.targets, drafts: a.drafts };
    if let Some(path) = &a.workers_file {
        workers.merge(aerie_router::config::WorkerList::load(path).map_err(anyhow::Error::msg)?);
    }
    let etcd = if a.etcd.etcd_endpoints.is_empty() {
        None
    } else {
        let cfg = aerie_discovery::EtcdDiscoveryConfig { endpoints: a.etcd.etcd_endpoints.clone(), cluster: a.etcd.cluster.clone(), ..Default::default() };
        Some(aerie_discovery::EtcdDiscovery::new(cfg).context("etcd discovery")?)
    };
    if workers.targets.is_empty() && etcd.is_none() {
        bail!("no target workers: give --target, list `targets` in --workers-file, or discover them with --etcd-endpoints");
    }
    let engine = Engine::load(&a.model_path, DType::Auto).with_context(|| format!("loading the tokenizer of `{}`", a.model_path))?;
    let context_length = engine.model.config.max_position_embeddings;
    // Keep the tokenizer and template; the weights are dropped here.
    let Engine { tokenizer, template, model } = engine;
    drop(model);
    let cfg = aerie_router::RouterConfig {
        served_model_name: a.served_model_name.unwrap_or_else(|| a.model_path.clone()),
        targets: workers.targets,
        drafts: workers.drafts,
        policy: a.policy,
        api_key: a.api_key,
        max_body_bytes: a.max_body_bytes,
        prefix_tokens: a.prefix_tokens,
        max_concurrent_requests_per_key: a.max_concurrent_requests_per_key,
        body_read_timeout: Duration::from_secs(a.body_read_timeout_secs),
        request_timeout: Duration::from_secs(a.request_timeout_secs.max(1)),
        tool_call_parser: a.tool_call_parser,
        ..Default::default()
    };
    let limits = aerie_router::HttpLimits {
        header_read_timeout: Duration::from_secs(a.header_read_timeout_secs.max(1)),
        max_connections: a.max_connections,
    };
    let handle = metrics_http::install()?;
    let render: Box<dyn Fn() -> String + Send + Sync> = Box::new(move || handle.render());
    let rt = runtime()?;
    rt.block_on(async move {
        // Inside the runtime: the lazy gRPC channels need its reactor.
        let state = aerie_router::RouterState::new(cfg, tokenizer, template, context_length, Some(render)).map_err(anyhow::Error::msg)?;
        let listener = bind(&a.host, a.port).await?;
        let addr = listener.local_addr()?;
        state.registry.probe_all().await;
        if let Some(d) = etcd {
            state.registry.follow(Box::new(d));
        }
        state.registry.spawn_health_checks(state.cfg.health_interval);
        let app = aerie_router::router_app(state);
        announce("router", addr, addr);
        // On SIGTERM: stop accepting, let in-flight responses finish.
        aerie_router::http::serve(listener, app, limits, termination()).await.context("HTTP server failed")?;
        Ok(())
    })
}
