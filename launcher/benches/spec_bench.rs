//! Speculative decoding on MT-bench, side by side with plain decoding.
//!
//!     cargo bench -p aerie-launcher --bench spec_bench -- [QUESTIONS] [MAX_TOKENS]
//!
//! With QUESTIONS < 80 the questions are evenly spaced over the file. Any
//! further arguments keep only the configurations whose label contains one
//! of them (e.g. `-- 80 256 "NGRAM n=8" "EAGLE3 random 16k (3"`).
//!
//! For each MT-bench first turn (default all 80; greedy, EOS ignored, 256 new
//! tokens), plain decode and every drafter configuration run back to back on
//! the same prompt, so machine noise hits them alike. Every speculative
//! output is checked against plain's tokens. Reports per configuration τ
//! (spec_accept_length), decode tok/s and the speedup over plain decode in
//! the same run. Drafters: NGRAM, STANDALONE (SmolLM2 drafting for itself)
//! and random-weight EAGLE / EAGLE-3 heads (untrained: they show the cost of
//! drafting, not its benefit), and, when found, the trained head Aerie ships
//! (`models/smollm2-135m-eagle`), with and without its hot vocabulary.

use aerie_draft_worker::eagle::EagleKind;
use aerie_draft_worker::ngram::NgramConfig;
use aerie_draft_worker::random_head::{write_random_head, RandomHeadSpec};
use aerie_draft_worker::{DraftOptions, ProposerFactory, SpecAlgorithm};
use aerie_engine::generate::{generate, GenerateRequest};
use aerie_engine::spec::{speculative_generate, TreeSpec};
use aerie_engine::{ChatMessage, DType, Engine, SamplingParams};
use std::time::Instant;

