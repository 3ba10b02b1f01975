//! The cost of disaggregation, side by side with in-process decoding.
//!
//!     cargo bench -p aerie-launcher --bench cluster_bench -- [QUESTIONS] [MAX_TOKENS]
//!
//! Starts one draft worker (the shipped EAGLE head, (3, 1, 4) chain with its
//! hot vocabulary) and two target workers that differ only in feature
//! transport (shared memory, inline bytes), all as real processes on
//! loopback. Then:
//!
//! 1. Per MT-bench first turn (default 16 evenly spaced; greedy, EOS
//!    ignored, 128 new tokens), five runs back to back so machine noise hits
//!    them alike: in-process speculative, cluster speculative over shared
//!    memory, cluster speculative inline, in-process plain, cluster plain.
//!    Step time = decode wall time / verification steps; the cluster figure
//!    is measured by the client (first chunk to final message), so it
//!    includes gRPC, the session hop and feature transport. Every output is
//!    checked against in-process plain greedy.
//! 2. Throughput with 1, 4 and 16 requests in flight (32 requests of
//!    MAX_TOKENS/2 tokens), speculative and plain alternating.

use aerie_draft_worker::{shipped_head, DraftOptions, ProposerFactory, SpecAlgorithm};
use aerie_engine::generate::{generate, GenerateRequest};
use aerie_engine::spec::{speculative_generate, TreeSpec};
use aerie_engine::{ChatMessage, DType, Engine, SamplingParams};
use aerie_proto::v1::target_service_client::TargetServiceClient;
use aerie_proto::v1::GenerateRequest as WireRequest;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;
use tokio_stream::StreamExt;

struct Proc {
    child: Child,
    grpc: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aerie")).args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.find_map(|l| l.ok().filter(|l| l.starts_with("READY "))).expect("worker failed to start");
    std::thread::spawn(move || for _ in lines {});
    let grpc = line.split_whitespace().find_map(|w| w.strip_prefix("grpc=")).unwrap();
    Proc { child, grpc: format!("http://{grpc}") }
}

/// Client-measured result of one request.
#[derive(Default, Clone, Copy)]
struct Run {
    tokens: usize,
    steps: usize,
    decode_s: f64,
}

