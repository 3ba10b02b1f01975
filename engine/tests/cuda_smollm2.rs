//! The real SmolLM2 on the CUDA path in interpreter mode: its top-1 token
//! agrees with the CPU f32 path, teacher-forced along the CPU's own greedy
//! continuations, and a 16-node tree scored in one forward gives each node
//! the logits of its path decoded token by token, bit for bit.

use crate::common;
use aerie_engine::cuda::{CudaModel, CudaSeqInput};
use aerie_engine::{AttnMask, ChatMessage, ForwardOptions, LogitsRows, SeqInput};
use aerie_kernels::cpu::ops::argmax;
use common::*;
use std::sync::OnceLock;

const PROMPTS: [&str; 5] = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a hash table is in two sentences.",
    "List three prime numbers greater than 50.",
    "How do plants make their food?",
];

fn device_model() -> &'static CudaModel {
    static M: OnceLock<CudaModel> = OnceLock::new();
    M.get_or_init(|| CudaModel::from_model(&smollm2_f32().model, test_device(2 << 30), 4096).unwrap())
}

fn prompt_ids(q: &str) -> Vec<u32> {
    smollm2_f32().chat_prompt_ids(&[ChatMessage::new("user", q)]).unwrap()
}

#[test]
fn top1_agrees_with_the_cpu_f32_path_teacher_forced() {
    let steps: usize = std::env::var("AERIE_CUDA_AGREE_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(32);
    let cpu = &smollm2_f32().model;
    let dm = device_model();
    let vocab = cpu.config.vocab_size;
    let (mut agree, mut total) = (0usize, 0usize);
    for q in PROMPTS {
        let prompt = prompt_ids(q);
        // The CPU's greedy continuation, with its logits at each step.
        let mut cache = cpu.new_cache();
        let mut toks = prompt.clone();
        let mut cpu_top = Vec::new();
        let mut feed = prompt.clone();
        for _ in 0..steps {
            let out = cpu
                .forward(&mut [SeqInput { cache: &mut cache, tokens: &feed, positions: None, mask: AttnMask::Causal, logits: LogitsRows::Last }], &ForwardOptions::default())
                .unwrap();
            let next = argmax(&out[0].logits).0 as u32;
            cpu_top.push(next);
            toks.push(next);
            feed = vec![next];
        }
        // The device path fed the same tokens (teacher forcing): one forward
        // with logits at every position after the prompt.
        let mut seq = dm.new_seq();
        let n = prompt.len();
        let rows: Vec<usize> = (n - 1..n - 1 + steps).collect();
        let out = dm
            .forward(&mut [CudaSeqInput { seq: &mut seq, tokens: &toks[..n - 1 + steps], positions: None, mask: AttnMask::Causal, logits: LogitsRows::Rows(rows) }], false)
            .unwrap();
        for (i, l) in out[0].logits.chunks(vocab).enumerate() {
            total += 1;
            agree += (argmax(l).0 as u32 == cpu_top[i]) as usize;
        }
    }
    let rate = agree as f64 / total as f64;
    eprintln!("CUDA path (interpreted) top-1 agreement with the CPU f32 path: {agree}/{total} = {rate:.4}");
    assert!(rate >= 0.98, "top-1 agreement {agree}/{total}");
}

#[test]
fn a_16_node_tree_on_smollm2_equals_each_path_decoded_alone() {
    let dm = device_model();
    let prompt = prompt_ids(PROMPTS[2]);
    let parents: Vec<Option<usize>> =
        vec![None, Some(0), Some(0), Some(1), Some(1), Some(2), Some(3), Some(3), Some(4), Some(6), None, Some(10), Some(11), Some(5), Some(9), Some(14)];
    let tree: Vec<u32> = (0..16u32).map(|i| 1000 + 37 * i).collect();
    let depth = |mut n: usize| {
        let mut d = 0;
        while let Some(p) = parents[n] {
            n = p;
            d += 1;
        }
        d
    };
    let positions: Vec<u32> = (0..16).map(|n| (prompt.len() + depth(n)) as u32).collect();
    let mut seq = dm.new_seq();
    dm.forward(&mut [CudaSeqInput { seq: &mut seq, tokens: &prompt, positions: None, mask: AttnMask::Causal, logits: LogitsRows::None }], false).unwrap();
    let out = dm
        .forward(&mut [CudaSeqInput { seq: &mut seq, tokens: &tree, positions: Some(&positions), mask: AttnMask::from_parents(&parents).unwrap(), logits: LogitsRows::All }], false)
        .unwrap();
    let vocab = dm.config.vocab_size;
    let mut base = dm.new_seq();
    dm.forward(&mut [CudaSeqInput { seq: &mut base, tokens: &prompt, positions: None, mask: AttnMask::Causal, logits: LogitsRows::None }], false).unwrap();
    for n in 0..16 {
        let mut path = vec![n];
        while let Some(p) = parents[*path.last().unwrap()] {
            path.push(p);
        }
        path.reverse();
        // The prompt prefilled once, copied onto fresh pages for each path.
        let mut alone = base.fork().unwrap();
        let mut last = Vec::new();
        for &node in &path {
            last = dm
                .forward(&mut [CudaSeqInput { seq: &mut alone, tokens: &[tree[node]], positions: None, mask: AttnMask::Causal, logits: LogitsRows::Last }], false)
                .unwrap()
                .remove(0)
                .logits;
        }
        assert_eq!(last[..], out[0].logits[n * vocab..(n + 1) * vocab], "node {n} (path {path:?})");
    }
}
