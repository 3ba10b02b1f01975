//! Every Prometheus metric Aerie's workers export, in one place.
//!
//! Naming guide:
//! - `aerie_{role}_{what}_{unit}`: role is `target`, `draft` or `router`.
//! - Units are spelled out and base: `_seconds`, `_bytes`, `_tokens`.
//! - `_total` ends counters and only counters.
//! - Labels are few and bounded: `reason`, `transport`, `position` (1..=64),
//!   `outcome`, `error_type` (the stable `error_type()` strings).

// ---- target worker
/// Counter: verification forwards per request (one per request per step).
pub const TARGET_VERIFY_STEPS: &str = "aerie_target_verify_steps_total";
/// Counter: draft tokens the target could have accepted (tree depth per verify).
pub const TARGET_DRAFT_TOKENS_PROPOSED: &str = "aerie_target_draft_tokens_proposed_total";
/// Counter: draft tokens the target accepted.
pub const TARGET_DRAFT_TOKENS_ACCEPTED: &str = "aerie_target_draft_tokens_accepted_total";
/// Counter: proposed draft nodes the request's output constraint refused,
/// pruned before verification (0 while draft workers keep to constraints).
pub const TARGET_DRAFT_TOKENS_REFUSED: &str = "aerie_target_draft_tokens_refused_total";
/// Counter, label `position`: accepted drafts at each tree depth (1 = first draft).
pub const TARGET_ACCEPTED_BY_POSITION: &str = "aerie_target_accepted_by_position_total";
/// Histogram: tokens emitted per verification, bonus included (τ per step).
pub const TARGET_ACCEPT_LENGTH: &str = "aerie_target_accept_length_tokens";
/// Histogram: one scheduler step (propose wait + verify forward), seconds.
pub const TARGET_STEP_DURATION: &str = "aerie_target_step_duration_seconds";
/// Histogram: the verify forward of one step, seconds.
pub const TARGET_VERIFY_DURATION: &str = "aerie_target_verify_duration_seconds";
/// Histogram: requests verified together per step.
pub const TARGET_BATCH_SIZE: &str = "aerie_target_batch_size_requests";
/// Gauge: KV tokens reserved by running requests.
pub const TARGET_KV_USED: &str = "aerie_target_kv_used_tokens";
/// Gauge: the KV budget.
pub const TARGET_KV_CAPACITY: &str = "aerie_target_kv_capacity_tokens";
/// Gauge: device memory this worker holds from the driver (weights, KV
/// pool, buffers in use and cached for reuse), on a CUDA device; absent on
/// the CPU.
pub const TARGET_DEVICE_MEMORY_USED: &str = "aerie_target_device_memory_used_bytes";
/// Gauge: the device's memory.
pub const TARGET_DEVICE_MEMORY_TOTAL: &str = "aerie_target_device_memory_total_bytes";
/// Gauge: KV pool slots held by sequences, on a CUDA device (whole pages).
pub const TARGET_DEVICE_KV_POOL_USED: &str = "aerie_target_device_kv_pool_used_tokens";
/// Gauge: KV pool slots in all.
pub const TARGET_DEVICE_KV_POOL_CAPACITY: &str = "aerie_target_device_kv_pool_capacity_tokens";
/// Gauge: requests waiting for admission.
pub const TARGET_QUEUE_LENGTH: &str = "aerie_target_queue_length_requests";
/// Gauge: requests being decoded.
pub const TARGET_RUNNING: &str = "aerie_target_running_requests";
/// Counter, label `reason`: requests that went on without speculation (the draft worker was lost, or this target runs non-batch-invariant library GEMMs).
pub const TARGET_DRAFT_FALLBACKS: &str = "aerie_target_draft_fallbacks_total";
/// Counter, label `outcome` (`finished`, `aborted`, `rejected`, `failed`): requests.
pub const TARGET_REQUESTS: &str = "aerie_target_requests_total";
/// Counter: prompt tokens prefilled (once per request, whatever its `n`).
pub const TARGET_PREFILL_TOKENS: &str = "aerie_target_prefill_tokens_total";
/// Counter: tokens generated.
pub const TARGET_GENERATED_TOKENS: &str = "aerie_target_generated_tokens_total";
/// Counter, label `transport`: feature bytes sent to draft workers.
pub const TARGET_FEATURE_BYTES: &str = "aerie_target_feature_bytes_total";
/// Counter, label `kind` (`begin`, `commit`, `propose`, `release`): session
/// messages sent to draft workers. Commits are deferred to the next
/// proposal, so a request drafting nothing sends none.
pub const TARGET_DRAFT_MESSAGES: &str = "aerie_target_draft_messages_total";
/// Counter: steps that verified one lane of the running requests while the
/// draft workers drafted for the other (`--speculative-overlap`).
pub const TARGET_OVERLAPPED_STEPS: &str = "aerie_target_overlapped_steps_total";
/// Gauge: open sessions to draft workers.
pub const TARGET_DRAFT_SESSIONS: &str = "aerie_target_draft_sessions";
/// Gauge, by `transport` (`cuda-ipc`, `shm`, `inline`): open draft sessions
/// by the feature transport their open settled on.
pub const TARGET_DRAFT_SESSION_TRANSPORT: &str = "aerie_target_draft_session_transport";
/// Gauge: requests speculating through a draft session.
pub const TARGET_DRAFT_SEQUENCES: &str = "aerie_target_draft_sequences";
/// Gauge: bytes of shared-memory rings this target holds.
pub const TARGET_SHM_BYTES: &str = "aerie_target_shm_bytes";
/// Histogram: the draft depth chosen for a request's step under
/// `--speculative-adaptive` (0: a plain decode row).
pub const TARGET_SPEC_BUDGET: &str = "aerie_target_spec_budget_depth";
/// Histogram: tokens a step was expected to emit at its chosen depth (the
/// realized ones are `aerie_target_accept_length`).
pub const TARGET_PREDICTED_ACCEPT_LENGTH: &str = "aerie_target_predicted_accept_length";
/// Gauge, label `term` (`fixed`, `per_row`, `per_draft_level`,
/// `draft_round`): the adaptive budget's cost model, seconds.
pub const TARGET_COST_MODEL: &str = "aerie_target_cost_model_seconds";

