//! `aerie target-worker --tp-size N`: a tensor-parallel group of rank
//! processes on one host, over the shared-memory collective.
//!
//! Strategy. The process that was started (by hand, by `aerie serve`, by
//! Kubernetes) is rank 0: it owns the scheduler, serves gRPC and registers
//! in etcd, so routers see one target worker per group. It starts ranks
//! 1..N as child processes of the same binary (`target-worker --tp-rank r
//! --tp-group G` with its model and device flags), loads the model while
//! they do, forms the group (a rank with a different model, TP size or
//! Aerie version is refused there, the difference named), shards, and
//! serves. Every other rank joins, shards and replays rank 0's forward
//! passes ([`aerie_engine::tp::mirror`]) until rank 0 stops the group.
//!
//! Lifetimes are tied both ways. A child gets SIGKILL when rank 0 dies
//! (`PR_SET_PDEATHSIG`), ignores SIGINT and SIGTERM (rank 0 drains and
//! then stops it), and ends with an error when it finds rank 0's process
//! gone. Rank 0 watches its children: one that exits, for any reason,
//! fails the group (every request ends with the reason, the worker
//! deregisters and exits non-zero, so Kubernetes restarts the pod); a rank
//! that stalls does the same through the collective's stall bounds (a
//! stopped rank within 200 ms, rank 0's step plan waits 5 s at most, a
//! collective inside a forward 30 s).
//!
//! With `--tp-rank 0 --tp-group G`, rank 0 starts no children: the other
//! ranks are started by hand with `--tp-rank r --tp-group G` on the same
//! host (the shared-memory collective does not cross hosts).
//!
//! Threads: with `--tp-size N`, each rank runs `--threads / N` kernel
//! threads (at least one), so the group uses the cores one worker would.

use crate::worker_cmd::TargetWorkerArgs;
use aerie_engine::{Engine, Model};
use aerie_target_worker::collective::shm::{ShmCollective, DEFAULT_SLOT_BYTES};
use aerie_target_worker::collective::{GroupIdentity, GroupReduce};
use aerie_target_worker::scheduler::Shared;
use anyhow::{bail, Context, Result};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long ranks wait for each other to load and join.
const FORMATION_TIMEOUT: Duration = Duration::from_secs(180);

/// Kernel threads of each rank of a group of `world` given `--threads`.
pub fn threads_per_rank(total: Option<usize>, world: usize) -> usize {
    let total = total.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    (total / world.max(1)).max(1)
}

fn identity(a: &TargetWorkerArgs, model: &Model) -> GroupIdentity {
    GroupIdentity { world: a.tp_size, model: model.fingerprint.clone(), version: env!("CARGO_PKG_VERSION").into() }
}

fn segment_dir() -> &'static std::path::Path {
    std::path::Path::new("/dev/shm")
}

/// Rank 0's view of its group.
pub struct Group {
    name: String,
    /// The rank processes this one started, by rank.
    children: Arc<Mutex<Vec<(usize, Child)>>>,
    /// Raised on a deliberate stop, so the watcher does not fail the group.
    stopping: Arc<AtomicBool>,
}

