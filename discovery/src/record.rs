//! What a worker says about itself in the directory.

use serde::{Deserialize, Serialize};

/// A worker's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Target,
    Draft,
}

impl Role {
    /// The key segment (`targets`, `drafts`).
    pub fn plural(self) -> &'static str {
        match self {
            Role::Target => "targets",
            Role::Draft => "drafts",
        }
    }

    pub fn from_plural(s: &str) -> Option<Role> {
        match s {
            "targets" => Some(Role::Target),
            "drafts" => Some(Role::Draft),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Target => "target",
            Role::Draft => "draft",
        }
    }
}

/// Whether a worker takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Serving; registered only once the worker can answer.
    #[default]
    Ready,
    /// Finishing in-flight work after SIGTERM; routers send nothing new.
    Draining,
}

/// The value under a worker's key (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Unique within the cluster and role; the key's last segment.
    pub id: String,
    pub role: Role,
    /// gRPC address others dial, `http://host:port`.
    pub addr: String,
    /// The target model's fingerprint (weights and config hash), so a router
    /// or target can refuse a worker serving another model.
    pub model_fingerprint: String,
    /// Requests the worker runs at once (targets) or sessions it serves (drafts).
    pub capacity: u32,
    /// Host identity: drafts on a target's host are paired first (shared memory).
    pub host: String,
    pub status: Status,
}

impl WorkerRecord {
    /// Parses a stored value; errors name the key, since a bad value is some
    /// other writer's bug and must not stop discovery of the rest.
    pub fn parse(key: &str, value: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(value).map_err(|e| format!("bad worker record at {key}: {e}"))
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_as_json_with_lowercase_enums() {
        let r = WorkerRecord { id: "t1".into(), role: Role::Target, addr: "http://10.0.0.5:31000".into(), model_fingerprint: "abc".into(), capacity: 16, host: "node-a".into(), status: Status::Draining };
        let j = r.to_json();
        let text = String::from_utf8(j.clone()).unwrap();
        assert!(text.contains("\"role\":\"target\"") && text.contains("\"status\":\"draining\""), "{text}");
        assert_eq!(WorkerRecord::parse("k", &j).unwrap(), r);
        let e = WorkerRecord::parse("/aerie/v1/c/targets/x", b"{\"id\":1}").unwrap_err();
        assert!(e.contains("/aerie/v1/c/targets/x"), "{e}");
    }
}