// ---- draft worker
/// Histogram: one proposal (catch-up included), seconds.
pub const DRAFT_PROPOSE_DURATION: &str = "aerie_draft_propose_duration_seconds";
/// Histogram: proposals drafted together (their catch-ups in one head
/// pass): the queued proposals of one session.
pub const DRAFT_PROPOSE_BATCH: &str = "aerie_draft_propose_batch_size";
/// Gauge: open sessions (one per target worker).
pub const DRAFT_SESSIONS: &str = "aerie_draft_sessions";
/// Gauge: device memory this draft worker holds from the driver (head
/// weights, its KV pool, buffers), on a CUDA device; absent on the CPU.
pub const DRAFT_DEVICE_MEMORY_USED: &str = "aerie_draft_device_memory_used_bytes";
/// Gauge: the device's memory.
pub const DRAFT_DEVICE_MEMORY_TOTAL: &str = "aerie_draft_device_memory_total_bytes";
/// Gauge: sequences held across sessions.
pub const DRAFT_SEQUENCES: &str = "aerie_draft_sequences";
/// Gauge: bytes of shared-memory rings mapped.
pub const DRAFT_SHM_BYTES: &str = "aerie_draft_shm_bytes";
/// Counter, label `reason` (`idle`, `session_cap`, `sequence_cap`): sessions
/// and sequences the draft worker closed on its own.
pub const DRAFT_EVICTIONS: &str = "aerie_draft_evictions_total";
/// Counter, label `transport`: feature bytes received.
pub const DRAFT_FEATURE_BYTES: &str = "aerie_draft_feature_bytes_total";
/// Counter, label `error_type`: session errors reported to targets.
pub const DRAFT_ERRORS: &str = "aerie_draft_errors_total";
