//! The etcd key layout (version 1), documented in `docs/operations.md`:
//!
//! ```text
//! /aerie/v1/{cluster}/targets/{id}  -> WorkerRecord (JSON), under the worker's lease
//! /aerie/v1/{cluster}/drafts/{id}   -> WorkerRecord (JSON), under the worker's lease
//! ```
//!
//! The `v1` segment lets a future layout live beside this one during a
//! rolling upgrade; the cluster segment lets several clusters share an etcd.

use crate::record::Role;

/// Everything one cluster registers, with the trailing slash so that
/// cluster `a` does not match cluster `ab`.
pub fn cluster_prefix(cluster: &str) -> String {
    format!("/aerie/v1/{cluster}/")
}

/// One worker's key.
pub fn worker_key(cluster: &str, role: Role, id: &str) -> String {
    format!("{}{}/{id}", cluster_prefix(cluster), role.plural())
}

/// Splits a key under `cluster`'s prefix into role and id; `None` for keys
/// this layout does not know (left alone, so newer writers can add kinds).
pub fn parse_worker_key(cluster: &str, key: &str) -> Option<(Role, String)> {
    let rest = key.strip_prefix(&cluster_prefix(cluster))?;
    let (kind, id) = rest.split_once('/')?;
    let role = Role::from_plural(kind)?;
    (!id.is_empty() && !id.contains('/')).then(|| (role, id.to_string()))
}

/// Cluster names and ids become key segments: keep them to a safe alphabet.
pub fn check_segment(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 128 || !s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("{what} `{s}` must be 1-128 characters of A-Z a-z 0-9 - _ ."));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_foreign_keys_are_ignored() {
        let k = worker_key("prod", Role::Target, "t-1");
        assert_eq!(k, "/aerie/v1/prod/targets/t-1");
        assert_eq!(parse_worker_key("prod", &k), Some((Role::Target, "t-1".into())));
        assert_eq!(parse_worker_key("prod", &worker_key("prod", Role::Draft, "d")), Some((Role::Draft, "d".into())));
        // Another cluster whose name extends this one's.
        assert_eq!(parse_worker_key("prod", "/aerie/v1/prod2/targets/t-1"), None);
        assert_eq!(parse_worker_key("prod", "/aerie/v1/prod/routers/r"), None);
        assert_eq!(parse_worker_key("prod", "/aerie/v1/prod/targets/"), None);
        assert_eq!(parse_worker_key("prod", "/aerie/v1/prod/targets/a/b"), None);
    }

    #[test]
    fn segments_are_checked() {
        assert!(check_segment("cluster", "prod-eu_1.a").is_ok());
        for bad in ["", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(check_segment("cluster", bad).unwrap_err().contains("cluster"), "{bad}");
        }
    }
}
