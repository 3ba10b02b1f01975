//! Discovery from a fixed list: one snapshot, then silence. Ids are the
//! addresses, since nothing else names a statically listed worker.

use crate::{Change, Discovery, Role, Status, WorkerRecord};

pub struct StaticDiscovery {
    pub targets: Vec<String>,
    pub drafts: Vec<String>,
}

fn record(role: Role, addr: &str) -> WorkerRecord {
    WorkerRecord { id: addr.to_string(), role, addr: addr.to_string(), model_fingerprint: String::new(), capacity: 0, host: String::new(), status: Status::Ready }
}

impl StaticDiscovery {
    /// The listed workers as records, targets first.
    pub fn records(&self) -> Vec<WorkerRecord> {
        self.targets.iter().map(|a| record(Role::Target, a)).chain(self.drafts.iter().map(|a| record(Role::Draft, a))).collect()
    }
}

impl Discovery for StaticDiscovery {
    fn kind(&self) -> &'static str {
        "static"
    }

    fn start(self: Box<Self>) -> tokio::sync::mpsc::Receiver<Change> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        // Capacity 1 and a fresh channel: this send cannot fail or block.
        let _ = tx.try_send(Change::Snapshot(self.records()));
        rx
    }
}
