//! The draft step's cost against the number of sequences (issue 36):
//! one draft worker session proposing for N requests, each having committed
//! one token since its last proposal (the steady state of a (1, 1, 2)
//! chain), drafted one after another (`apart`) and with their catch-ups in
//! one head pass (`together`, what the draft worker does with the proposals
//! a target sends at once). The shipped head with its hot vocabulary, at
//! the serve default (1, 1, 2) and at (3, 1, 4). Prints the time per draft
//! step for N = 1, 2, 4, 8, 16 and the ratio t(8) / t(1).
//!
//!   cargo bench -p aerie-launcher --bench draft_batch_bench [-- ROUNDS]

use aerie_draft_worker::eagle::{catch_up_many, EagleProposer};
use aerie_draft_worker::ngram::NgramConfig;
use aerie_draft_worker::{DraftOptions, ProposerFactory, SpecAlgorithm};
use aerie_engine::spec::{Features, Proposer, TreeSpec};
use aerie_engine::{DType, Engine};
use std::time::Instant;

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(40);
    let e = Engine::load("smollm2", DType::Auto).expect("load smollm2");
    let Some(dir) = aerie_draft_worker::shipped_head(&e.model) else {
        eprintln!("the shipped head (models/smollm2-135m-eagle) was not found");
        return;
    };
    let h = e.model.config.hidden_size;
    let hot = Some(dir.join("hot_vocab_2048.json")).filter(|p| p.is_file()).or_else(|| Some(dir.join("hot_vocab.json")).filter(|p| p.is_file()));
    println!("draft step for N sequences, {rounds} rounds each, ms per step (median)");
    println!("{:<8} {:>4} {:>10} {:>10} {:>8}", "tree", "N", "apart", "together", "gain");
    for (label, tree, depth) in [("(1,1,2)", TreeSpec { num_steps: 1, topk: 1, num_draft_tokens: 2 }, 1), ("(3,1,4)", TreeSpec { num_steps: 3, topk: 1, num_draft_tokens: 4 }, 3)] {
        let opts = DraftOptions { algorithm: SpecAlgorithm::Eagle, draft_model_path: Some(dir.clone()), tree, token_map: hot.clone(), ngram: NgramConfig::default(), min_draft_score: 0.0 };
        let f = ProposerFactory::new(opts, e.model.clone(), &e.tokenizer).unwrap();
        let mut at1 = (0.0, 0.0);
        for n in [1usize, 2, 4, 8, 16] {
            let mut props: Vec<Box<dyn Proposer>> = (0..n)
                .map(|i| {
                    let mut p = f.proposer();
                    // Prompts of 40 to 100 tokens.
                    let len = 40 + (i * 13) % 61;
                    let toks: Vec<u32> = (0..len as u32).map(|t| 200 + (t * 7 + i as u32) % 5000).collect();
                    let feats = Features { width: h, data: (0..(len - 1) * h).map(|k| ((k % 97) as f32 - 48.0) / 64.0).collect() };
                    p.begin(&toks, &feats).unwrap();
                    p.propose(depth).unwrap();
                    p
                })
                .collect();
            let mut times = [Vec::new(), Vec::new()];
            for r in 0..rounds {
                for (mode, t) in times.iter_mut().enumerate() {
                    for (i, p) in props.iter_mut().enumerate() {
                        let feats = Features { width: h, data: (0..h).map(|k| (((k + r + i) % 89) as f32 - 44.0) / 64.0).collect() };
                        p.commit(&[300 + ((r * 31 + i * 17 + mode) % 4000) as u32], &feats).unwrap();
                    }
                    let t0 = Instant::now();
                    if mode == 1 {
                        let mut eagles: Vec<&mut EagleProposer> = props.iter_mut().filter_map(|p| p.as_any_mut()?.downcast_mut::<EagleProposer>()).collect();
                        catch_up_many(&mut eagles).unwrap();
                    }
                    for p in props.iter_mut() {
                        std::hint::black_box(p.propose(depth).unwrap());
                    }
                    t.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            let med = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (a, b) = (med(&mut times[0]), med(&mut times[1]));
            if n == 1 {
                at1 = (a, b);
            }
            println!("{label:<8} {n:>4} {a:>10.2} {b:>10.2} {:>7.2}x", a / b);
            if n == 8 {
                println!("{label:<8} t(8)/t(1): apart {:.2}, together {:.2}", a / at1.0, b / at1.1);
            }
        }
    }
}
