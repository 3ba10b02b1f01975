//! Batched drafting: one draft-head pass over several sequences gives each
//! the same states and KV rows as its own pass, bit for bit, for prompt
//! catch-ups (causal rows) and tree steps (tree masks), EAGLE and EAGLE-3.

use crate::common;
use aerie_draft_worker::eagle::{EagleHead, EagleKind, HeadRows};
use aerie_draft_worker::random_head::{write_random_head, RandomHeadSpec};
use aerie_engine::AttnMask;
use common::smollm2;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn same_kv(a: &aerie_engine::KvCache, b: &aerie_engine::KvCache, layers: usize) -> bool {
    a.len() == b.len() && (0..layers).all(|l| a.layer(l) == b.layer(l))
}

fn states(rng: &mut StdRng, rows: usize, width: usize) -> Vec<f32> {
    (0..rows * width).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

#[test]
fn one_pass_over_many_sequences_equals_a_pass_each() {
    let e = smollm2();
    let h = e.model.config.hidden_size;
    for kind in [EagleKind::Eagle, EagleKind::Eagle3] {
        let dir = tempfile::tempdir().unwrap();
        write_random_head(dir.path(), &e.model.config, &RandomHeadSpec { kind, seed: 7, ..Default::default() }).unwrap();
        let head = EagleHead::load(dir.path(), &e.model, None).unwrap();
        let layers = head.llama().num_layers;
        let width = if kind == EagleKind::Eagle { h } else { head.feature_width() };
        let mut rng = StdRng::seed_from_u64(36);
        // Three sequences with different prefixes: 5, 9 and 2 committed rows.
        let lens = [5usize, 9, 2];
        let toks: Vec<Vec<u32>> = lens.iter().map(|&n| (0..n).map(|_| rng.gen_range(1..40_000u32)).collect()).collect();
        let feats: Vec<Vec<f32>> = lens.iter().map(|&n| states(&mut rng, n, width)).collect();
        let pos: Vec<Vec<u32>> = lens.iter().map(|&n| (0..n as u32).collect()).collect();
        // Apart: one cache and one pass per sequence.
        let mut apart: Vec<_> = lens.iter().map(|_| head.new_cache()).collect();
        let want: Vec<Vec<f32>> = (0..3).map(|i| head.forward(&e.model, &mut apart[i], &toks[i], &feats[i], &pos[i], AttnMask::Causal).unwrap()).collect();
        // Together, with an empty sequence among them (rows 0, 2, 3 hold
        // sequences 0, 1, 2 in caches 0, 1, 2; row 1 is empty, cache 3).
        let mut together: Vec<_> = (0..4).map(|_| head.new_cache()).collect();
        let got = {
            let [a, b, c, d] = &mut together[..] else { unreachable!() };
            let mut rows = vec![
                HeadRows { cache: a, tokens: &toks[0], states: &feats[0], positions: &pos[0], mask: AttnMask::Causal },
                HeadRows { cache: d, tokens: &[], states: &[], positions: &[], mask: AttnMask::Causal },
                HeadRows { cache: b, tokens: &toks[1], states: &feats[1], positions: &pos[1], mask: AttnMask::Causal },
                HeadRows { cache: c, tokens: &toks[2], states: &feats[2], positions: &pos[2], mask: AttnMask::Causal },
            ];
            head.forward_many(&e.model, &mut rows).unwrap()
        };
        assert_eq!(got.len(), 4);
        assert!(got[1].is_empty() && together[3].len() == 0);
        for (i, j) in [(0, 0), (1, 2), (2, 3)] {
            assert_eq!(got[j], want[i], "{kind:?}: sequence {i}'s states");
            assert!(same_kv(&together[i], &apart[i], layers), "{kind:?}: sequence {i}'s KV rows");
        }
        // A tree step: two children of the last row in each sequence, H-wide
        // draft states, a tree mask (siblings do not see each other).
        let mask = AttnMask::Tree(vec![true, false, false, true]);
        let kids: Vec<Vec<u32>> = (0..3).map(|_| vec![rng.gen_range(1..40_000u32), rng.gen_range(1..40_000u32)]).collect();
        let kstates: Vec<Vec<f32>> = (0..3).map(|_| states(&mut rng, 2, h)).collect();
        let kpos: Vec<Vec<u32>> = lens.iter().map(|&n| vec![n as u32, n as u32]).collect();
        let want: Vec<Vec<f32>> = (0..3).map(|i| head.forward(&e.model, &mut apart[i], &kids[i], &kstates[i], &kpos[i], mask.clone()).unwrap()).collect();
        let got = {
            let [a, b, c, _] = &mut together[..] else { unreachable!() };
            let mut rows: Vec<HeadRows> = [a, b, c].into_iter().enumerate().map(|(i, cache)| HeadRows { cache, tokens: &kids[i], states: &kstates[i], positions: &kpos[i], mask: mask.clone() }).collect();
            head.forward_many(&e.model, &mut rows).unwrap()
        };
        for i in 0..3 {
            assert_eq!(got[i], want[i], "{kind:?}: tree step, sequence {i}");
            assert!(same_kv(&together[i], &apart[i], layers), "{kind:?}: tree step, sequence {i}'s KV rows");
        }
    }
}

#[test]
fn catch_ups_run_together_leave_each_proposer_as_its_own_would() {
    use aerie_draft_worker::eagle::{catch_up_many, EagleProposer};
    use aerie_draft_worker::ngram::NgramConfig;
    use aerie_draft_worker::{DraftOptions, ProposerFactory, SpecAlgorithm};
    use aerie_engine::spec::{Features, TreeSpec};
    let e = smollm2();
    let h = e.model.config.hidden_size;
    let tree = TreeSpec { num_steps: 3, topk: 2, num_draft_tokens: 6 };
    for (alg, kind) in [(SpecAlgorithm::Eagle, EagleKind::Eagle), (SpecAlgorithm::Eagle3, EagleKind::Eagle3)] {
        let dir = common::random_head(kind);
        let opts = DraftOptions { algorithm: alg, draft_model_path: Some(dir), tree, token_map: None, ngram: NgramConfig::default(), min_draft_score: 0.0 };
        let f = ProposerFactory::new(opts, e.model.clone(), &e.tokenizer).unwrap();
        let width = match f.proposer().features() {
            aerie_engine::spec::FeatureKind::Aux(l) => h * l.len(),
            _ => h,
        };
        // Three requests: a prompt of 6, 11 and 3 tokens, then 1, 3 and 2
        // committed tokens since the last proposal.
        let mut rng = StdRng::seed_from_u64(9);
        let script: Vec<(Vec<u32>, Vec<u32>)> = [(6usize, 1usize), (11, 3), (3, 2)]
            .iter()
            .map(|&(p, c)| ((0..p).map(|_| rng.gen_range(1..40_000u32)).collect(), (0..c).map(|_| rng.gen_range(1..40_000u32)).collect()))
            .collect();
        let feats: Vec<(Features, Features)> = script.iter().map(|(p, c)| (Features { width, data: states(&mut rng, p.len() - 1, width) }, Features { width, data: states(&mut rng, c.len(), width) })).collect();
        let fresh = || {
            let mut v: Vec<Box<dyn aerie_engine::spec::Proposer>> = Vec::new();
            for ((p, c), (fp, fc)) in script.iter().zip(&feats) {
                let mut prop = f.proposer();
                prop.begin(p, fp).unwrap();
                prop.propose(3).unwrap();
                prop.commit(c, fc).unwrap();
                v.push(prop);
            }
            v
        };
        let mut alone = fresh();
        let want: Vec<_> = alone.iter_mut().map(|p| p.propose(3).unwrap()).collect();
        let mut together = fresh();
        {
            let mut eagles: Vec<&mut EagleProposer> = together.iter_mut().map(|p| p.as_any_mut().unwrap().downcast_mut::<EagleProposer>().unwrap()).collect();
            catch_up_many(&mut eagles).unwrap();
        }
        for (i, p) in together.iter_mut().enumerate() {
            let got = p.propose(3).unwrap();
            assert_eq!((&got.tokens, &got.parents), (&want[i].tokens, &want[i].parents), "{kind:?}: request {i}");
        }
    }
}
