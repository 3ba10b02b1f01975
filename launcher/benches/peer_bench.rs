//! Single-stream speed against llama.cpp's OpenAI server, side by side.
//!
//!     bash scripts/install_llama_cpp.sh     # once: builds the peer
//!     cargo bench -p aerie-launcher --bench peer_bench -- [QUESTIONS] [MAX_TOKENS]
//!
//! Three servers on loopback, all loading the same SmolLM2 GGUF:
//! `aerie serve` (EAGLE speculation, the default), `aerie serve
//! --no-speculation`, and `python -m llama_cpp.server`
//! (llama-cpp-python[server]==0.3.36, `repeat_penalty` 1.0, the same number
//! of threads). For each MT-bench first turn (default 16, evenly spaced) the
//! same greedy chat request goes to each server in turn, one at a time,
//! rotating the order. Reported: completion tokens over end-to-end time per
//! server, and Aerie's ratios to llama.cpp. The peer's python comes from
//! `AERIE_LLAMA_CPP_PYTHON` or the installer's default venv.

use aerie_bench::servers::{llama_cpp_python, start_aerie, start_llama_cpp, LocalServer};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct Server {
    name: &'static str,
    /// Stops the process when dropped.
    local: LocalServer,
    extra: Value,
}

impl Server {
    fn url(&self) -> String {
        format!("{}/chat/completions", self.local.base_url)
    }
}

fn aerie(name: &'static str, threads: usize, extra: &[&str]) -> Server {
    let args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    let local = start_aerie(std::path::Path::new(env!("CARGO_BIN_EXE_aerie")), name, Some(threads), &args, Duration::from_secs(600), true).expect("aerie serve failed");
    Server { name, local, extra: json!({}) }
}

fn llama_cpp(gguf: &std::path::Path, threads: usize) -> Server {
    let python = match std::env::var("AERIE_LLAMA_CPP_PYTHON") {
        Ok(p) => std::path::PathBuf::from(p),
        Err(_) => llama_cpp_python(false).unwrap_or_else(|e| {
            eprintln!("{e}; run: bash scripts/install_llama_cpp.sh");
            std::process::exit(2);
        }),
    };
    let local = start_llama_cpp(&python, gguf, threads, Duration::from_secs(120), true).expect("llama.cpp server did not start");
    Server { name: "llama.cpp server", local, extra: json!({"repeat_penalty": 1.0}) }
}

/// (completion tokens, seconds, text)
fn ask(s: &Server, question: &str, max_tokens: usize) -> (u64, f64, String) {
    let mut body = json!({"model": "smollm2", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0});
    for (k, v) in s.extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let t = Instant::now();
    let resp = ureq::post(&s.url()).set("Content-Type", "application/json").send_string(&body.to_string()).unwrap_or_else(|e| panic!("{}: {e}", s.name));
    let v: Value = serde_json::from_str(&resp.into_string().unwrap()).unwrap();
    let secs = t.elapsed().as_secs_f64();
    (v["usage"]["completion_tokens"].as_u64().unwrap_or(0), secs, v["choices"][0]["message"]["content"].as_str().unwrap_or("").to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let questions: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(16);
    let max_tokens: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(128);
    let threads: usize = std::env::var("AERIE_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(2);
    let gguf = aerie_engine::fetch::resolve_model("smollm2").expect("fetch smollm2");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mt_bench.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let n = questions.min(lines.len());
    let qs: Vec<String> = (0..n).map(|i| serde_json::from_str::<Value>(lines[i * lines.len() / n]).unwrap()["turns"][0].as_str().unwrap().to_string()).collect();

    let servers = [aerie("aerie (EAGLE)", threads, &[]), aerie("aerie (no speculation)", threads, &["--no-speculation"]), llama_cpp(&gguf, threads)];
    for s in &servers {
        ask(s, "Hello", 8); // warm-up
    }
    let mut sums = vec![(0u64, 0f64); servers.len()];
    let mut same_as_plain = 0;
    for (i, q) in qs.iter().enumerate() {
        let mut texts = vec![String::new(); servers.len()];
        for j in 0..servers.len() {
            let k = (i + j) % servers.len();
            let (toks, secs, text) = ask(&servers[k], q, max_tokens);
            sums[k].0 += toks;
            sums[k].1 += secs;
            texts[k] = text;
        }
        same_as_plain += (texts[0] == texts[1]) as usize;
        eprintln!("question {i}: {}", servers.iter().zip(&sums).map(|(s, (t, x))| format!("{} {:.1} tok/s", s.name, *t as f64 / x)).collect::<Vec<_>>().join(", "));
    }
    println!("\n## Single stream against llama.cpp's server, {n} MT-bench first turns, max {max_tokens} tokens, greedy, {threads} threads\n");
    println!("| server | completion tokens | seconds | tok/s | ratio to llama.cpp |");
    println!("|---|---|---|---|---|");
    let peer = sums[2].0 as f64 / sums[2].1;
    for (s, (t, x)) in servers.iter().zip(&sums) {
        println!("| {} | {t} | {x:.1} | {:.1} | {:.2} |", s.name, *t as f64 / x, *t as f64 / x / peer);
    }
    println!("\nAerie with speculation gave the same text as without on {same_as_plain} of {n} questions.");
}