impl Group {
    /// Rank 0, before loading: starts ranks 1..N unless they are started by
    /// hand (`--tp-group` given).
    pub fn start(a: &TargetWorkerArgs, threads: usize) -> Result<Group> {
        let by_hand = a.tp_group.is_some();
        let name = a.tp_group.clone().unwrap_or_else(|| format!("tw-{}", std::process::id()));
        let mut children = Vec::new();
        if !by_hand {
            let exe = std::env::current_exe().context("locating the aerie binary")?;
            for r in 1..a.tp_size {
                let mut cmd = Command::new(&exe);
                cmd.args(["--threads", &threads.to_string(), "target-worker", "--model-path", &a.model_path]);
                cmd.args(["--tp-size", &a.tp_size.to_string(), "--tp-rank", &r.to_string(), "--tp-group", &name]);
                cmd.args(a.device.to_args());
                cmd.stdin(Stdio::null()).stdout(Stdio::null());
                // SAFETY: prctl and signal are async-signal-safe; they set
                // what the child inherits across exec.
                unsafe {
                    use std::os::unix::process::CommandExt;
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        libc::signal(libc::SIGINT, libc::SIG_IGN);
                        libc::signal(libc::SIGTERM, libc::SIG_IGN);
                        Ok(())
                    });
                }
                let child = cmd.spawn().with_context(|| format!("starting tensor-parallel rank {r}"))?;
                children.push((r, child));
            }
        }
        Ok(Group { name, children: Arc::new(Mutex::new(children)), stopping: Arc::new(AtomicBool::new(false)) })
    }

    /// A child that has exited, described.
    fn exited(children: &Mutex<Vec<(usize, Child)>>) -> Option<String> {
        let mut c = children.lock().unwrap_or_else(|e| e.into_inner());
        c.iter_mut().find_map(|(r, ch)| match ch.try_wait() {
            Ok(Some(status)) => Some(format!("tensor-parallel rank {r} (pid {}) exited ({status})", ch.id())),
            _ => None,
        })
    }

    /// Rank 0, after loading: forms the group and returns this rank's shard.
    pub fn form(&self, a: &TargetWorkerArgs, full: &Model) -> Result<Model> {
        let id = identity(a, full);
        let children = self.children.clone();
        let c = ShmCollective::create_watching(segment_dir(), &self.name, &id, DEFAULT_SLOT_BYTES, FORMATION_TIMEOUT, || Self::exited(&children))
            .context("forming the tensor-parallel group")?;
        let shard = aerie_engine::tp::shard(full, Arc::new(GroupReduce::new(Box::new(c)))).context("sharding the model")?;
        tracing::info!("tensor-parallel group {} formed: {} ranks", self.name, a.tp_size);
        Ok(shard)
    }

    /// Fails the worker when a child exits (checked every 50 ms).
    pub fn watch(&self, shared: Arc<Shared>) {
        let (children, stopping) = (self.children.clone(), self.stopping.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(50));
            if stopping.load(Ordering::Acquire) {
                return;
            }
            if let Some(why) = Self::exited(&children) {
                shared.fail_group(&why);
                return;
            }
        });
    }

    /// A deliberate end: tells the other ranks to stop (between two of the
    /// scheduler's calls, never within one), then reaps the children,
    /// killing any that do not end within 2 s.
    pub fn stop(&self, model: &Model) {
        self.stopping.store(true, Ordering::Release);
        if let Err(e) = aerie_engine::tp::mirror::stop(model) {
            tracing::warn!("stopping the tensor-parallel group: {e}");
        }
        self.reap(Duration::from_secs(2));
    }

    /// Kills what is left of the group (after a failure) and reaps it.
    pub fn kill(&self) {
        self.stopping.store(true, Ordering::Release);
        self.reap(Duration::ZERO);
    }

    fn reap(&self, grace: Duration) {
        let t = std::time::Instant::now();
        let mut c = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for (_, ch) in c.iter_mut() {
            while matches!(ch.try_wait(), Ok(None)) && t.elapsed() < grace {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(ch.try_wait(), Ok(None)) {
                let _ = ch.kill();
            }
            let _ = ch.wait();
        }
        c.clear();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Children never outlive rank 0's handle on them (they would also
        // get SIGKILL when this process ends).
        self.kill();
    }
}

/// A rank other than 0: joins group `--tp-group`, then replays rank 0's
/// forward passes until rank 0 stops the group (exit 0) or is gone (an
/// error, exit 1).
pub fn follow(a: &TargetWorkerArgs, rank: usize) -> Result<()> {
    let Some(group) = &a.tp_group else { bail!("--tp-rank {rank} needs --tp-group, the group to join") };
    let dtype = a.device.load_dtype()?;
    let engine = Engine::load(&a.model_path, dtype).with_context(|| format!("loading target model `{}`", a.model_path))?;
    let id = identity(a, &engine.model);
    let c = ShmCollective::join(segment_dir(), group, rank, &id, FORMATION_TIMEOUT).with_context(|| format!("joining tensor-parallel group {group} as rank {rank}"))?;
    let shard = aerie_engine::tp::shard(&engine.model, Arc::new(GroupReduce::new(Box::new(c)))).context("sharding the model")?;
    drop(engine);
    let stats = aerie_engine::tp::mirror::follow(&shard).with_context(|| format!("tensor-parallel rank {rank}"))?;
    tracing::info!("tensor-parallel rank {rank} stopped after {} forward passes", stats.forwards);
    Ok(())
}
