//! Draft-tree selection and greedy tree verification (speculative-core
//! groundwork): unit cases, and a losslessness check on the real model.

use crate::common;
use aerie_engine::generate::{generate, GenerateRequest};
use aerie_engine::spec::{greedy_verify, Candidate, DraftTree, TreeSpec};
use aerie_engine::{ChatMessage, ForwardOptions, LogitsRows, SamplingParams, SeqInput};
use aerie_kernels::cpu::ops::argmax;

#[test]
fn tree_settings_follow_sglang() {
    assert_eq!(TreeSpec::default(), TreeSpec { num_steps: 5, topk: 4, num_draft_tokens: 8 });
    TreeSpec::default().validate().unwrap();
    TreeSpec { num_steps: 3, topk: 1, num_draft_tokens: 4 }.validate().unwrap();
    TreeSpec { num_steps: 6, topk: 8, num_draft_tokens: 48 }.validate().unwrap();
    let err = TreeSpec { num_steps: 2, topk: 2, num_draft_tokens: 8 }.validate().unwrap_err().to_string();
    assert!(err.contains("impossible") && err.contains("at most 6"), "{err}");
    assert!(TreeSpec { num_steps: 3, topk: 1, num_draft_tokens: 5 }.validate().is_err(), "a chain holds steps+1 tokens");
}

#[test]
fn selection_keeps_best_paths_parents_first() {
    // topk 2, two steps: A .6, B .3; A's children .30, .24; B's .27, .03.
    let c = |token, parent, score| Candidate { token, parent, score };
    let cands = [c(10, None, 0.6), c(11, None, 0.3), c(12, Some(0), 0.3), c(13, Some(0), 0.24), c(14, Some(1), 0.27), c(15, Some(1), 0.03)];
    let spec = TreeSpec { num_steps: 2, topk: 2, num_draft_tokens: 5 };
    let t = DraftTree::select(99, &cands, &spec).unwrap();
    assert_eq!(t.tokens, vec![99, 10, 11, 12, 14]);
    assert_eq!(t.parents, vec![None, Some(0), Some(0), Some(1), Some(2)]);
    assert_eq!(t.depth, vec![0, 1, 1, 2, 2]);
    assert_eq!(t.positions(40), vec![40, 41, 41, 42, 42]);
    let bad = [c(10, Some(1), 0.5), c(11, None, 0.4)];
    assert!(DraftTree::select(0, &bad, &spec).is_err(), "parent after child is refused");
}

#[test]
fn greedy_verify_walks_matching_children() {
    // root -> 10 -> 12, root -> 11
    let t = DraftTree { tokens: vec![1, 10, 11, 12], parents: vec![None, Some(0), Some(0), Some(1)], depth: vec![0, 1, 1, 2] };
    let a = greedy_verify(&t, &[10, 12, 7, 33]);
    assert_eq!(a.path, vec![0, 1, 3]);
    assert_eq!(a.tokens, vec![10, 12, 33]);
    assert_eq!(a.num_correct_drafts(), 2);
    let a = greedy_verify(&t, &[11, 0, 5, 0]);
    assert_eq!((a.path, a.tokens), (vec![0, 2], vec![11, 5]));
    let a = greedy_verify(&t, &[42, 0, 0, 0]);
    assert_eq!((a.path, a.tokens), (vec![0], vec![42]));
}

/// Trees that hold the true continuation on one branch and wrong tokens on
/// others, verified in one forward each and committed with keep_rows, emit
/// exactly plain greedy's tokens.
#[test]
fn tree_verification_is_lossless_on_the_real_model() {
    let e = common::smollm2();
    let m = &e.model;
    let prompt = e.chat_prompt_ids(&[ChatMessage::new("user", "Name three rivers in Europe.")]).unwrap();
    let n = 40;
    let req = GenerateRequest { prompt_ids: &prompt, max_tokens: n, sampling: SamplingParams::default(), stop_ids: &[] };
    let plain = generate(m, &req, &mut |_| {}).unwrap().token_ids;
    assert_eq!(plain.len(), n);

    let mut cache = m.new_cache();
    m.forward(&mut [SeqInput { cache: &mut cache, tokens: &prompt[..prompt.len() - 1], positions: None, mask: aerie_engine::AttnMask::Causal, logits: LogitsRows::None }], &ForwardOptions::default()).unwrap();
    let mut root = *prompt.last().unwrap();
    let mut out: Vec<u32> = Vec::new();
    let mut step = 0usize;
    while out.len() < n {
        let done = out.len();
        // Branch 1: the true next tokens (corrupted at a step-dependent depth);
        // branch 2: a wrong token with a child.
        let truth: Vec<u32> = plain[done..(done + 4).min(n)].to_vec();
        let mut chain = truth.clone();
        let corrupt = step % 5;
        if corrupt < chain.len() {
            chain[corrupt] = (chain[corrupt] + 1) % 49152;
        }
        let mut t = DraftTree::chain(root, &chain);
        let wrong = (truth[0] + 7) % 49152;
        t.tokens.extend([wrong, 5]);
        t.parents.extend([Some(0), Some(t.tokens.len() - 2)]);
        t.depth.extend([1, 2]);
        let base = cache.len();
        let positions = t.positions(base);
        let o = m
            .forward(&mut [SeqInput { cache: &mut cache, tokens: &t.tokens, positions: Some(&positions), mask: t.mask(), logits: LogitsRows::All }], &ForwardOptions::default())
            .unwrap()
            .remove(0);
        let am: Vec<u32> = o.logits.chunks(m.config.vocab_size).map(|l| argmax(l).0 as u32).collect();
        let acc = greedy_verify(&t, &am);
        cache.keep_rows(base, &acc.path).unwrap();
        out.extend(&acc.tokens);
        root = *acc.tokens.last().unwrap();
        step += 1;
    }
    out.truncate(n);
    assert_eq!(out, plain, "speculative output differs from plain greedy");
    assert!(step < n, "trees accepted more than one token per step ({step} steps for {n} tokens)");
}

/// A malformed tree (as a remote drafter might send) is an error, not a panic.
#[test]
fn malformed_trees_are_refused() {
    let ok = DraftTree { tokens: vec![1, 2, 3], parents: vec![None, Some(0), Some(1)], depth: vec![0, 1, 2] };
    ok.validate().unwrap();
    let bad = [
        DraftTree { tokens: vec![], parents: vec![], depth: vec![] },
        DraftTree { tokens: vec![1, 2], parents: vec![None], depth: vec![0, 1] },
        DraftTree { tokens: vec![1, 2], parents: vec![None, Some(1)], depth: vec![0, 1] },
        DraftTree { tokens: vec![1, 2], parents: vec![None, Some(5)], depth: vec![0, 1] },
        DraftTree { tokens: vec![1, 2], parents: vec![None, Some(0)], depth: vec![0, 3] },
        DraftTree { tokens: vec![1, 2], parents: vec![Some(0), Some(0)], depth: vec![0, 1] },
    ];
    for t in bad {
        assert!(t.validate().is_err(), "{t:?}");
    }
}
