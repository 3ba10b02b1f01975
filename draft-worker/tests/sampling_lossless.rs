//! Sampling speculation keeps the target distribution exactly.
//!
//! On a tiny random target (vocabulary 8), the joint distribution of the
//! first three emitted tokens over 200,000 seeded requests is compared with
//! the exact distribution computed from the target's own probabilities:
//! chi-square p > 0.001 and total variation < 0.01. Two drafters: a bad one
//! (an unrelated random model) and a good one (the target drafting for
//! itself); three settings: temperature 0.7, temperature 1 with top-k 5 and
//! top-p 0.9, and temperature 0.6 under frequency, presence and repetition
//! penalties with a logit bias (the drafter knows nothing of them, so only
//! the verifier's per-node processing keeps the distribution), and
//! temperature 1 under a regular expression (each node masked by the
//! grammar state after its own path). Also: tree depths capped differently
//! at every step, as adaptive budgets (`--speculative-adaptive`) do.

use crate::common;
use aerie_draft_worker::ProposerFactory;
use aerie_engine::generate::GenerateRequest;
use aerie_engine::spec::{speculative_generate, step_batch, SpecSession, TreeSpec};
use aerie_engine::processors::{self, History};
use aerie_engine::{AttnMask, ForwardOptions, LogitsRows, Model, Processors, SamplingParams, SeqInput};
use std::sync::Arc;

const VOCAB: usize = 8;
const SAMPLES: u64 = 200_000;
const PROMPT: [u32; 3] = [1, 5, 2];

fn tiny(seed: u64, logit_scale: f32) -> Arc<Model> {
    common::tiny_llama(VOCAB, seed, logit_scale)
}

/// The sampling distribution after `ctx` (PROMPT then generated tokens),
/// with the processors seeing the generated part as output.
fn next_probs(m: &Model, ctx: &[u32], p: &SamplingParams) -> Vec<f64> {
    let mut c = m.new_cache();
    let mut out = m
        .forward(&mut [SeqInput { cache: &mut c, tokens: ctx, positions: None, mask: AttnMask::Causal, logits: LogitsRows::Last }], &ForwardOptions::default())
        .unwrap();
    let mut h = History::new(&PROMPT);
    for &t in &ctx[PROMPT.len()..] {
        h.push(t);
    }
    processors::apply(&mut out[0].logits, &p.processors, &h.with_path(&[]), &[]);
    if let Some(g) = &p.grammar {
        let mut st = g.start().unwrap();
        st.commit(&ctx[PROMPT.len()..]);
        st.mask_after(&[], &mut out[0].logits, &[]);
    }
    aerie_engine::sampling::target_probs(&out[0].logits, p).into_iter().map(|x| x as f64).collect()
}

/// Exact P(t1, t2, t3 | PROMPT) under the target's sampling distribution.
fn exact_joint(m: &Model, p: &SamplingParams) -> Vec<f64> {
    let mut joint = vec![0.0; VOCAB.pow(3)];
    let p1 = next_probs(m, &PROMPT, p);
    for a in 0..VOCAB {
        if p1[a] == 0.0 {
            continue;
        }
        let p2 = next_probs(m, &[&PROMPT[..], &[a as u32]].concat(), p);
        for b in 0..VOCAB {
            if p2[b] == 0.0 {
                continue;
            }
            let p3 = next_probs(m, &[&PROMPT[..], &[a as u32, b as u32]].concat(), p);
            for c in 0..VOCAB {
                joint[(a * VOCAB + b) * VOCAB + c] = p1[a] * p2[b] * p3[c];
            }
        }
    }
    joint
}

