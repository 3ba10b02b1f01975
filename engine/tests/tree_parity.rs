//! One tree forward equals running each root-to-node path token by token,
//! and keep-only-rows leaves the cache as if only the kept path was run.

use crate::common;
use aerie_engine::{AttnMask, ForwardOptions, KvCache, LogitsRows, SeqInput};
use common::*;
use rand::{Rng, SeedableRng};

fn prefix_ids(n: usize) -> Vec<u32> {
    let e = smollm2();
    let text = "The history of mathematics spans thousands of years, from counting with tallies to abstract algebra. ".repeat(20);
    let mut ids = e.tokenizer.encode(&text, true).unwrap();
    ids.truncate(n);
    assert_eq!(ids.len(), n);
    ids
}

fn run(cache: &mut KvCache, tokens: &[u32], mask: AttnMask, positions: Option<&[u32]>, logits: LogitsRows) -> Vec<f32> {
    let m = &smollm2().model;
    m.forward(&mut [SeqInput { cache, tokens, positions, mask, logits }], &ForwardOptions::default()).unwrap().remove(0).logits
}

#[test]
fn tree_forward_matches_paths_and_keep_rows_matches_path_cache() {
    let e = smollm2();
    let vocab = e.model.config.vocab_size;
    let prefix = prefix_ids(200);
    let mut base = e.model.new_cache();
    run(&mut base, &prefix, AttnMask::Causal, None, LogitsRows::None);

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let n = 32;
    let mut parents: Vec<Option<usize>> = Vec::new();
    let mut depth = Vec::new();
    for i in 0..n {
        let p = if i == 0 || rng.gen_bool(0.15) { None } else { Some(rng.gen_range(0..i)) };
        depth.push(p.map_or(0, |p: usize| depth[p] + 1));
        parents.push(p);
    }
    let tokens: Vec<u32> = (0..n).map(|_| rng.gen_range(0..vocab as u32)).collect();
    let positions: Vec<u32> = depth.iter().map(|&d| (prefix.len() + d) as u32).collect();

    let mut tree_cache = base.try_clone().unwrap();
    let tree_logits = run(&mut tree_cache, &tokens, AttnMask::from_parents(&parents).unwrap(), Some(&positions), LogitsRows::All);
    assert_eq!(tree_cache.len(), prefix.len() + n);

    let path_of = |mut i: usize| {
        let mut p = vec![i];
        while let Some(q) = parents[i] {
            p.push(q);
            i = q;
        }
        p.reverse();
        p
    };
    let mut worst = 0.0f32;
    for i in 0..n {
        let path = path_of(i);
        let mut c = base.try_clone().unwrap();
        let mut last = Vec::new();
        for &node in &path {
            last = run(&mut c, &[tokens[node]], AttnMask::Causal, None, LogitsRows::Last);
        }
        let t = &tree_logits[i * vocab..(i + 1) * vocab];
        let scale = last.iter().fold(1.0f32, |a, &v| a.max(v.abs()));
        let diff = t.iter().zip(&last).fold(0.0f32, |a, (x, y)| a.max((x - y).abs())) / scale;
        worst = worst.max(diff);
        // Bit-identical, not merely close: greedy speculation is lossless
        // only if a tree node sums exactly as its decoded path does.
        assert!(diff == 0.0, "node {i} (depth {}): relative difference {diff}", depth[i]);
    }
    eprintln!("tree parity: worst relative difference {worst:e}");

    // Keep the deepest node's path.
    let deepest = (0..n).max_by_key(|&i| depth[i]).unwrap();
    let path = path_of(deepest);
    tree_cache.keep_rows(prefix.len(), &path).unwrap();
    // The path decoded one token at a time: a causal batch would be a
    // prompt, which sums attention in llama.cpp's prompt order (an ulp
    // apart), while tree nodes take the one-token order.
    let mut seq_cache = base.try_clone().unwrap();
    for &i in &path {
        run(&mut seq_cache, &[tokens[i]], AttnMask::Causal, None, LogitsRows::None);
    }
    assert_eq!(tree_cache.len(), seq_cache.len());
    for l in 0..e.model.config.num_layers {
        let (k1, v1) = tree_cache.layer(l);
        let (k2, v2) = seq_cache.layer(l);
        let dk = k1.iter().zip(k2).fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
        let dv = v1.iter().zip(v2).fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(dk == 0.0 && dv == 0.0, "layer {l}: kv differs by {dk}/{dv}");
    }
}

#[test]
fn batch_size_does_not_change_logits() {
    // A sequence's logits are identical whether it is alone or batched with others.
    let e = smollm2();
    let a = prefix_ids(40);
    let b: Vec<u32> = a.iter().rev().cloned().collect();
    let mut ca = e.model.new_cache();
    let alone = run(&mut ca, &a, AttnMask::Causal, None, LogitsRows::All);
    let (mut c1, mut c2) = (e.model.new_cache(), e.model.new_cache());
    let out = e
        .model
        .forward(
            &mut [
                SeqInput { cache: &mut c2, tokens: &b, positions: None, mask: AttnMask::Causal, logits: LogitsRows::All },
                SeqInput { cache: &mut c1, tokens: &a, positions: None, mask: AttnMask::Causal, logits: LogitsRows::All },
            ],
            &ForwardOptions::default(),
        )
        .unwrap();
    assert_eq!(alone, out[1].logits, "batched logits differ from solo logits");
}
