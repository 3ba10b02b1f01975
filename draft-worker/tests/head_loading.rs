//! Draft-head checkpoints: the published layouts load, and heads, token
//! maps or tree settings that cannot work are refused with a clear reason.

use crate::common;
use aerie_draft_worker::eagle::{EagleHead, EagleKind};
use aerie_draft_worker::ngram::NgramConfig;
use aerie_draft_worker::random_head::{write_random_head, RandomHeadSpec};
use aerie_draft_worker::token_map::TokenMap;
use aerie_draft_worker::{DraftOptions, ProposerFactory, SpecAlgorithm};
use aerie_engine::spec::{FeatureKind, Features, TreeSpec};
use common::smollm2;
use std::path::PathBuf;

fn opts(algorithm: SpecAlgorithm, dir: Option<PathBuf>, tree: TreeSpec, token_map: Option<PathBuf>) -> DraftOptions {
    DraftOptions { algorithm, draft_model_path: dir, tree, token_map, ngram: NgramConfig::default(), min_draft_score: 0.0 }
}

fn build_err(o: DraftOptions) -> String {
    let e = smollm2();
    match ProposerFactory::new(o, e.model.clone(), &e.tokenizer) {
        Ok(_) => panic!("expected an error"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn published_tensor_names_load_and_propose() {
    let e = smollm2();
    for kind in [EagleKind::Eagle, EagleKind::Eagle3] {
        let dir = tempfile::tempdir().unwrap();
        let spec = RandomHeadSpec { kind, seed: 1, draft_vocab_size: Some(4096), ..Default::default() };
        write_random_head(dir.path(), &e.model.config, &spec).unwrap();
        let st = safetensors::SafeTensors::deserialize(&std::fs::read(dir.path().join("model.safetensors")).unwrap()).unwrap().names().into_iter().map(String::from).collect::<Vec<_>>();
        match kind {
            EagleKind::Eagle => {
                for n in ["fc.weight", "fc.bias", "layers.0.self_attn.q_proj.weight", "layers.0.post_attention_layernorm.weight", "layers.0.mlp.down_proj.weight"] {
                    assert!(st.contains(&n.to_string()), "{n} in {st:?}");
                }
                assert!(!st.iter().any(|n| n.contains("input_layernorm")), "EAGLE-1 layer 0 has no input norm");
            }
            EagleKind::Eagle3 => {
                for n in ["fc.weight", "midlayer.hidden_norm.weight", "midlayer.input_layernorm.weight", "midlayer.self_attn.q_proj.weight", "norm.weight", "lm_head.weight", "d2t", "t2d"] {
                    assert!(st.contains(&n.to_string()), "{n} in {st:?}");
                }
            }
            EagleKind::Mtp => unreachable!("MTP layers are tested in tests/mtp.rs"),
        }
        let alg = if kind == EagleKind::Eagle { SpecAlgorithm::Eagle } else { SpecAlgorithm::Eagle3 };
        let f = ProposerFactory::new(opts(alg, Some(dir.path().into()), TreeSpec::default(), None), e.model.clone(), &e.tokenizer).unwrap();
        let mut p = f.proposer();
        let h = e.model.config.hidden_size;
        let width = match p.features() {
            FeatureKind::Hidden => h,
            FeatureKind::Aux(l) => {
                assert_eq!(l, vec![1, 14, 26], "SGLang's default aux layers for a 30-layer target");
                3 * h
            }
            FeatureKind::None => panic!("EAGLE needs features"),
        };
        let feats = Features { width, data: (0..3 * width).map(|i| (i % 7) as f32 * 0.1).collect() };
        p.begin(&[1, 2, 3, 4], &feats).unwrap();
        let tree = p.propose(5).unwrap();
        assert_eq!(tree.len(), 8, "{kind:?}: SGLang's default tree holds 8 nodes");
        assert_eq!(tree.tokens[0], 4);
        if kind == EagleKind::Eagle3 {
            assert!(tree.tokens[1..].iter().all(|&t| t < 4096), "draft vocabulary maps through d2t");
        }
        // The `model.` prefix some exports carry is accepted too.
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let renamed: Vec<(String, safetensors::tensor::TensorView)> = st.tensors().into_iter().map(|(n, v)| (format!("model.{n}"), v)).collect();
        let d2 = tempfile::tempdir().unwrap();
        std::fs::copy(dir.path().join("config.json"), d2.path().join("config.json")).unwrap();
        safetensors::serialize_to_file(renamed, None, &d2.path().join("model.safetensors")).unwrap();
        EagleHead::load(d2.path(), &e.model, None).unwrap();
    }
}

#[test]
fn mismatched_heads_are_refused() {
    let e = smollm2();
    let mut cfg = e.model.config.clone();
    cfg.hidden_size = 256;
    cfg.head_dim = 32;
    cfg.num_heads = 8;
    cfg.num_kv_heads = 4;
    let dir = tempfile::tempdir().unwrap();
    write_random_head(dir.path(), &cfg, &RandomHeadSpec::default()).unwrap();
    let err = build_err(opts(SpecAlgorithm::Eagle, Some(dir.path().into()), TreeSpec::default(), None));
    assert!(err.contains("does not match the target") && err.contains("256") && err.contains("576"), "{err}");

    let mut cfg = e.model.config.clone();
    cfg.vocab_size = 32000;
    let dir = tempfile::tempdir().unwrap();
    write_random_head(dir.path(), &cfg, &RandomHeadSpec::default()).unwrap();
    let err = build_err(opts(SpecAlgorithm::Eagle, Some(dir.path().into()), TreeSpec::default(), None));
    assert!(err.contains("vocabulary 32000") && err.contains("49152"), "{err}");

    // EAGLE-3 aux layers beyond the target's depth.
    let dir = tempfile::tempdir().unwrap();
    write_random_head(dir.path(), &e.model.config, &RandomHeadSpec { kind: EagleKind::Eagle3, draft_vocab_size: Some(1024), ..Default::default() }).unwrap();
    let p = dir.path().join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["eagle_config"] = serde_json::json!({"eagle_aux_hidden_state_layer_ids": [1, 15, 40]});
    std::fs::write(&p, v.to_string()).unwrap();
    let err = build_err(opts(SpecAlgorithm::Eagle3, Some(dir.path().into()), TreeSpec::default(), None));
    assert!(err.contains("aux layer 40") && err.contains("30-layer"), "{err}");

    // The algorithm must match the head.
    let dir = tempfile::tempdir().unwrap();
    write_random_head(dir.path(), &e.model.config, &RandomHeadSpec { kind: EagleKind::Eagle3, draft_vocab_size: Some(1024), ..Default::default() }).unwrap();
    let err = build_err(opts(SpecAlgorithm::Eagle, Some(dir.path().into()), TreeSpec::default(), None));
    assert!(err.contains("EAGLE-3") || err.contains("Eagle3"), "{err}");

    // A file that is not a head at all.
    let dir = tempfile::tempdir().unwrap();
    for body in ["{not json", "[1, 2]"] {
        std::fs::write(dir.path().join("config.json"), body).unwrap();
        let err = build_err(opts(SpecAlgorithm::Eagle, Some(dir.path().into()), TreeSpec::default(), None));
        assert!(err.contains("config.json"), "{body}: {err}");
    }
    let err = build_err(opts(SpecAlgorithm::Eagle3, None, TreeSpec::default(), None));
    assert!(err.contains("--speculative-draft-model-path"), "{err}");
}

#[test]
fn token_maps_restrict_the_draft_vocabulary_or_are_refused() {
    let e = smollm2();
    let head = tempfile::tempdir().unwrap();
    write_random_head(head.path(), &e.model.config, &RandomHeadSpec::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A good map in each accepted format.
    let ids: Vec<i64> = (100..2100).collect();
    let json = dir.path().join("hot.json");
    std::fs::write(&json, serde_json::to_string(&ids).unwrap()).unwrap();
    let npy = dir.path().join("hot.npy");
    let header = format!("{{'descr': '<i8', 'fortran_order': False, 'shape': ({},), }}", ids.len());
    let pad = 64 - (10 + header.len() + 1) % 64;
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&((header.len() + pad + 1) as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend(std::iter::repeat_n(b' ', pad));
    b.push(b'\n');
    ids.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
    std::fs::write(&npy, b).unwrap();
    for path in [&json, &npy] {
        assert_eq!(TokenMap::load(path).unwrap().ids.len(), 2000, "{}", path.display());
        let f = ProposerFactory::new(opts(SpecAlgorithm::Eagle, Some(head.path().into()), TreeSpec::default(), Some(path.clone())), e.model.clone(), &e.tokenizer).unwrap();
        let mut p = f.proposer();
        let feats = Features { width: 576, data: vec![0.1; 2 * 576] };
        p.begin(&[1, 2, 3], &feats).unwrap();
        let tree = p.propose(5).unwrap();
        assert!(tree.tokens[1..].iter().all(|&t| (100..2100).contains(&t)), "drafts come from the hot vocabulary: {:?}", tree.tokens);
    }
    // Bad maps.
    let cases: [(&str, &str, &str); 4] = [
        ("dup.json", "[5, 6, 5]", "twice"),
        ("big.json", "[5, 60000]", "outside the target vocabulary"),
        ("empty.json", "[]", "empty"),
        ("text.json", "{\"a\": 1}", "JSON array"),
    ];
    for (name, body, want) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        let err = build_err(opts(SpecAlgorithm::Eagle, Some(head.path().into()), TreeSpec::default(), Some(p)));
        assert!(err.contains(want) && err.contains(name), "{name}: {err}");
    }
    let pt = dir.path().join("hot.pt");
    std::fs::write(&pt, b"PK").unwrap();
    let err = build_err(opts(SpecAlgorithm::Eagle, Some(head.path().into()), TreeSpec::default(), Some(pt)));
    assert!(err.contains(".npy"), "{err}");
    let err = build_err(opts(SpecAlgorithm::Ngram, None, TreeSpec::default(), Some(json.clone())));
    assert!(err.contains("EAGLE only"), "{err}");
}

#[test]
fn impossible_tree_settings_are_refused() {
    let head = tempfile::tempdir().unwrap();
    write_random_head(head.path(), &smollm2().model.config, &RandomHeadSpec::default()).unwrap();
    let err = build_err(opts(SpecAlgorithm::Eagle, Some(head.path().into()), TreeSpec { num_steps: 2, topk: 2, num_draft_tokens: 9 }, None));
    assert!(err.contains("impossible") && err.contains("--speculative-num-draft-tokens 9"), "{err}");
    let err = build_err(opts(SpecAlgorithm::Eagle, Some(head.path().into()), TreeSpec { num_steps: 0, topk: 4, num_draft_tokens: 8 }, None));
    assert!(err.contains("num_steps >= 1"), "{err}");
    let mut o = opts(SpecAlgorithm::Ngram, None, TreeSpec::default(), None);
    o.ngram.min_match_window = 5;
    o.ngram.max_match_window = 2;
    let err = build_err(o);
    assert!(err.contains("match window"), "{err}");
    assert!("MEDUSA".parse::<SpecAlgorithm>().unwrap_err().contains("EAGLE3"));
    assert_eq!("nextn".parse::<SpecAlgorithm>().unwrap(), SpecAlgorithm::Eagle);
}