/// Regularized upper incomplete gamma Q(a, x) (series / continued fraction).
fn gamma_q(a: f64, x: f64) -> f64 {
    fn ln_gamma(z: f64) -> f64 {
        let g = [76.18009172947146, -86.50532032941677, 24.01409824083091, -1.231739572450155, 0.1208650973866179e-2, -0.5395239384953e-5];
        let mut y = z;
        let t = z + 5.5 - (z + 0.5) * (z + 5.5).ln();
        let mut s = 1.000000000190015;
        for c in g {
            y += 1.0;
            s += c / y;
        }
        -t + (2.5066282746310005 * s / z).ln()
    }
    if x < a + 1.0 {
        let (mut sum, mut del, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        1.0 - sum * (-x + a * x.ln() - ln_gamma(a)).exp()
    } else {
        let (mut b, mut c, mut d) = (x + 1.0 - a, 1.0 / 1e-300, 1.0 / (x + 1.0 - a));
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < 1e-300 {
                d = 1e-300;
            }
            c = b + an / c;
            if c.abs() < 1e-300 {
                c = 1e-300;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (-x + a * x.ln() - ln_gamma(a)).exp() * h
    }
}

/// Chi-square p-value (cells with expected count < 5 pooled) and total variation.
fn compare(counts: &[u64], exact: &[f64], n: u64) -> (f64, f64, usize) {
    let (mut chi2, mut cells, mut pool_o, mut pool_e) = (0.0, 0usize, 0.0, 0.0);
    let mut tv = 0.0;
    for (&o, &p) in counts.iter().zip(exact) {
        let e = p * n as f64;
        tv += (o as f64 / n as f64 - p).abs() / 2.0;
        if e >= 5.0 {
            chi2 += (o as f64 - e).powi(2) / e;
            cells += 1;
        } else {
            assert!(p > 0.0 || o == 0, "a token sequence of probability 0 was emitted");
            pool_o += o as f64;
            pool_e += e;
        }
    }
    if pool_e > 0.0 {
        chi2 += (pool_o - pool_e).powi(2) / pool_e.max(1e-9);
        cells += 1;
    }
    let df = (cells - 1) as f64;
    (gamma_q(df / 2.0, chi2 / 2.0), tv, cells)
}

fn run(drafter: Arc<Model>, target: Arc<Model>, params: SamplingParams, label: &str) {
    run_capped(drafter, target, params, label, false)
}

/// With `vary`, each step's tree is cut to a depth from 0 to 3 chosen by a
/// seeded generator, as adaptive budgets cut them.
fn run_capped(drafter: Arc<Model>, target: Arc<Model>, params: SamplingParams, label: &str, vary: bool) {
    // A tiny model gains nothing from worker threads, and the two test
    // threads already keep both cores busy.
    aerie_kernels::cpu::pool::set_threads(1);
    let exact = exact_joint(&target, &params);
    // The fixture must make a 0.01 bound meaningful: the expected total
    // variation of an exact sampler at this sample size is well below it.
    let noise = 0.5 * (2.0 / (std::f64::consts::PI * SAMPLES as f64)).sqrt() * exact.iter().map(|p| p.sqrt()).sum::<f64>();
    assert!(noise < 0.006, "{label}: fixture too flat (expected TV noise {noise:.4})");
    let tree = TreeSpec { num_steps: 3, topk: 2, num_draft_tokens: 5 };
    let f = ProposerFactory::standalone(drafter, target.clone(), tree).unwrap();
    let mut counts = vec![0u64; VOCAB.pow(3)];
    let (mut verifies, mut accepted) = (0usize, 0usize);
    let mut proposer = f.proposer();
    for s in 0..SAMPLES {
        let p = SamplingParams { seed: Some(1_000_003 * s + 17), ..params.clone() };
        // The joint of the first three tokens is what is compared; a fourth
        // would only cost time (CI budget). Trees still reach past the
        // third token and are cut there, as `max_tokens` cuts them.
        let req = GenerateRequest { prompt_ids: &PROMPT, max_tokens: 3, sampling: p, stop_ids: &[] };
        let (tokens, st) = if vary {
            let mut sess = SpecSession::start(&target, Box::new(proposer.as_mut()), &req).unwrap();
            let mut x = s.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            while !sess.is_finished() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                sess.depth_cap = Some((x % 4) as usize);
                step_batch(&target, &mut [&mut sess]).unwrap();
            }
            (sess.tokens.clone(), sess.spec.clone())
        } else {
            let (out, st) = speculative_generate(&target, proposer.as_mut(), &req, &mut |_| {}).unwrap();
            (out.token_ids, st)
        };
        let t = &tokens;
        counts[(t[0] as usize * VOCAB + t[1] as usize) * VOCAB + t[2] as usize] += 1;
        verifies += st.spec_verify_ct;
        accepted += st.spec_num_correct_drafts;
    }
    let (p, tv, cells) = compare(&counts, &exact, SAMPLES);
    let rate = accepted as f64 / verifies as f64;
    eprintln!("{label}: chi-square p = {p:.4} over {cells} cells, TV = {tv:.4} (noise ~{noise:.4}), accepted drafts per verify {rate:.2}");
    assert!(p > 0.001, "{label}: chi-square p = {p}");
    assert!(tv < 0.01, "{label}: total variation {tv}");
}

fn temp07() -> SamplingParams {
    SamplingParams { temperature: 0.7, ..Default::default() }
}

fn topk_topp() -> SamplingParams {
    SamplingParams { temperature: 1.0, top_k: 5, top_p: 0.9, ..Default::default() }
}

fn penalized() -> SamplingParams {
    let processors = Processors { frequency_penalty: 1.5, presence_penalty: 0.5, repetition_penalty: 1.3, logit_bias: vec![(3, 1.0)], min_tokens: 0 };
    SamplingParams { temperature: 0.6, processors, ..Default::default() }
}

/// A regular expression over the tiny vocabulary, read as the bytes
/// `a`..`g` (token 7 is EOS): the first three tokens may take only some of
/// the values, and which ones depends on the tokens before.
fn constrained() -> SamplingParams {
    let mut words: Vec<Vec<u8>> = (0..7u8).map(|i| vec![b'a' + i]).collect();
    words.push(b"\xff<eos>".to_vec());
    let c = aerie_engine::GrammarCompiler::from_token_bytes(&words, 7, None).unwrap();
    let grammar = c.compile(&aerie_engine::ConstraintSpec::Regex("(a[bcd]|b[ae]|[cfg]a)[a-e][a-g]*".into())).unwrap();
    SamplingParams { temperature: 1.0, grammar: Some(grammar), ..Default::default() }
}

const TARGET: (u64, f32) = (11, 0.6);

#[test]
fn good_drafter_keeps_target_distribution_under_a_grammar() {
    let t = tiny(TARGET.0, TARGET.1);
    // The grammar must rule sequences out, or this test shows nothing.
    let exact = exact_joint(&t, &constrained());
    let zero = exact.iter().filter(|&&p| p == 0.0).count();
    assert!(zero > VOCAB.pow(3) / 2, "only {zero} sequences are ruled out");
    run(t.clone(), t, constrained(), "good drafter, T=1, regex");
}

/// The drafter grows its trees within the grammar (`propose_within`), so
/// the sequences it may propose change; the output distribution must not.
#[test]
fn bad_drafter_pruned_by_the_grammar_keeps_target_distribution() {
    run(tiny(99, 2.0), tiny(TARGET.0, TARGET.1), constrained(), "bad drafter, T=1, regex");
}

#[test]
fn bad_drafter_keeps_target_distribution_under_penalties_and_bias() {
    // The penalties must change the distribution, or this test shows nothing.
    let t = tiny(TARGET.0, TARGET.1);
    let plain = SamplingParams { temperature: 0.6, ..Default::default() };
    let (a, b) = (exact_joint(&t, &plain), exact_joint(&t, &penalized()));
    let tv: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / 2.0).sum();
    assert!(tv > 0.1, "penalties moved the joint distribution by only {tv}");
    run(tiny(99, 2.0), t, penalized(), "bad drafter, T=0.6, penalties and bias");
}

