//! Parity with llama.cpp (the oracle fixtures in tests/oracle/, made by
//! tests/oracle/make_fixtures.py with llama-cpp-python 0.3.36 on the same GGUF).

use crate::common;
use aerie_engine::generate::{generate, GenerateRequest};
use aerie_engine::{AttnMask, ChatMessage, ForwardOptions, LogitsRows, SamplingParams, SeqInput};
use aerie_kernels::cpu::ops::argmax;
use common::*;

#[test]
fn tokenization_matches_llama_cpp() {
    let e = smollm2();
    let fx = oracle("tokenize.json");
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 300, "fixture has {} strings", cases.len());
    let mut bad = Vec::new();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["ids"]);
        let got = e.tokenizer.encode(text, true).unwrap();
        if got != want {
            bad.push(format!("{text:?}\n  llama.cpp {want:?}\n  aerie     {got:?}"));
        }
    }
    assert!(bad.is_empty(), "{} of {} strings differ:\n{}", bad.len(), cases.len(), bad.join("\n"));
}

#[test]
fn chat_template_and_prompt_ids_match() {
    let e = smollm2();
    let fx = oracle("greedy.json");
    for c in fx["cases"].as_array().unwrap() {
        let user = c["user"].as_str().unwrap();
        let rendered = e.template.as_ref().unwrap().render(&[ChatMessage::new("user", user)], true).unwrap();
        assert_eq!(rendered, c["rendered"].as_str().unwrap());
        assert_eq!(e.chat_prompt_ids(&[ChatMessage::new("user", user)]).unwrap(), ids(&c["prompt_ids"]));
    }
}

/// llama.cpp's top-2 logit margin under which a step counts as a numerical
/// near-tie (the rule). Aerie reproduces ggml's CPU roundings (8-bit
/// activation blocks, f16 KV cache and attention inputs, ggml's exp, RoPE
/// angles and summation orders), so in practice the ids agree to the end:
/// 1,280 of 1,280 tokens on the fixture machine (docs/benchmarks.md).
const NEAR_TIE: f64 = 0.05;

/// Greedy ids equal llama.cpp's up to the first step where llama.cpp's own
/// top-2 margin is under `NEAR_TIE`, on at least 19 of 20 prompts. The
/// agreed prefixes must also cover nearly everything (1,200 of 1,280 tokens).
#[test]
fn greedy_matches_llama_cpp() {
    let e = smollm2();
    let fx = oracle("greedy.json");
    let cases = fx["cases"].as_array().unwrap();
    let (mut ok, mut agreed, mut identical) = (0, 0, 0);
    let mut report = Vec::new();
    for c in cases {
        let prompt = ids(&c["prompt_ids"]);
        let want = ids(&c["ids"]);
        assert!(want.iter().collect::<std::collections::HashSet<_>>().len() > 3, "degenerate fixture for q{}", c["question_id"]);
        let margins: Vec<f64> = c["margins"].as_array().unwrap().iter().map(|m| m.as_f64().unwrap()).collect();
        let req = GenerateRequest { prompt_ids: &prompt, max_tokens: 64, sampling: SamplingParams::default(), stop_ids: &e.tokenizer.eos_ids };
        let got = generate(&e.model, &req, &mut |_| {}).unwrap().token_ids;
        let first_diff = (0..want.len().max(got.len())).find(|&i| want.get(i) != got.get(i));
        agreed += first_diff.unwrap_or(want.len());
        identical += first_diff.is_none() as usize;
        // Steps before llama.cpp's first near-tie must agree.
        let must_agree = margins.iter().position(|&m| m < NEAR_TIE).unwrap_or(want.len());
        let same = first_diff.is_none_or(|d| d >= must_agree);
        ok += same as usize;
        report.push(format!(
            "q{}: first difference at {} (first llama.cpp near-tie at {}), {}",
            c["question_id"],
            first_diff.map_or("none".into(), |d| d.to_string()),
            if must_agree < want.len() { must_agree.to_string() } else { "none".into() },
            if same { "ok" } else { "MISMATCH" }
        ));
    }
    eprintln!("{}\nagreed tokens {agreed}; {ok}/20 agree up to the first margin < {NEAR_TIE}; {identical}/20 identical", report.join("\n"));
    // The floor is 200; on the fixture machine all 1,280 agree, and
    // 1,200 guards against a regression that the 0.05 rule alone would let
    // through at a near-tie.
    assert!(agreed >= 1200, "only {agreed} tokens agree before divergences");
    assert!(ok >= 19, "{ok}/20 prompts match llama.cpp:\n{}", report.join("\n"));
}

/// The f32 path (dequantized at load) agrees with the quantized path's top-1
/// on at least 95% of the positions of 10 chat transcripts (prompt and
/// llama.cpp's reply, teacher-forced), and every disagreement is a near-tie
/// (f32 top-2 margin under 0.5): the paths differ only by the 8-bit
/// activation rounding of the quantized matmuls, never by a real error.
#[test]
fn f32_path_agrees_with_quantized() {
    let (q, f) = (smollm2(), smollm2_f32());
    let fx = oracle("greedy.json");
    let (mut agree, mut total, mut worst_margin) = (0, 0, 0.0f32);
    for c in fx["cases"].as_array().unwrap().iter().take(20) {
        let mut seq = ids(&c["prompt_ids"]);
        seq.extend(ids(&c["ids"]));
        let run = |e: &aerie_engine::Engine| {
            let mut cache = e.model.new_cache();
            let out = e
                .model
                .forward(
                    &mut [SeqInput { cache: &mut cache, tokens: &seq, positions: None, mask: AttnMask::Causal, logits: LogitsRows::All }],
                    &ForwardOptions::default(),
                )
                .unwrap();
            out[0]
                .logits
                .chunks(e.model.config.vocab_size)
                .map(|l| {
                    let (i, top) = argmax(l);
                    let second = l.iter().enumerate().filter(|&(j, _)| j != i).fold(f32::NEG_INFINITY, |a, (_, &v)| a.max(v));
                    (i, top - second)
                })
                .collect::<Vec<_>>()
        };
        let (a, b) = (run(q), run(f));
        for (x, y) in a.iter().zip(&b) {
            total += 1;
            if x.0 == y.0 {
                agree += 1;
            } else {
                worst_margin = worst_margin.max(y.1);
            }
        }
    }
    let rate = agree as f64 / total as f64;
    eprintln!("f32 vs quantized top-1 agreement: {agree}/{total} = {rate:.4}; widest f32 margin at a disagreement {worst_margin:.3}");
    assert!(rate >= 0.95, "agreement {rate}");
    assert!(worst_margin < 0.5, "a disagreement where the f32 path is confident (margin {worst_margin})");
}
