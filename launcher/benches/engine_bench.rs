//! Engine benchmark, side by side with llama.cpp in the same run.
//!
//!     cargo bench -p aerie-launcher --bench engine_bench
//!
//! Measures, for Aerie and for llama.cpp (llama-cpp-python 0.3.36, same GGUF,
//! same threads), interleaved A B A B over `ROUNDS` rounds:
//! - decode tok/s: batch 1, 256 greedy tokens after an MT-bench prompt;
//! - prefill tok/s: a 512-token prompt;
//! - the verify cost curve time(k)/time(1), k = 1..32, at 256 tokens of context.
//! The peer is found at $AERIE_LLAMA_CPP_PYTHON (a Python with llama_cpp), else
//! /opt/lcp/bin/python; without it only Aerie's figures are printed.

use aerie_engine::{AttnMask, ChatMessage, DType, Engine, ForwardOptions, LogitsRows, SeqInput};
use std::process::Command;
use std::time::Instant;

const ROUNDS: usize = 3;
const DECODE: usize = 256;
const KS: [usize; 6] = [1, 2, 4, 8, 16, 32];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Figures {
    decode: f64,
    prefill: f64,
    verify_ms: Vec<f64>,
}

fn aerie_round(e: &Engine, prompt: &[u32], long: &[u32]) -> Figures {
    let m = &e.model;
    let opts = ForwardOptions::default();
    let step = |c: &mut aerie_engine::KvCache, t: &[u32], rows: LogitsRows| {
        m.forward(&mut [SeqInput { cache: c, tokens: t, positions: None, mask: AttnMask::Causal, logits: rows }], &opts).unwrap().remove(0)
    };
    // Decode.
    let mut c = m.new_cache();
    let mut out = step(&mut c, prompt, LogitsRows::Last);
    let t0 = Instant::now();
    for _ in 0..DECODE {
        let next = aerie_kernels::cpu::ops::argmax(&out.logits).0 as u32;
        out = step(&mut c, &[next], LogitsRows::Last);
    }
    let decode = DECODE as f64 / t0.elapsed().as_secs_f64();
    // Prefill.
    let mut c = m.new_cache();
    let t0 = Instant::now();
    step(&mut c, &long[..512], LogitsRows::Last);
    let prefill = 512.0 / t0.elapsed().as_secs_f64();
    // Verify curve: k rows with logits after 256 cached tokens.
    let mut base = m.new_cache();
    step(&mut base, &long[..256], LogitsRows::None);
    let verify_ms = KS
        .iter()
        .map(|&k| {
            median(
                (0..7)
                    .map(|_| {
                        let t0 = Instant::now();
                        step(&mut base, &long[256..256 + k], LogitsRows::All);
                        let dt = t0.elapsed().as_secs_f64() * 1e3;
                        base.truncate(256);
                        dt
                    })
                    .collect(),
            )
        })
        .collect();
    Figures { decode, prefill, verify_ms }
}

fn peer_round(py: &str, model: &str, threads: usize, prompt_f: &str, long_f: &str) -> Result<Figures, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/llama_cpp_peer.py");
    let out = Command::new(py)
        .args([script, model, &threads.to_string(), prompt_f, long_f, &DECODE.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(Figures {
        decode: v["decode_tok_s"].as_f64().unwrap_or(0.0),
        prefill: v["prefill_tok_s"].as_f64().unwrap_or(0.0),
        verify_ms: KS.iter().map(|k| v["verify_ms"][k.to_string()].as_f64().unwrap_or(0.0)).collect(),
    })
}

fn main() {
    let threads: usize = std::env::var("AERIE_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(2);
    aerie_kernels::cpu::pool::set_threads(threads);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().ok();
    let model = aerie_engine::fetch::resolve_model("smollm2").unwrap();
    let e = Engine::load_path(&model, DType::Auto).unwrap();
    let mt = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/mt_bench.jsonl")).expect("../shared/data/mt_bench.jsonl");
    let qs: Vec<serde_json::Value> = mt.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let first = qs[0]["turns"][0].as_str().unwrap();
    let prompt = e.chat_prompt_ids(&[ChatMessage::new("user", first)]).unwrap();
    let mut long = Vec::new();
    for q in &qs {
        long.extend(e.tokenizer.encode(q["turns"][0].as_str().unwrap(), true).unwrap());
        if long.len() > 600 {
            break;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (pf, lf) = (dir.path().join("prompt.json"), dir.path().join("long.json"));
    std::fs::write(&pf, serde_json::to_string(&prompt).unwrap()).unwrap();
    std::fs::write(&lf, serde_json::to_string(&long).unwrap()).unwrap();
    let py = std::env::var("AERIE_LLAMA_CPP_PYTHON").unwrap_or_else(|_| "/opt/lcp/bin/python".into());

    let (mut ours, mut peers) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        eprintln!("round {}/{ROUNDS}: aerie", r + 1);
        ours.push(aerie_round(&e, &prompt, &long));
        eprintln!("round {}/{ROUNDS}: llama.cpp", r + 1);
        match peer_round(&py, model.to_str().unwrap(), threads, pf.to_str().unwrap(), lf.to_str().unwrap()) {
            Ok(f) => peers.push(f),
            Err(err) => eprintln!("llama.cpp peer unavailable ({py}): {}", err.lines().last().unwrap_or("")),
        }
    }
    let agg = |v: &[Figures]| Figures {
        decode: median(v.iter().map(|f| f.decode).collect()),
        prefill: median(v.iter().map(|f| f.prefill).collect()),
        verify_ms: (0..KS.len()).map(|i| median(v.iter().map(|f| f.verify_ms[i]).collect())).collect(),
    };
    let a = agg(&ours);
    println!("threads: {threads}, rounds: {ROUNDS} (medians), model: {}", model.display());
    println!("| metric | aerie | llama.cpp | aerie / llama.cpp |");
    println!("|---|---|---|---|");
    let p = (!peers.is_empty()).then(|| agg(&peers));
    let row = |name: &str, x: f64, y: Option<f64>| match y {
        Some(y) => println!("| {name} | {x:.1} | {y:.1} | {:.2} |", x / y),
        None => println!("| {name} | {x:.1} | - | - |"),
    };
    row("decode tok/s", a.decode, p.as_ref().map(|p| p.decode));
    row("prefill tok/s (512)", a.prefill, p.as_ref().map(|p| p.prefill));
    for (i, k) in KS.iter().enumerate() {
        row(&format!("verify k={k} ms @256 ctx"), a.verify_ms[i], p.as_ref().map(|p| p.verify_ms[i]));
    }
    for (i, k) in KS.iter().enumerate().skip(1) {
        let ra = a.verify_ms[i] / a.verify_ms[0];
        match &p {
            Some(p) => println!("| time({k})/time(1) | {ra:.2} | {:.2} | |", p.verify_ms[i] / p.verify_ms[0]),
            None => println!("| time({k})/time(1) | {ra:.2} | - | |"),
        }
    }
}
