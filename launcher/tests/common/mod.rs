//! Helpers shared by the end-to-end tests: the real SmolLM2, a file-wide
//! lock so two clusters never share the two cores, and fixed prompts.
#![allow(dead_code)]

use aerie_engine::{DType, Engine};
use std::sync::{Mutex, OnceLock};

pub const PROMPTS: [&str; 10] = [
    "Name three rivers in Europe.",
    "Write a Python function that checks whether a number is prime.",
    "Count from 1 to 40, separated by commas.",
    "Explain why the sky is blue in two sentences.",
    "Repeat the sentence 'The quick brown fox jumps over the lazy dog.' five times.",
    "Give me a recipe for pancakes.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Translate 'Good morning, how are you?' into French, Spanish and German.",
    "List the planets of the solar system in order from the Sun.",
    "Write a haiku about autumn leaves.",
];

/// Held for a whole test: one cluster at a time.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::load("smollm2", DType::Auto).expect("load smollm2"))
}
