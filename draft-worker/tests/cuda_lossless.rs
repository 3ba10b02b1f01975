//! Greedy speculation on the CUDA path (interpreter mode: the host code and
//! `.cu` kernels a GPU runs, executed on the CPU) emits exactly the CUDA
//! path's plain greedy tokens, on the real SmolLM2: EAGLE with the shipped
//! head at SGLang's (5, 4, 8) tree, the head itself on the device too, and
//! NGRAM; 4 prompts × 24 tokens (cut
//! from 5 × 32 to keep the suite within its time: the interpreter runs a
//! SmolLM2 step in about a second).

use aerie_draft_worker::ngram::NgramConfig;
use aerie_draft_worker::{DraftOptions, ProposerFactory, SpecAlgorithm};
use aerie_engine::generate::{generate, GenerateRequest};
use aerie_engine::spec::{speculative_generate, TreeSpec};
use aerie_engine::{ChatMessage, DType, Engine, Model, SamplingParams};
use aerie_kernels::cuda::device::InterpDevice;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

const PROMPTS: [&str; 4] = [
    "Name three rivers in Europe.",
    "Count from 1 to 40, separated by commas.",
    "Explain why the sky is blue in two sentences.",
    "Write a haiku about autumn leaves.",
];
const NEW_TOKENS: usize = 24;

/// SmolLM2 and the same model with its forward pass on the interpreted device.
fn engines() -> &'static (Engine, Arc<Model>) {
    static E: OnceLock<(Engine, Arc<Model>)> = OnceLock::new();
    E.get_or_init(|| {
        let host = Engine::load("smollm2", DType::Auto).unwrap();
        let dev = Engine::load("smollm2", DType::Auto).unwrap();
        let model = Arc::try_unwrap(dev.model).ok().unwrap().to_device(Arc::new(InterpDevice::new(2 << 30)), 8192).unwrap();
        (host, Arc::new(model))
    })
}

fn prompt_ids(i: usize) -> Vec<u32> {
    engines().0.chat_prompt_ids(&[ChatMessage::new("user", PROMPTS[i])]).unwrap()
}

fn plain_on_device() -> &'static Vec<Vec<u32>> {
    static P: OnceLock<Vec<Vec<u32>>> = OnceLock::new();
    P.get_or_init(|| {
        (0..PROMPTS.len())
            .map(|i| {
                let ids = prompt_ids(i);
                let req = GenerateRequest { prompt_ids: &ids, max_tokens: NEW_TOKENS, sampling: SamplingParams::default(), stop_ids: &[] };
                generate(&engines().1, &req, &mut |_| {}).unwrap().token_ids
            })
            .collect()
    })
}

fn check(alg: SpecAlgorithm) {
    let (host, model) = engines();
    assert!(model.device_name().contains("interpreted"), "{}", model.device_name());
    let tree = TreeSpec { num_steps: 5, topk: 4, num_draft_tokens: 8 };
    let draft_model_path = (alg == SpecAlgorithm::Eagle).then(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/smollm2-135m-eagle"));
    let ngram = NgramConfig { num_draft_tokens: tree.num_draft_tokens, ..Default::default() };
    let opts = DraftOptions { algorithm: alg, draft_model_path, tree, token_map: None, ngram, min_draft_score: 0.0 };
    // The head drafts on a device of its own, as a draft worker's would.
    let device = (alg == SpecAlgorithm::Eagle).then(|| (Arc::new(InterpDevice::new(1 << 30)) as Arc<dyn aerie_kernels::cuda::device::Device>, 8192));
    let f = ProposerFactory::new_on(opts, model.clone(), &host.tokenizer, device).unwrap();
    let (mut verifies, mut emitted) = (0, 0);
    for (i, want) in plain_on_device().iter().enumerate() {
        let ids = prompt_ids(i);
        let req = GenerateRequest { prompt_ids: &ids, max_tokens: NEW_TOKENS, sampling: SamplingParams::default(), stop_ids: &[] };
        let mut p = f.proposer();
        let (out, stats) = speculative_generate(model, p.as_mut(), &req, &mut |_| {}).unwrap();
        let first_diff = out.token_ids.iter().zip(want).position(|(a, b)| a != b);
        assert_eq!(&out.token_ids, want, "{alg:?} prompt {i}: first difference at {first_diff:?}");
        verifies += stats.spec_verify_ct;
        emitted += out.token_ids.len() - 1;
    }
    eprintln!("{alg:?} on the interpreted CUDA path: tau {:.2}", emitted as f64 / verifies as f64);
    assert!(verifies < PROMPTS.len() * (NEW_TOKENS - 1), "{alg:?} accepted no draft at all");
}

#[test]
fn eagle_shipped_head_is_lossless_on_the_cuda_path() {
    check(SpecAlgorithm::Eagle);
}

#[test]
fn ngram_is_lossless_on_the_cuda_path() {
    check(SpecAlgorithm::Ngram);
}

/// The CUDA path's plain greedy text starts as the CPU path's does: the two
/// differ only in rounding (bf16 weights and KV), not in what they compute.
#[test]
fn cuda_path_greedy_starts_like_the_cpu_path() {
    let (host, _) = engines();
    let mut same = 0;
    for (i, dev) in plain_on_device().iter().enumerate() {
        let ids = prompt_ids(i);
        let req = GenerateRequest { prompt_ids: &ids, max_tokens: 8, sampling: SamplingParams::default(), stop_ids: &[] };
        let cpu = generate(&host.model, &req, &mut |_| {}).unwrap().token_ids;
        same += (cpu[..] == dev[..8]) as usize;
    }
    assert!(same + 1 >= PROMPTS.len(), "only {same} of {} prompts start with the CPU path's 8 tokens", PROMPTS.len());
}
