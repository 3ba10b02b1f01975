//! Errors of the target worker, each mapped to one gRPC status code.
//!
//! | variant | code |
//! |---|---|
//! | `InvalidRequest` | INVALID_ARGUMENT |
//! | `QueueFull` | RESOURCE_EXHAUSTED |
//! | `Draining` | UNAVAILABLE |
//! | `Engine` (a model failure mid-step) | INTERNAL |

use aerie_engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The request can never be served as sent.
    #[error("{0}")]
    InvalidRequest(String),
    /// The waiting queue is full.
    #[error("queue full: {waiting} requests waiting (limit {limit}); retry later")]
    QueueFull { waiting: usize, limit: usize },
    /// The worker is shutting down and takes no new work.
    #[error("the target worker is draining and accepts no new requests")]
    Draining,
}

impl TargetError {
    /// A stable label for metrics and logs.
    pub fn error_type(&self) -> &'static str {
        match self {
            TargetError::Engine(e) => e.error_type(),
            TargetError::InvalidRequest(_) => "invalid_request",
            TargetError::QueueFull { .. } => "queue_full",
            TargetError::Draining => "draining",
        }
    }
}

impl From<TargetError> for tonic::Status {
    fn from(e: TargetError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            TargetError::InvalidRequest(_) => tonic::Status::invalid_argument(msg),
            TargetError::Engine(EngineError::InvalidInput(_) | EngineError::ContextLength { .. }) => tonic::Status::invalid_argument(msg),
            TargetError::QueueFull { .. } => tonic::Status::resource_exhausted(msg),
            TargetError::Draining => tonic::Status::unavailable(msg),
            TargetError::Engine(_) => tonic::Status::internal(msg),
        }
    }
}
