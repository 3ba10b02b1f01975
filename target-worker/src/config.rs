//! Target worker settings with their defaults.

use std::time::Duration;

/// How hidden features reach draft workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeatureTransportMode {
    /// CUDA IPC when the draft worker reports the same GPU (by UUID), else
    /// shared memory when it reports the same host, else inline.
    #[default]
    Auto,
    /// A device ring through CUDA IPC; shared memory, then inline, when the
    /// draft is on another GPU or cannot open it.
    CudaIpc,
    /// Shared memory whatever the draft reports (inline only per oversized
    /// block, or for the whole session when the draft cannot map the ring,
    /// which it logs).
    Shm,
    /// Always inline bytes in the gRPC message.
    Inline,
}

impl std::fmt::Display for FeatureTransportMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::CudaIpc => "cuda-ipc",
            Self::Shm => "shm",
            Self::Inline => "inline",
        })
    }
}

impl std::str::FromStr for FeatureTransportMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cuda-ipc" => Ok(Self::CudaIpc),
            "shm" => Ok(Self::Shm),
            "inline" => Ok(Self::Inline),
            o => Err(format!("unknown feature transport `{o}` (auto, cuda-ipc, shm, inline)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Name the model was loaded by, reported by `Info`. Default: empty.
    pub model_id: String,
    /// Most requests decoded at once (`--max-running-requests`). Default 16.
    pub max_running_requests: usize,
    /// KV budget in tokens across running requests (`--max-total-tokens`).
    /// Each request reserves prompt + max_tokens + tree slack at admission,
    /// so a running request never runs out. Default 65,536.
    pub max_total_tokens: usize,
    /// Requests that may wait for admission; beyond this Generate answers
    /// RESOURCE_EXHAUSTED (`--max-queued-requests`). Default 64.
    pub max_queued_requests: usize,
    /// Default `auto`.
    pub feature_transport: FeatureTransportMode,
    /// Shared-memory ring per draft session, bytes. Default 64 MiB.
    pub shm_ring_bytes: u64,
    /// Longest wait for one proposal before the request drops speculation.
    /// Default 10 s (a draft worker serving many sequences on a busy CPU can
    /// take a while; a dead one is noticed at once through its stream).
    pub propose_timeout: Duration,
    /// Longest wait to connect to a draft worker. Default 3 s.
    pub draft_connect_timeout: Duration,
    /// Choose each request's draft depth per step from the measured cost
    /// and acceptance models (`--speculative-adaptive`). Default off: every
    /// request verifies the drafter's whole tree.
    pub speculative_adaptive: bool,
    /// Verify half the running requests per step while their draft workers
    /// draft for the other half (`--speculative-overlap`). Default off.
    pub speculative_overlap: bool,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            model_id: String::new(),
            max_running_requests: 16,
            max_total_tokens: 65_536,
            max_queued_requests: 64,
            feature_transport: FeatureTransportMode::Auto,
            shm_ring_bytes: aerie_proto::transport::DEFAULT_RING_BYTES,
            propose_timeout: Duration::from_secs(10),
            draft_connect_timeout: Duration::from_secs(3),
            speculative_adaptive: false,
            speculative_overlap: false,
        }
    }
}