struct Config {
    label: String,
    factory: ProposerFactory,
    tokens: usize,
    secs: f64,
    verifies: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let questions: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(80);
    let max_tokens: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let e = Engine::load("smollm2", DType::Auto).expect("load smollm2");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mt_bench.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    // Fewer than all: evenly spaced, so every category is represented.
    let picked: Vec<&str> = (0..questions.min(lines.len())).map(|i| lines[i * lines.len() / questions.min(lines.len())]).collect();
    let prompts: Vec<Vec<u32>> = picked
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            e.chat_prompt_ids(&[ChatMessage::new("user", v["turns"][0].as_str().unwrap())]).unwrap()
        })
        .collect();
    let heads = tempfile::tempdir().unwrap();
    let head = |kind: EagleKind, dv: Option<usize>| {
        let d = heads.path().join(format!("{kind:?}"));
        write_random_head(&d, &e.model.config, &RandomHeadSpec { kind, seed: 7, draft_vocab_size: dv, ..Default::default() }).unwrap();
        d
    };
    let eagle = head(EagleKind::Eagle, None);
    let eagle3 = head(EagleKind::Eagle3, Some(16384));
    let chain = TreeSpec { num_steps: 3, topk: 1, num_draft_tokens: 4 };
    let dflt = TreeSpec::default();
    let mk_map = |alg: SpecAlgorithm, dir: Option<&std::path::Path>, tree: TreeSpec, token_map: Option<std::path::PathBuf>| {
        let o = DraftOptions {
            algorithm: alg,
            draft_model_path: dir.map(|d| d.to_path_buf()),
            tree,
            token_map,
            ngram: NgramConfig { num_draft_tokens: tree.num_draft_tokens, ..Default::default() },
            min_draft_score: 0.0,
        };
        ProposerFactory::new(o, e.model.clone(), &e.tokenizer).unwrap()
    };
    let mk = |alg: SpecAlgorithm, dir: Option<&std::path::Path>, tree: TreeSpec| mk_map(alg, dir, tree, None);
    // The head Aerie trained and ships, with and without its hot vocabulary.
    let trained = aerie_draft_worker::shipped_head(&e.model);
    let chain2 = TreeSpec { num_steps: 2, topk: 1, num_draft_tokens: 3 };
    let mut configs: Vec<Config> = vec![
        ("NGRAM n=4", mk(SpecAlgorithm::Ngram, None, chain)),
        ("NGRAM n=8", mk(SpecAlgorithm::Ngram, None, dflt)),
        ("STANDALONE (3,1,4)", ProposerFactory::standalone(e.model.clone(), e.model.clone(), chain).unwrap()),
        ("STANDALONE (5,4,8)", ProposerFactory::standalone(e.model.clone(), e.model.clone(), dflt).unwrap()),
        ("EAGLE random (3,1,4)", mk(SpecAlgorithm::Eagle, Some(&eagle), chain)),
        ("EAGLE random (5,4,8)", mk(SpecAlgorithm::Eagle, Some(&eagle), dflt)),
        ("EAGLE3 random 16k (3,1,4)", mk(SpecAlgorithm::Eagle3, Some(&eagle3), chain)),
        ("EAGLE3 random 16k (5,4,8)", mk(SpecAlgorithm::Eagle3, Some(&eagle3), dflt)),
    ]
    .into_iter()
    .chain(trained.iter().flat_map(|d| {
        let hot = Some(d.join("hot_vocab.json")).filter(|p| p.is_file());
        [
            ("EAGLE trained (2,1,3)", mk(SpecAlgorithm::Eagle, Some(d), chain2)),
            ("EAGLE trained (3,1,4)", mk(SpecAlgorithm::Eagle, Some(d), chain)),
            ("EAGLE trained hot (2,1,3)", mk_map(SpecAlgorithm::Eagle, Some(d), chain2, hot.clone())),
            ("EAGLE trained hot (3,1,4)", mk_map(SpecAlgorithm::Eagle, Some(d), chain, hot.clone())),
            ("EAGLE trained hot (5,4,8)", mk_map(SpecAlgorithm::Eagle, Some(d), dflt, hot)),
        ]
    }))
    .filter(|(l, _)| args.len() <= 2 || args[2..].iter().any(|a| l.contains(a.as_str())))
    .map(|(l, f)| Config { label: l.to_string(), factory: f, tokens: 0, secs: 0.0, verifies: 0 })
    .collect();
    let (mut plain_tokens, mut plain_secs) = (0usize, 0.0f64);
    let t_all = Instant::now();
    for (qi, ids) in prompts.iter().enumerate() {
        let req = GenerateRequest { prompt_ids: ids, max_tokens, sampling: SamplingParams::default(), stop_ids: &[] };
        let plain = generate(&e.model, &req, &mut |_| {}).unwrap();
        plain_tokens += plain.token_ids.len();
        plain_secs += plain.stats.decode_ms / 1e3;
        for c in configs.iter_mut() {
            let mut p = c.factory.proposer();
            let (out, st) = speculative_generate(&e.model, p.as_mut(), &req, &mut |_| {}).unwrap();
            assert_eq!(out.token_ids, plain.token_ids, "{} on question {qi} differs from plain decoding", c.label);
            // Decode time: everything after the prompt's prefill, drafting included.
            c.secs += out.stats.decode_ms / 1e3;
            c.tokens += out.token_ids.len();
            c.verifies += st.spec_verify_ct;
        }
        eprintln!("question {}/{} done, {:.0}s elapsed", qi + 1, prompts.len(), t_all.elapsed().as_secs_f64());
    }
    let plain_rate = plain_tokens as f64 / plain_secs;
    println!("MT-bench first turns: {} questions, {max_tokens} new tokens, greedy, threads {}", prompts.len(), aerie_kernels::cpu::pool::threads());
    println!("{:<28} {:>6} {:>9} {:>9}", "config", "tau", "tok/s", "speedup");
    println!("{:<28} {:>6} {:>9.1} {:>9}", "plain decode", "-", plain_rate, "1.00");
    for c in &configs {
        let rate = c.tokens as f64 / c.secs;
        // Emitted per verify; the first token of each answer comes from prefill.
        let tau = (c.tokens - prompts.len()) as f64 / c.verifies as f64;
        println!("{:<28} {:>6.2} {:>9.1} {:>9.2}", c.label, tau, rate, rate / plain_rate);
    }
}
