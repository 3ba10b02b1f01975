//! How Aerie's processes find each other.
//!
//! - [`Discovery`]: what the router consumes, a stream of [`Change`]s to its
//!   worker set. Two implementations: [`StaticDiscovery`] (addresses given
//!   on the command line or in a file) and [`EtcdDiscovery`] (a prefix watch).
//! - [`Registration`]: what a worker holds in etcd mode, one lease for the
//!   life of the process, with the worker's [`WorkerRecord`] under it.
//! - [`keys`]: the versioned key layout both sides agree on.
//!
//! etcd is only a directory. Requests never pass through it, so an etcd
//! outage freezes the worker set the router knows but loses no request.

pub mod error;
pub mod etcd_watch;
pub mod keys;
pub mod lease;
pub mod record;
pub mod static_list;

pub use error::DiscoveryError;
pub use etcd_watch::{EtcdDiscovery, EtcdDiscoveryConfig};
pub use lease::{Registration, RegistrationConfig};
pub use record::{Role, Status, WorkerRecord};
pub use static_list::StaticDiscovery;

/// One change to the set of workers a router should know.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The complete set: workers absent from it are gone. Sent first, and
    /// again after every full read (reconnect, compaction, periodic resync).
    Snapshot(Vec<WorkerRecord>),
    /// A worker appeared or its record changed (e.g. it started draining).
    Put(WorkerRecord),
    /// A worker's registration ended (lease expired or revoked).
    Delete { role: Role, id: String },
}

/// A source of worker-set changes.
pub trait Discovery: Send {
    /// Short name for logs and `/workers` (`static`, `etcd`).
    fn kind(&self) -> &'static str;
    /// Starts delivering changes. The receiver closes when the source has
    /// nothing more to say (a static list after its snapshot).
    fn start(self: Box<Self>) -> tokio::sync::mpsc::Receiver<Change>;
}