async fn remote(c: &mut TargetServiceClient<tonic::transport::Channel>, prompt: &[u32], max_tokens: usize, draft: &str) -> (Vec<u32>, Run) {
    let r = WireRequest {
        prompt_ids: prompt.to_vec(),
        max_tokens: Some(max_tokens as u32),
        draft_worker: draft.to_string(),
        ignore_eos: true,
        ..Default::default()
    };
    let mut s = c.generate(r).await.unwrap().into_inner();
    let mut toks = Vec::new();
    let mut first = None;
    while let Some(m) = s.next().await {
        let m = m.unwrap();
        first.get_or_insert_with(Instant::now);
        toks.extend(m.token_ids);
        if let Some(f) = m.finished {
            let steps = if draft.is_empty() { toks.len() - 1 } else { f.spec_verify_ct as usize };
            let run = Run { tokens: toks.len() - 1, steps, decode_s: first.unwrap().elapsed().as_secs_f64() };
            return (toks, run);
        }
    }
    panic!("stream ended without a final message");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let questions: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(16);
    let max_tokens: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(128);
    let threads = std::env::var("AERIE_THREADS").unwrap_or_else(|_| "2".into());
    let e = Engine::load("smollm2", DType::Auto).expect("load smollm2");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mt_bench.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let n = questions.min(lines.len());
    let prompts: Vec<Vec<u32>> = (0..n)
        .map(|i| {
            let v: serde_json::Value = serde_json::from_str(lines[i * lines.len() / n]).unwrap();
            e.chat_prompt_ids(&[ChatMessage::new("user", v["turns"][0].as_str().unwrap())]).unwrap()
        })
        .collect();
    let head = shipped_head(&e.model).expect("the shipped head (models/smollm2-135m-eagle)");
    let tree = TreeSpec { num_steps: 3, topk: 1, num_draft_tokens: 4 };
    let opts = DraftOptions {
        algorithm: SpecAlgorithm::Eagle,
        draft_model_path: Some(head.clone()),
        tree,
        token_map: Some(head.join("hot_vocab.json")),
        ngram: Default::default(),
        min_draft_score: 0.0,
    };
    let factory = ProposerFactory::new(opts, e.model.clone(), &e.tokenizer).unwrap();
    let t = threads.as_str();
    let draft = start(&["--threads", t, "draft-worker", "--speculative-num-steps", "3", "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "4"]);
    let shm = start(&["--threads", t, "target-worker", "--feature-transport", "shm"]);
    let inline = start(&["--threads", t, "target-worker", "--feature-transport", "inline"]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (mut c_shm, mut c_inl) = rt.block_on(async {
        (TargetServiceClient::connect(shm.grpc.clone()).await.unwrap(), TargetServiceClient::connect(inline.grpc.clone()).await.unwrap())
    });
    // Warm up every path once.
    rt.block_on(async {
        remote(&mut c_shm, &prompts[0], 8, &draft.grpc).await;
        remote(&mut c_inl, &prompts[0], 8, &draft.grpc).await;
    });

    let labels = ["in-process EAGLE", "cluster EAGLE, shm", "cluster EAGLE, inline", "in-process plain", "cluster plain"];
    let mut sums = [Run::default(); 5];
    for (i, p) in prompts.iter().enumerate() {
        let req = GenerateRequest { prompt_ids: p, max_tokens, sampling: SamplingParams::default(), stop_ids: &[] };
        let mut prop = factory.proposer();
        let (spec, st) = speculative_generate(&e.model, prop.as_mut(), &req, &mut |_| {}).unwrap();
        let plain = generate(&e.model, &req, &mut |_| {}).unwrap();
        assert_eq!(spec.token_ids, plain.token_ids, "question {i}: in-process speculation differs");
        let runs = rt.block_on(async {
            let a = remote(&mut c_shm, p, max_tokens, &draft.grpc).await;
            let b = remote(&mut c_inl, p, max_tokens, &draft.grpc).await;
            let c = remote(&mut c_shm, p, max_tokens, "").await;
            [a, b, c]
        });
        for (k, (toks, _)) in runs.iter().enumerate() {
            assert_eq!(toks, &plain.token_ids, "question {i}: {} differs from plain", labels[[1, 2, 4][k]]);
        }
        let local = |tokens: usize, steps: usize, ms: f64| Run { tokens, steps, decode_s: ms / 1e3 };
        let this = [
            local(spec.token_ids.len() - 1, st.spec_verify_ct, spec.stats.decode_ms),
            runs[0].1,
            runs[1].1,
            local(plain.token_ids.len() - 1, plain.token_ids.len() - 1, plain.stats.decode_ms),
            runs[2].1,
        ];
        for (s, r) in sums.iter_mut().zip(this) {
            s.tokens += r.tokens;
            s.steps += r.steps;
            s.decode_s += r.decode_s;
        }
        eprintln!("question {}/{}: done", i + 1, prompts.len());
    }
    println!("\n## Step cost, {} MT-bench first turns x {max_tokens} tokens, threads {threads}\n", prompts.len());
    println!("| path | tokens | steps | tau | ms/step | tok/s | step vs in-process |");
    println!("|---|---|---|---|---|---|---|");
    for (k, (l, s)) in labels.iter().zip(&sums).enumerate() {
        let ms = s.decode_s * 1e3 / s.steps as f64;
        let base = if k < 3 { &sums[0] } else { &sums[3] };
        let base_ms = base.decode_s * 1e3 / base.steps as f64;
        println!(
            "| {l} | {} | {} | {:.2} | {:.2} | {:.1} | {:+.1}% |",
            s.tokens,
            s.steps,
            s.tokens as f64 / s.steps as f64,
            ms,
            s.tokens as f64 / s.decode_s,
            (ms / base_ms - 1.0) * 100.0
        );
    }

    // Throughput at fixed concurrency.
    let total = 32usize;
    let per = (max_tokens / 2).max(8);
    println!("\n## Throughput, {total} requests x {per} tokens (shared-memory target)\n");
    println!("| in flight | plain tok/s | EAGLE tok/s | EAGLE / plain | EAGLE mean tau |");
    println!("|---|---|---|---|---|");
    let prompts = Arc::new(prompts);
    for conc in [1usize, 4, 16] {
        let mut res = [(0.0f64, 0.0f64); 2];
        for (k, spec) in [false, true].into_iter().enumerate() {
            let (tok_s, tau) = rt.block_on({
                let prompts = prompts.clone();
                let c = c_shm.clone();
                let d = if spec { draft.grpc.clone() } else { String::new() };
                async move {
                    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                    let t0 = Instant::now();
                    let mut tasks = Vec::new();
                    for _ in 0..conc {
                        let (mut c, next, prompts, d) = (c.clone(), next.clone(), prompts.clone(), d.clone());
                        tasks.push(tokio::spawn(async move {
                            let (mut toks, mut steps) = (0usize, 0usize);
                            loop {
                                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                if i >= total {
                                    return (toks, steps);
                                }
                                let (_, r) = remote(&mut c, &prompts[i % prompts.len()], per, &d).await;
                                toks += r.tokens + 1;
                                steps += r.steps;
                            }
                        }));
                    }
                    let (mut toks, mut steps) = (0, 0);
                    for t in tasks {
                        let (a, b) = t.await.unwrap();
                        toks += a;
                        steps += b;
                    }
                    (toks as f64 / t0.elapsed().as_secs_f64(), (toks - total) as f64 / steps as f64)
                }
            });
            res[k] = (tok_s, tau);
        }
        println!("| {conc} | {:.1} | {:.1} | {:.2} | {:.2} |", res[0].0, res[1].0, res[1].0 / res[0].0, res[1].1);
    }
}
