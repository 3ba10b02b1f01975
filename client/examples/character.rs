//! The character program against any OpenAI-compatible server:
//!
//! ```text
//! cargo run --release -p aerie-client --example character -- --base-url http://127.0.0.1:30000/v1 [--spec-tokens 64]
//! ```
//!
//! Prints one JSON object: the fields, the number of API calls, and which
//! fields came from fallback calls. Without `--spec-tokens` it runs in
//! normal mode (one call per field).

use aerie_client::{demo, Api, Client, ClientConfig, Mode, PromptFormat};
use clap::Parser;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// Up to and including /v1.
    #[arg(long, default_value = "http://127.0.0.1:30000/v1")]
    base_url: String,
    #[arg(long, default_value = "smollm2")]
    model: String,
    #[arg(long, env = "OPENAI_API_KEY")]
    api_key: Option<String>,
    /// num_api_spec_tokens: one call of this many tokens for the whole turn.
    #[arg(long)]
    spec_tokens: Option<u32>,
    /// `chat` (continue_final_message) or `completions` (ChatML prompt).
    #[arg(long, default_value = "chat")]
    api: String,
    /// Ask for usage on every chunk (vLLM, Aerie), for exact token counts.
    #[arg(long)]
    continuous_usage: bool,
    /// Seconds per call.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

fn main() {
    let a = Args::parse();
    let mut cfg = ClientConfig::new(&a.base_url, &a.model);
    cfg.api_key = a.api_key;
    cfg.timeout = Duration::from_secs(a.timeout);
    cfg.continuous_usage = a.continuous_usage;
    cfg.api = match a.api.as_str() {
        "chat" => Api::Chat,
        "completions" => Api::Completions(PromptFormat::chatml()),
        o => {
            eprintln!("error: --api must be chat or completions, not `{o}`");
            std::process::exit(2);
        }
    };
    let mode = match a.spec_tokens {
        Some(n) => Mode::Speculative { num_api_spec_tokens: n },
        None => Mode::Normal,
    };
    let client = Client::new(cfg);
    // Fields go to stderr as they complete; the summary to stdout.
    match client.run_streaming(&demo::character(), mode, &mut |f| eprintln!("{}: {} ({})", f.name, f.value, f.source.as_str())) {
        Ok(r) => {
            let mut v = r.to_json();
            v["mode"] = serde_json::json!(if a.spec_tokens.is_some() { "speculative" } else { "normal" });
            println!("{v}");
        }
        Err(e) => {
            eprintln!("error ({}): {e}", e.error_type());
            std::process::exit(1);
        }
    }
}
