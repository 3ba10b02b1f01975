//! Router settings with their defaults.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The model name clients must send (`model`). Default `smollm2`.
    pub served_model_name: String,
    /// Target worker gRPC addresses (`http://host:port`).
    pub targets: Vec<String>,
    /// Draft worker gRPC addresses; empty means no speculation.
    pub drafts: Vec<String>,
    /// `round_robin`, `least_load` or `prefix_affinity`. Default `least_load`.
    pub policy: String,
    /// When set, requests need `Authorization: Bearer <key>`. Default none.
    pub api_key: Option<String>,
    /// Largest request body accepted, bytes; larger gets 413. Default 4 MiB.
    pub max_body_bytes: usize,
    /// Most stop strings per request. Default 16 (OpenAI allows 4).
    pub max_stop_strings: usize,
    /// How often workers are probed. Default 2 s.
    pub health_interval: Duration,
    /// Tokens hashed by the prefix-affinity policy. Default 64.
    pub prefix_tokens: usize,
    /// Requests in flight per API key (the bearer token; requests without
    /// one share a key); past it 429 with `Retry-After`. 0: no limit
    /// (`--max-concurrent-requests-per-key`). Default 0.
    pub max_concurrent_requests_per_key: usize,
    /// Prompts tokenized at once; more wait their turn. Default: the cores.
    pub max_concurrent_tokenizations: usize,
    /// A request body must arrive within this. Default 60 s.
    pub body_read_timeout: Duration,
    /// A request that has not finished by then is cancelled on its worker
    /// and ends with 504 (`--request-timeout-secs`, sgl-model-gateway's
    /// flag). Default 1800 s.
    pub request_timeout: Duration,
    /// How tool calls are written in the output (SGLang's
    /// `--tool-call-parser`: `hermes`/`qwen25` or `llama3`). Default: read
    /// from the chat template.
    pub tool_call_parser: Option<String>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            served_model_name: "smollm2".into(),
            targets: Vec::new(),
            drafts: Vec::new(),
            policy: "least_load".into(),
            api_key: None,
            max_body_bytes: 4 << 20,
            max_stop_strings: 16,
            health_interval: Duration::from_secs(2),
            prefix_tokens: 64,
            max_concurrent_requests_per_key: 0,
            max_concurrent_tokenizations: std::thread::available_parallelism().map_or(2, |n| n.get()),
            body_read_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(1800),
            tool_call_parser: None,
        }
    }
}

/// A static worker list read from a TOML file (`aerie router --workers-file`):
///
/// ```toml
/// # gRPC addresses, as for --target / --draft
/// targets = ["http://10.0.0.5:31000", "http://10.0.0.6:31000"]
/// drafts  = ["http://10.0.0.7:32000"]
/// ```
///
/// Both keys are optional; any other key is an error, so a misspelt
/// `target = [...]` cannot silently leave the router with no workers.
#[derive(Debug, Default, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerList {
    /// Target worker gRPC addresses.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Draft worker gRPC addresses.
    #[serde(default)]
    pub drafts: Vec<String>,
}

impl WorkerList {
    /// Parses a worker list; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, String> {
        let list: WorkerList = toml::from_str(text).map_err(|e| format!("{origin}: {}", e.to_string().trim_end()))?;
        for a in list.targets.iter().chain(&list.drafts) {
            if !(a.starts_with("http://") || a.starts_with("https://")) {
                return Err(format!("{origin}: worker address `{a}` must start with http:// or https://"));
            }
        }
        Ok(list)
    }

    /// Reads and parses a worker list file.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading worker list {}: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Adds `other`'s workers that are not already listed, keeping order.
    pub fn merge(&mut self, other: WorkerList) {
        for (mine, theirs) in [(&mut self.targets, other.targets), (&mut self.drafts, other.drafts)] {
            for a in theirs {
                if !mine.contains(&a) {
                    mine.push(a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WorkerList;

    #[test]
    fn worker_list_parses_both_roles_and_either_may_be_absent() {
        let l = WorkerList::parse("targets = [\"http://a:1\", \"http://b:2\"]\ndrafts = [\"http://c:3\"]\n", "w.toml").unwrap();
        assert_eq!(l.targets, ["http://a:1", "http://b:2"]);
        assert_eq!(l.drafts, ["http://c:3"]);
        let l = WorkerList::parse("targets = [\"http://a:1\"]", "w.toml").unwrap();
        assert!(l.drafts.is_empty());
        assert_eq!(WorkerList::parse("", "w.toml").unwrap(), WorkerList::default());
    }

    #[test]
    fn worker_list_errors_name_the_file_and_the_problem() {
        let e = WorkerList::parse("target = [\"http://a:1\"]", "w.toml").unwrap_err();
        assert!(e.starts_with("w.toml:") && e.contains("target"), "{e}");
        let e = WorkerList::parse("targets = \"http://a:1\"", "w.toml").unwrap_err();
        assert!(e.contains("w.toml") && e.contains("sequence"), "{e}");
        let e = WorkerList::parse("targets = [\"a:1\"]", "w.toml").unwrap_err();
        assert!(e.contains("`a:1`") && e.contains("http://"), "{e}");
        let e = WorkerList::parse("targets = [", "w.toml").unwrap_err();
        assert!(e.starts_with("w.toml:"), "{e}");
        let e = WorkerList::load(std::path::Path::new("/nonexistent/w.toml")).unwrap_err();
        assert!(e.contains("/nonexistent/w.toml"), "{e}");
    }

    #[test]
    fn merging_keeps_order_and_drops_duplicates() {
        let mut a = WorkerList { targets: vec!["http://a:1".into()], drafts: vec![] };
        a.merge(WorkerList { targets: vec!["http://b:2".into(), "http://a:1".into()], drafts: vec!["http://c:3".into()] });
        assert_eq!(a.targets, ["http://a:1", "http://b:2"]);
        assert_eq!(a.drafts, ["http://c:3"]);
    }
}