#[test]
fn bad_drafter_keeps_target_distribution_at_temperature() {
    run(tiny(99, 2.0), tiny(TARGET.0, TARGET.1), temp07(), "bad drafter, T=0.7");
}

#[test]
fn good_drafter_keeps_target_distribution_with_depths_varying_per_step() {
    let t = tiny(TARGET.0, TARGET.1);
    run_capped(t.clone(), t, temp07(), "good drafter, T=0.7, depth 0-3 per step", true);
}

#[test]
fn good_drafter_keeps_target_distribution_at_temperature() {
    let t = tiny(TARGET.0, TARGET.1);
    run(t.clone(), t, temp07(), "good drafter, T=0.7");
}

#[test]
fn bad_drafter_keeps_target_distribution_with_top_k_top_p() {
    run(tiny(99, 2.0), tiny(TARGET.0, TARGET.1), topk_topp(), "bad drafter, top-k 5, top-p 0.9");
}

#[test]
fn good_drafter_keeps_target_distribution_with_top_k_top_p() {
    let t = tiny(TARGET.0, TARGET.1);
    run(t.clone(), t, topk_topp(), "good drafter, top-k 5, top-p 0.9");
}

/// Near the context limit each round's tree is cut so the bonus token still
/// fits, and greedy speculation stops exactly where plain decoding does.
#[test]
fn context_limit_cuts_trees_like_plain_decoding() {
    aerie_kernels::cpu::pool::set_threads(1);
    let t = tiny(TARGET.0, TARGET.1);
    let f = ProposerFactory::standalone(t.clone(), t.clone(), TreeSpec { num_steps: 6, topk: 2, num_draft_tokens: 10 }).unwrap();
    for prompt_len in [50usize, 58, 62, 63] {
        let prompt: Vec<u32> = (0..prompt_len).map(|i| (i * 5 % VOCAB) as u32).collect();
        let req = GenerateRequest { prompt_ids: &prompt, max_tokens: 100, sampling: SamplingParams::default(), stop_ids: &[] };
        let plain = aerie_engine::generate::generate(&t, &req, &mut |_| {}).unwrap();
        let mut p = f.proposer();
        let (spec, _) = speculative_generate(&t, p.as_mut(), &req, &mut |_| {}).unwrap();
        assert_eq!(spec.token_ids, plain.token_ids, "prompt of {prompt_len} in a 64-position model");
        assert_eq!(spec.token_ids.len(), 64 - prompt_len);
        assert_eq!(spec.finish_reason, plain.finish_reason);
    }
}

