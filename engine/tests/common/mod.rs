//! Shared helpers for tests that run the real SmolLM2 model.
#![allow(dead_code)]

use aerie_engine::{DType, Engine};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The default model, fetched into the model cache on first use.
pub fn smollm2() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::load("smollm2", DType::Auto).expect("load smollm2"))
}

pub fn smollm2_f32() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::load("smollm2", DType::F32).expect("load smollm2 f32"))
}

pub fn oracle(name: &str) -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/oracle").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}
