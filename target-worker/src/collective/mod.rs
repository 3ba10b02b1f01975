//! The `Collective` seam of a tensor-parallel group: all-reduce, all-gather,
//! broadcast and barrier over contiguous buffers, among the ranks of one
//! target worker's group. One file per implementation:
//!
//! - [`shm`]: processes on one host through a shared-memory segment (the
//!   CPU backend; what CI runs);
//! - NCCL and a CUDA-IPC all-reduce for GPUs come next (issue 35).
//!
//! Contract, for every implementation:
//! - every rank calls the same collectives in the same order with the same
//!   lengths (rank 0 broadcasts each step's plan, the others follow);
//! - results are bit-identical on every rank: sums run in rank order, so a
//!   tensor-parallel forward stays deterministic and every rank agrees on
//!   the sampled token;
//! - no rank is left waiting on a dead or stalled peer: a wait ends with
//!   [`CollectiveError::PeerGone`] as soon as a peer's process is gone, and
//!   with [`CollectiveError::Stalled`] after the group's stall timeout when
//!   one is set for that call.

pub mod shm;

use std::time::Duration;

/// Why a collective did not complete. Every variant leaves the group
/// unusable: the worker fails its requests and exits.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("rank {rank} (pid {pid}) is gone")]
    PeerGone { rank: usize, pid: u32 },
    #[error("stalled: rank(s) {waiting_for:?} did not reach the collective within {after:?}")]
    Stalled { waiting_for: Vec<usize>, after: Duration },
    #[error("rank {rank} refused to join the tensor-parallel group: {reason}")]
    Refused { rank: usize, reason: String },
    #[error("tensor-parallel group formation timed out after {after:?}: {detail}")]
    FormationTimeout { after: Duration, detail: String },
    #[error("tensor-parallel group formation failed: {0}")]
    FormationFailed(String),
    #[error("collective misuse: {0}")]
    Misuse(String),
    #[error("shared memory {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

impl CollectiveError {
    /// A stable label for metrics and logs.
    pub fn error_type(&self) -> &'static str {
        match self {
            CollectiveError::PeerGone { .. } => "peer_gone",
            CollectiveError::Stalled { .. } => "stalled",
            CollectiveError::Refused { .. } => "refused",
            CollectiveError::FormationTimeout { .. } => "formation_timeout",
            CollectiveError::FormationFailed(_) => "formation_failed",
            CollectiveError::Misuse(_) => "misuse",
            CollectiveError::Io { .. } => "io",
        }
    }
}

pub type Result<T> = std::result::Result<T, CollectiveError>;

/// What every rank of a group must agree on; a rank that differs is refused
/// at formation with the difference named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupIdentity {
    /// Ranks in the group (`--tp-size`).
    pub world: usize,
    /// The target model's fingerprint.
    pub model: String,
    /// Aerie's version.
    pub version: String,
}

/// Collectives among the ranks of one group. Buffers are contiguous; every
/// rank passes the same lengths.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Element-wise sum over the ranks, in rank order, into `buf` on every
    /// rank.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()>;
    /// Every rank's `mine`, concatenated in rank order, into `out`
    /// (`world × mine.len()`).
    fn all_gather(&mut self, mine: &[f32], out: &mut [f32]) -> Result<()>;
    /// Rank `root`'s `buf` into every rank's `buf`. `wait` bounds how long a
    /// rank waits for the root (`None`: as long as the root lives, e.g. for
    /// the next step's plan while the group is idle).
    fn broadcast(&mut self, buf: &mut [u8], root: usize, wait: Option<Duration>) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<()>;
}

/// A group's collective as the engine's [`TpReduce`](aerie_engine::tp::TpReduce):
/// what a model shard sums its partial outputs through.
///
/// The first failed call poisons it: every later call fails at once. After
/// a stall the ranks are no longer at the same collective, so nothing that
/// follows may pair one rank's call with another's.
pub struct GroupReduce {
    inner: std::sync::Mutex<Box<dyn Collective>>,
    rank: usize,
    world: usize,
    broken: std::sync::Mutex<Option<String>>,
}

impl GroupReduce {
    pub fn new(c: Box<dyn Collective>) -> GroupReduce {
        GroupReduce { rank: c.rank(), world: c.world(), inner: std::sync::Mutex::new(c), broken: std::sync::Mutex::new(None) }
    }

    /// The collective, for the step plan's broadcast and barriers.
    pub fn collective(&self) -> std::sync::MutexGuard<'_, Box<dyn Collective>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the collective unless the group is already broken, and
    /// breaks it if `f` fails.
    fn call<T>(&self, f: impl FnOnce(&mut dyn Collective) -> Result<T>) -> aerie_engine::Result<T> {
        let mut c = self.collective();
        let mut broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &*broken {
            return Err(aerie_engine::EngineError::TensorParallel(format!("the group broke earlier: {why}")));
        }
        f(c.as_mut()).map_err(|e| {
            *broken = Some(e.to_string());
            engine_error(e)
        })
    }
}

impl aerie_engine::tp::TpReduce for GroupReduce {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> aerie_engine::Result<()> {
        self.call(|c| c.all_reduce_sum(buf))
    }

    fn all_gather(&self, mine: &[f32], out: &mut [f32]) -> aerie_engine::Result<()> {
        self.call(|c| c.all_gather(mine, out))
    }

    fn lead(&self, plan: &[u8]) -> aerie_engine::Result<()> {
        self.call(|c| {
            if plan.len() > MAX_PLAN_BYTES {
                return Err(CollectiveError::Misuse(format!("a step plan of {} bytes (at most {MAX_PLAN_BYTES})", plan.len())));
            }
            let mut len = (plan.len() as u64).to_le_bytes();
            c.broadcast(&mut len, 0, None)?;
            let mut body = plan.to_vec();
            c.broadcast(&mut body, 0, None)
        })
    }

    fn follow(&self) -> aerie_engine::Result<Vec<u8>> {
        self.call(|c| {
            let mut len = [0u8; 8];
            // An idle group waits here between requests, as long as rank 0 lives.
            c.broadcast(&mut len, 0, None)?;
            let n = u64::from_le_bytes(len) as usize;
            if n > MAX_PLAN_BYTES {
                return Err(CollectiveError::Misuse(format!("rank 0 announced a step plan of {n} bytes")));
            }
            let mut body = vec![0u8; n];
            c.broadcast(&mut body, 0, None)?;
            Ok(body)
        })
    }
}

/// The largest step plan a rank accepts (a batch of trees is far smaller).
const MAX_PLAN_BYTES: usize = 1 << 30;

fn engine_error(e: CollectiveError) -> aerie_engine::EngineError {
    aerie_engine::EngineError::TensorParallel(e.to_string())
}

#[cfg(test)]
mod tp_tests;