/// The target on the interpreted CUDA device (the host code and `.cu`
/// kernels a GPU runs, on the CPU): its exact distribution is computed from
/// its own bf16 logits, and rejection sampling against a CPU drafter must
/// keep it. Each first token's draw, and each verification's walk and
/// draw, runs on the device
/// (`sample_dist.cu`, `tree_sample.cu`), with temperature, top-k, top-p
/// and min-p. Two tokens (64 cells) and fewer samples than above, since
/// every target forward runs the kernels in the interpreter; the total
/// variation bound is scaled to that sample size's noise.
#[test]
fn bad_drafter_keeps_the_distribution_of_a_target_on_the_interpreted_device() {
    const N: u64 = 8_000;
    aerie_kernels::cpu::pool::set_threads(1);
    let host = Arc::try_unwrap(tiny(TARGET.0, TARGET.1)).ok().unwrap();
    let target = Arc::new(host.to_device(Arc::new(aerie_kernels::cuda::device::InterpDevice::new(64 << 20)), 256).unwrap());
    // Every filter at once in the second setting; each alone is checked
    // against its CPU reference in the kernels' own tests.
    let filters = SamplingParams { min_p: 0.15, ..topk_topp() };
    let exact_of = |params: &SamplingParams| {
        let p1 = next_probs(&target, &PROMPT, params);
        let mut exact = vec![0.0; VOCAB * VOCAB];
        for a in 0..VOCAB {
            if p1[a] > 0.0 {
                let p2 = next_probs(&target, &[&PROMPT[..], &[a as u32]].concat(), params);
                for b in 0..VOCAB {
                    exact[a * VOCAB + b] = p1[a] * p2[b];
                }
            }
        }
        exact
    };
    // min-p must cut what top-k and top-p keep, and leave enough cells.
    let (with, without) = (exact_of(&filters), exact_of(&topk_topp()));
    let kept = |e: &[f64]| e.iter().filter(|&&p| p > 0.0).count();
    assert!(kept(&with) < kept(&without) && kept(&with) >= 4, "min-p keeps {} of {} sequences", kept(&with), kept(&without));
    for (params, label) in [(temp07(), "device target, T=0.7"), (filters, "device target, T=1, top-k 5, top-p 0.9, min-p 0.15")] {
        let exact = exact_of(&params);
        let noise = 0.5 * (2.0 / (std::f64::consts::PI * N as f64)).sqrt() * exact.iter().map(|p| p.sqrt()).sum::<f64>();
        let f = ProposerFactory::standalone(tiny(99, 2.0), target.clone(), TreeSpec { num_steps: 3, topk: 2, num_draft_tokens: 5 }).unwrap();
        let mut proposer = f.proposer();
        let mut counts = vec![0u64; VOCAB * VOCAB];
        let mut verifies = 0;
        let sampled_before = target.cuda().unwrap().trees_sampled();
        for s in 0..N {
            let req = GenerateRequest { prompt_ids: &PROMPT, max_tokens: 2, sampling: SamplingParams { seed: Some(7_000_003 * s + 5), ..params.clone() }, stop_ids: &[] };
            let (out, st) = speculative_generate(&target, proposer.as_mut(), &req, &mut |_| {}).unwrap();
            counts[out.token_ids[0] as usize * VOCAB + out.token_ids[1] as usize] += 1;
            verifies += st.spec_verify_ct;
        }
        assert!(verifies > 0, "{label}: nothing was verified");
        // Every first token was drawn, and every verification walked its
        // tree, on the device (`cuda::sample`).
        assert_eq!(target.cuda().unwrap().trees_sampled(), sampled_before + N + verifies as u64, "{label}");
        let (p, tv, cells) = compare(&counts, &exact, N);
        eprintln!("{label}: chi-square p = {p:.4} over {cells} cells, TV = {tv:.4} (noise ~{noise:.4})");
        assert!(p > 0.001, "{label}: chi-square p = {p}");
        assert!(tv < 3.0 * noise, "{label}: total variation {tv}, noise {noise}");
    }
}
