//! Shared helpers: the real SmolLM2 target, fixed prompts, plain greedy
//! references, and random-weight heads written in the published layout.
#![allow(dead_code)]

use aerie_draft_worker::eagle::EagleKind;
use aerie_draft_worker::random_head::{write_random_head, RandomHeadSpec};
use aerie_engine::generate::{generate, GenerateRequest};
use aerie_engine::{ChatMessage, DType, Engine, SamplingParams};
use std::path::PathBuf;
use std::sync::OnceLock;

pub fn smollm2() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::load("smollm2", DType::Auto).expect("load smollm2"))
}

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

pub const NEW_TOKENS: usize = 128;

pub fn prompt_ids(i: usize) -> Vec<u32> {
    smollm2().chat_prompt_ids(&[ChatMessage::new("user", PROMPTS[i])]).unwrap()
}

/// Plain greedy continuations of every prompt (EOS not treated as a stop,
/// so each has exactly NEW_TOKENS tokens).
pub fn plain_greedy() -> &'static Vec<Vec<u32>> {
    static P: OnceLock<Vec<Vec<u32>>> = OnceLock::new();
    P.get_or_init(|| {
        let e = smollm2();
        (0..PROMPTS.len())
            .map(|i| {
                let ids = prompt_ids(i);
                let req = GenerateRequest { prompt_ids: &ids, max_tokens: NEW_TOKENS, sampling: SamplingParams::default(), stop_ids: &[] };
                generate(&e.model, &req, &mut |_| {}).unwrap().token_ids
            })
            .collect()
    })
}

/// A random head for SmolLM2, written once per test process.
pub fn random_head(kind: EagleKind) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let root = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let dir = root.path().join(format!("{kind:?}"));
    if !dir.join("config.json").exists() {
        // EAGLE-3 heads carry their own draft vocabulary; 16k of 49k is in
        // proportion to published ones (32k of 128k).
        let draft_vocab_size = (kind == EagleKind::Eagle3).then_some(16384);
        let spec = RandomHeadSpec { kind, seed: 7, draft_vocab_size, ..Default::default() };
        write_random_head(&dir, &smollm2().model.config, &spec).unwrap();
    }
    dir
}
