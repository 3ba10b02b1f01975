//! Property test of the request parser: random and mutated bodies never
//! panic the router and always get a 4xx in the OpenAI schema (or pass).
//!
//! CI runs it for a few seconds. The long run is outside CI:
//!
//!     AERIE_FUZZ_SECS=600 cargo test --release -p aerie-router --test fuzz_parse -- --nocapture
//!
//! Inputs: valid chat and completion bodies mutated structurally (fields
//! added, removed, retyped; huge numbers, deep nesting, long and non-ASCII
//! strings, thousands of stop strings) and byte-wise (flips, cuts,
//! duplications, invalid UTF-8).

use aerie_engine::{DType, Engine};
use aerie_router::{RouterConfig, RouterState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn seeds() -> Vec<(bool, Value)> {
    vec![
        (true, json!({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})),
        (true, json!({"model": "smollm2", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "stream": true, "stream_options": {"include_usage": true}, "stop": ["\n", "END"], "temperature": 0.7, "top_p": 0.9, "seed": 3})),
        (false, json!({"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 5, "top_k": 20, "min_p": 0.05})),
        (false, json!({"model": "smollm2", "prompt": ["x"], "echo": false, "n": 1})),
    ]
}

fn random_value(rng: &mut StdRng, depth: usize) -> Value {
    match rng.gen_range(0..10) {
        0 => Value::Null,
        1 => json!(rng.gen::<bool>()),
        2 => json!(rng.gen::<i64>()),
        3 => json!(rng.gen::<f64>() * 1e12 - 5e11),
        4 => json!(u64::MAX),
        5 => json!("é☃日本\u{0}\u{FFFF}".repeat(rng.gen_range(0..50))),
        6 => json!("x".repeat(rng.gen_range(0..5000))),
        7 if depth < 40 => Value::Array((0..rng.gen_range(0..4)).map(|_| random_value(rng, depth + 1)).collect()),
        8 if depth < 40 => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.gen_range(0..4) {
                let k = ["role", "content", "type", "text", "model", "stop", "x"][rng.gen_range(0..7)];
                m.insert(k.into(), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
        _ => json!(rng.gen_range(-3i64..5000)),
    }
}

fn mutate_structure(rng: &mut StdRng, v: &mut Value) {
    let keys = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "n", "stream", "stream_options", "logprobs", "top_logprobs", "user", "presence_penalty", "echo", "ignore_eos", "bogus"];
    let Value::Object(m) = v else { return };
    for _ in 0..rng.gen_range(1..4) {
        let k = keys[rng.gen_range(0..keys.len())];
        match rng.gen_range(0..4) {
            0 => {
                m.remove(k);
            }
            1 => {
                m.insert(k.into(), random_value(rng, 0));
            }
            2 if k == "stop" => {
                m.insert(k.into(), json!((0..rng.gen_range(0..3000)).map(|i| format!("s{i}")).collect::<Vec<_>>()));
            }
            _ => {
                let mut nested = json!("deep");
                for _ in 0..rng.gen_range(1..200) {
                    nested = json!([nested]);
                }
                m.insert(k.into(), nested);
            }
        }
    }
}

fn mutate_bytes(rng: &mut StdRng, b: &mut Vec<u8>) {
    for _ in 0..rng.gen_range(1..6) {
        if b.is_empty() {
            b.push(b'{');
        }
        let i = rng.gen_range(0..b.len());
        match rng.gen_range(0..5) {
            0 => b[i] = rng.gen(),
            1 => b.truncate(i),
            2 => {
                let j = rng.gen_range(i..b.len().min(i + 64) + 1).min(b.len());
                let chunk = b[i..j].to_vec();
                b.splice(i..i, chunk);
            }
            3 => b.insert(i, [0xff, 0xfe, 0xc0, b'"', b'\\', b'{', b']'][rng.gen_range(0..7)]),
            _ => {
                b.drain(i..(i + rng.gen_range(0..16)).min(b.len()));
            }
        }
    }
}

/// A router over the real SmolLM2 tokenizer and template; no worker is
/// contacted by the parser.
fn state() -> std::sync::Arc<RouterState> {
    let e = Engine::load("smollm2", DType::Auto).unwrap();
    let ctx = e.model.config.max_position_embeddings;
    let Engine { tokenizer, template, .. } = e;
    let cfg = RouterConfig { targets: vec!["http://127.0.0.1:9".into()], ..Default::default() };
    RouterState::new(cfg, tokenizer, template, ctx, None).unwrap()
}

/// The libFuzzer corpus (`router/fuzz`, grown by `cargo fuzz run request`)
/// replayed: each file is one input, its first byte choosing the endpoint
/// (even: chat) as in the fuzz target.
#[test]
fn the_fuzz_corpus_keeps_the_parser_contract() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = rt.enter();
    let state = state();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/request");
    let mut n = 0;
    for f in std::fs::read_dir(&dir).unwrap() {
        let path = f.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let Some((&mode, body)) = data.split_first() else { continue };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.check_parse(mode % 2 == 0, body)));
        r.unwrap_or_else(|_| panic!("the parser panicked on {}", path.display())).unwrap();
        n += 1;
    }
    eprintln!("replayed {n} corpus inputs");
    assert!(n >= 20, "the committed corpus has {n} inputs");
}

#[test]
fn parser_survives_random_and_mutated_requests() {
    let secs: u64 = std::env::var("AERIE_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = rt.enter();
    let state = state();
    let mut rng = StdRng::seed_from_u64(std::env::var("AERIE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1));
    let (mut cases, mut accepted) = (0u64, 0u64);
    let mut statuses = std::collections::BTreeMap::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        let (chat, mut v) = seeds()[rng.gen_range(0..4)].clone();
        mutate_structure(&mut rng, &mut v);
        let mut bytes = serde_json::to_vec(&v).unwrap();
        if rng.gen_bool(0.5) {
            mutate_bytes(&mut rng, &mut bytes);
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.check_parse(chat, &bytes)));
        let status = r.unwrap_or_else(|_| panic!("the parser panicked on {:?}", String::from_utf8_lossy(&bytes))).unwrap();
        cases += 1;
        if status == 200 {
            accepted += 1;
        } else {
            *statuses.entry(status).or_insert(0u64) += 1;
        }
    }
    eprintln!("fuzz: {cases} cases in {secs} s, {accepted} accepted, errors by status {statuses:?}");
    assert!(cases > 100 && accepted > 0);
}
