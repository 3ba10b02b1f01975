//! The cluster runtime end to end: real `aerie target-worker` and
//! `aerie draft-worker` processes on loopback with the real SmolLM2, driven
//! through gRPC. Each test starts its own workers; a file-wide lock keeps
//! two clusters from sharing the two CPU cores at once.

use crate::common;
use common::{engine, serial, PROMPTS};

use aerie_engine::generate::{generate, GenerateRequest as EngineRequest};
use aerie_engine::{ChatMessage, SamplingParams};
use aerie_proto::v1::target_service_client::TargetServiceClient;
use aerie_proto::v1::{Finished, GenerateRequest, HealthRequest, SamplingParams as WireSampling};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

pub(crate) fn prompt_ids(i: usize) -> Vec<u32> {
    engine()
        .chat_prompt_ids(&[ChatMessage::new("user", PROMPTS[i % PROMPTS.len()])])
        .unwrap()
}

/// In-process plain greedy, EOS ignored: the reference.
pub(crate) fn reference(i: usize, max_tokens: usize) -> Vec<u32> {
    let ids = prompt_ids(i);
    let req = EngineRequest {
        prompt_ids: &ids,
        max_tokens,
        sampling: SamplingParams::default(),
        stop_ids: &[],
    };
    generate(&engine().model, &req, &mut |_| {})
        .unwrap()
        .token_ids
}

/// A worker process (killed when dropped) and the addresses its READY line names.
pub(crate) struct Worker {
    pub(crate) proc: common::Proc,
    pub(crate) grpc: String,
    metrics: String,
}

pub(crate) fn start(args: &[&str]) -> Worker {
    Worker::from_proc(common::start(args, "READY ", &common::ready_field("grpc=")))
}

impl Worker {
    /// The worker whose READY line `proc` read.
    pub(crate) fn from_proc(proc: common::Proc) -> Worker {
        let metrics = format!("http://{}/metrics", common::ready_field("metrics=")(&proc.ready));
        Worker { grpc: format!("http://{}", proc.addr), metrics, proc }
    }
}

pub(crate) fn draft_worker() -> Worker {
    // The shipped head as a (3, 1, 4) chain with its hot vocabulary.
    start(&[
        "draft-worker",
        "--speculative-num-steps",
        "3",
        "--speculative-eagle-topk",
        "1",
        "--speculative-num-draft-tokens",
        "4",
    ])
}

pub(crate) fn target_worker(extra: &[&str]) -> Worker {
    let mut args = vec!["target-worker"];
    args.extend_from_slice(extra);
    start(&args)
}

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) async fn client(p: &Worker) -> TargetServiceClient<tonic::transport::Channel> {
    TargetServiceClient::connect(p.grpc.clone()).await.unwrap()
}

pub(crate) fn greedy(i: usize, max_tokens: u32, draft: Option<&Worker>) -> GenerateRequest {
    GenerateRequest {
        request_id: String::new(),
        prompt_ids: prompt_ids(i),
        max_tokens: Some(max_tokens),
        sampling: None,
        stop_ids: vec![],
        draft_worker: draft.map(|d| d.grpc.clone()).unwrap_or_default(),
        ignore_eos: true, // as the reference does
        ..Default::default()
    }
}

/// Runs a request to the end: its tokens and final message.
pub(crate) async fn collect(
    mut c: TargetServiceClient<tonic::transport::Channel>,
    r: GenerateRequest,
) -> Result<(Vec<u32>, Finished), tonic::Status> {
    let mut s = c.generate(r).await?.into_inner();
    let mut toks = Vec::new();
    while let Some(msg) = s.next().await {
        let m = msg?;
        toks.extend(m.token_ids);
        if let Some(f) = m.finished {
            return Ok((toks, f));
        }
    }
    Err(tonic::Status::unknown(
        "stream ended without a final message",
    ))
}

/// A plain HTTP/1.0 GET of `http://host:port/path`; the whole response.
async fn http_get(url: &str) -> std::io::Result<String> {
    let url = url.trim_start_matches("http://");
    let (host, path) = url.split_once('/').unwrap_or((url, ""));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

pub(crate) async fn scrape(p: &Worker) -> String {
    http_get(&p.metrics).await.unwrap()
}

/// The sum of a metric's samples whose line starts with `prefix`.
pub(crate) fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn cluster_greedy_equals_in_process_plain_with_and_without_speculation() {
    let _g = serial();
    const N: u32 = 40;
    let want: Vec<Vec<u32>> = (0..10).map(|i| reference(i, N as usize)).collect();
    let draft = draft_worker();
    let target = target_worker(&[]);
    rt().block_on(async {
        for spec in [true, false] {
            let c = client(&target).await;
            let tasks: Vec<_> = (0..10)
                .map(|i| tokio::spawn(collect(c.clone(), greedy(i, N, spec.then_some(&draft)))))
                .collect();
            let mut tau = 0.0;
            for (i, t) in tasks.into_iter().enumerate() {
                let (toks, fin) = t.await.unwrap().unwrap();
                assert_eq!(toks, want[i], "speculation {spec}, prompt {i}");
                assert_eq!(fin.finish_reason, "length");
                assert!(!fin.draft_fallback, "prompt {i} fell back");
                tau += fin.spec_accept_length / 10.0;
            }
            eprintln!("speculation {spec}: mean tau {tau:.2}");
            if spec {
                assert!(
                    tau > 1.05,
                    "the shipped head accepted almost nothing through the cluster (tau {tau:.2})"
                );
            }
        }
        let m = scrape(&target).await;
        assert!(
            metric(&m, "aerie_target_draft_tokens_accepted_total") > 0.0,
            "{m}"
        );
        // Shared memory carried the features (both workers are on this host).
        assert!(
            metric(&m, "aerie_target_feature_bytes_total{transport=\"shm\"}") > 0.0,
            "{m}"
        );
    });
}

#[test]
fn adaptive_budgets_keep_greedy_output_and_report_their_choices() {
    let _g = serial();
    const N: u32 = 32;
    let want: Vec<Vec<u32>> = (0..8).map(|i| reference(i, N as usize)).collect();
    let draft = draft_worker();
    let target = target_worker(&["--speculative-adaptive"]);
    rt().block_on(async {
        let c = client(&target).await;
        let tasks: Vec<_> = (0..8).map(|i| tokio::spawn(collect(c.clone(), greedy(i, N, Some(&draft))))).collect();
        let mut budgets = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            let (toks, fin) = t.await.unwrap().unwrap();
            assert_eq!(toks, want[i], "prompt {i}");
            assert!(!fin.draft_fallback, "prompt {i} fell back");
            budgets.push(fin.spec_mean_budget);
        }
        // The mean budget per verification is reported with each request;
        // the drafter's own depth (the shipped head's default tree) bounds it.
        assert!(budgets.iter().all(|b| b.is_finite() && (0.0..=8.0).contains(b)), "{budgets:?}");
        assert!(budgets.iter().any(|&b| b > 0.0), "{budgets:?}");
        // The debug view: the fitted cost model, the acceptance prior and
        // the last requests' choices.
        let debug = http_get(&target.metrics.replace("/metrics", "/debug/spec_budget")).await.unwrap();
        let (head, body) = debug.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{debug}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["adaptive"], true, "{v}");
        assert!(v["steps"].as_u64().unwrap() > 0 && v["cost_model_seconds"]["per_row"].as_f64().unwrap() > 0.0, "{v}");
        assert!(!v["acceptance_prior_by_depth"].as_array().unwrap().is_empty(), "{v}");
        assert!(v["running"].as_array().unwrap().iter().all(|r| r["budget"].is_null() || r["budget"].as_u64().is_some()), "{v}");
        let m = scrape(&target).await;
        // A budget was chosen for the steps after each request's first draft.
        assert!(metric(&m, "aerie_target_spec_budget_depth_count") > 0.0, "{m}");
        assert!(metric(&m, "aerie_target_predicted_accept_length_count") > 0.0, "{m}");
        // Commits wait for the next proposal: a step at depth 0 sends the
        // draft worker nothing, so there are no more commit messages than
        // proposals (one per request for each 64 tokens held at most).
        let (commits, proposes) = (metric(&m, "aerie_target_draft_messages_total{kind=\"commit\"}"), metric(&m, "aerie_target_draft_messages_total{kind=\"propose\"}"));
        assert!(proposes > 0.0 && commits <= proposes, "{commits} commits, {proposes} proposals\n{m}");
        // The cost model was calibrated at start and fitted since.
        assert!(metric(&m, "aerie_target_cost_model_seconds{term=\"per_row\"}") > 0.0, "{m}");
        // The intercept is fitted too, and may fairly be 0 when the rows
        // explain the step times (a loaded machine showed it so).
        assert!(m.lines().any(|l| l.starts_with("aerie_target_cost_model_seconds{term=\"fixed\"}")), "{m}");
    });
}

/// `--speculative-overlap`: half the running requests verify while the draft
/// worker drafts for the other half, so each request's proposals are asked
/// a step ahead; greedy output is still the plain output, token for token,
/// with adaptive budgets too, and the requests still speculate.
#[test]
fn overlapped_drafting_keeps_greedy_output() {
    let _g = serial();
    const N: u32 = 32;
    let want: Vec<Vec<u32>> = (0..5).map(|i| reference(i, N as usize)).collect();
    let draft = draft_worker();
    let target = target_worker(&["--speculative-overlap", "--speculative-adaptive"]);
    rt().block_on(async {
        let c = client(&target).await;
        // Five at once: lanes of three and two, evened out as requests end.
        let tasks: Vec<_> = (0..5).map(|i| tokio::spawn(collect(c.clone(), greedy(i, N, Some(&draft))))).collect();
        let mut accepted = 0;
        for (i, t) in tasks.into_iter().enumerate() {
            let (toks, fin) = t.await.unwrap().unwrap();
            assert_eq!(toks, want[i], "prompt {i}");
            assert!(!fin.draft_fallback, "prompt {i} fell back");
            accepted += fin.spec_num_correct_drafts;
        }
        assert!(accepted > 0, "no draft was accepted");
        let m = scrape(&target).await;
        assert!(metric(&m, "aerie_target_overlapped_steps_total") > 0.0, "{m}");
        // One request alone has no other lane: it steps every time.
        let (toks, _) = collect(c.clone(), greedy(6, 12, Some(&draft))).await.unwrap();
        assert_eq!(toks, reference(6, 12));
    });
}

#[test]
fn inline_feature_transport_is_lossless_too() {
    let _g = serial();
    const N: u32 = 24;
    let want: Vec<Vec<u32>> = (0..3).map(|i| reference(i, N as usize)).collect();
    let draft = draft_worker();
    let target = target_worker(&["--feature-transport", "inline"]);
    rt().block_on(async {
        let c = client(&target).await;
        for (i, w) in want.iter().enumerate() {
            let (toks, fin) = collect(c.clone(), greedy(i, N, Some(&draft)))
                .await
                .unwrap();
            assert_eq!(&toks, w, "prompt {i}");
            assert!(fin.spec_verify_ct > 0 && !fin.draft_fallback);
        }
        let m = scrape(&target).await;
        assert!(metric(&m, "aerie_target_feature_bytes_total{transport=\"inline\"}") > 0.0);
        assert_eq!(
            metric(&m, "aerie_target_feature_bytes_total{transport=\"shm\"}"),
            0.0
        );
    });
}

#[test]
fn sixteen_concurrent_mixed_requests_batch_and_complete() {
    let _g = serial();
    let draft = draft_worker();
    let target = target_worker(&[]);
    rt().block_on(async {
        let c = client(&target).await;
        let mut tasks = Vec::new();
        for k in 0..16usize {
            let len = 8 + (k as u32 * 5) % 40;
            let mut r = greedy(k, len, (k % 2 == 0).then_some(&draft));
            if k % 4 == 3 {
                r.sampling = Some(WireSampling {
                    temperature: Some(0.8),
                    top_p: Some(0.95),
                    seed: Some(k as u64),
                    ..Default::default()
                });
            }
            tasks.push((
                k,
                len,
                r.sampling.is_some(),
                tokio::spawn(collect(c.clone(), r)),
            ));
        }
        for (k, len, sampled, t) in tasks {
            let (toks, fin) = t
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("request {k}: {e}"));
            assert_eq!(toks.len(), len as usize, "request {k}");
            assert_eq!(fin.completion_tokens, len);
            assert!(toks
                .iter()
                .all(|&t| (t as usize) < engine().model.config.vocab_size));
            if !sampled {
                assert_eq!(toks, reference(k, len as usize), "request {k}");
            }
        }
        let m = scrape(&target).await;
        let steps = metric(&m, "aerie_target_batch_size_requests_count");
        let single = metric(&m, "aerie_target_batch_size_requests_bucket{le=\"1\"}");
        assert!(
            steps > single,
            "every step verified one request: {steps} steps, {single} of batch 1"
        );
    });
}

#[test]
fn a_stalled_draft_connect_delays_only_its_own_requests() {
    let _g = serial();
    let draft = draft_worker();
    let target = target_worker(&["--draft-connect-timeout-ms", "30000"]);
    // A fake draft worker, named as such: it accepts TCP (the kernel's
    // backlog does) and never speaks HTTP/2, a stall a real draft worker
    // will not produce on demand.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = format!("http://{}", silent.local_addr().unwrap());
    rt().block_on(async {
        let c = client(&target).await;
        let mut stalled = greedy(0, 4, None);
        stalled.draft_worker = silent_addr;
        let waiting = tokio::spawn(collect(c.clone(), stalled));
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A request paired with the healthy draft worker does not queue
        // behind the stalled connect (30 s).
        let t = Instant::now();
        let (toks, f) = collect(c.clone(), greedy(1, 8, Some(&draft))).await.unwrap();
        assert_eq!(toks, reference(1, 8));
        assert!(f.spec_verify_ct > 0, "the healthy draft worker was used");
        assert!(t.elapsed() < Duration::from_secs(15), "waited {:?} behind another address's connect", t.elapsed());
        waiting.abort();
    });
    drop(silent);
}

#[test]
fn draft_worker_killed_mid_stream_requests_finish_identically() {
    let _g = serial();
    const N: u32 = 96;
    let want: Vec<Vec<u32>> = (0..4).map(|i| reference(i, N as usize)).collect();
    let mut draft = draft_worker();
    let target = target_worker(&[]);
    rt().block_on(async {
        let c = client(&target).await;
        let mut streams = Vec::new();
        for i in 0..4 {
            let mut cc = c.clone();
            streams.push(
                cc.generate(greedy(i, N, Some(&draft)))
                    .await
                    .unwrap()
                    .into_inner(),
            );
        }
        let mut got: Vec<Vec<u32>> = vec![Vec::new(); 4];
        // Wait until every request has made progress with the draft alive.
        for (i, s) in streams.iter_mut().enumerate() {
            while got[i].len() < 6 {
                let m = s.next().await.unwrap().unwrap();
                got[i].extend(m.token_ids);
            }
        }
        draft.proc.child.kill().unwrap();
        draft.proc.child.wait().unwrap();
        for (i, mut s) in streams.into_iter().enumerate() {
            let fin = loop {
                let m = s
                    .next()
                    .await
                    .expect("stream ended early")
                    .expect("request failed");
                got[i].extend(m.token_ids);
                if let Some(f) = m.finished {
                    break f;
                }
            };
            assert_eq!(got[i], want[i], "request {i}");
            assert!(
                fin.draft_fallback,
                "request {i} did not notice the dead draft"
            );
        }
        let m = scrape(&target).await;
        assert!(
            metric(&m, "aerie_target_draft_fallbacks_total") >= 4.0,
            "{m}"
        );
        // New requests naming the dead draft worker still succeed, without speculation.
        let (toks, fin) = collect(c.clone(), greedy(5, 12, Some(&draft)))
            .await
            .unwrap();
        assert_eq!(toks, reference(5, 12));
        assert!(fin.draft_fallback);
    });
}

/// How a Generate stream ends (its first error, its final message, or
/// `None` when it closes), skipping its token chunks; `None` outside if it
/// has not ended within `limit`.
pub(crate) async fn stream_end(
    mut s: tonic::Streaming<aerie_proto::v1::GenerateResponse>,
    limit: Duration,
) -> Option<Option<Result<aerie_proto::v1::GenerateResponse, tonic::Status>>> {
    tokio::time::timeout(limit, async {
        loop {
            match s.next().await {
                Some(Ok(m)) if m.finished.is_none() => continue,
                other => return other,
            }
        }
    })
    .await
    .ok()
}

#[test]
fn target_worker_killed_every_stream_ends_with_an_error_quickly() {
    let _g = serial();
    let mut target = target_worker(&[]);
    rt().block_on(async {
        let c = client(&target).await;
        let mut streams = Vec::new();
        for i in 0..3 {
            let mut cc = c.clone();
            let mut s = cc
                .generate(greedy(i, 2000, None))
                .await
                .unwrap()
                .into_inner();
            s.next().await.unwrap().unwrap();
            streams.push(s);
        }
        target.proc.child.kill().unwrap();
        let t = Instant::now();
        for s in streams {
            let end = stream_end(s, Duration::from_secs(5)).await.expect("a stream hung after the target died");
            assert!(
                matches!(end, Some(Err(_)) | None),
                "expected an error, got {end:?}"
            );
        }
        assert!(t.elapsed() < Duration::from_secs(5));
    });
}

#[test]
fn full_queue_and_bad_requests_are_refused_and_the_worker_stays_up() {
    let _g = serial();
    let target = target_worker(&["--max-running-requests", "1", "--max-queued-requests", "1"]);
    rt().block_on(async {
        let mut c = client(&target).await;
        let mut a = c
            .generate(greedy(0, 4000, None))
            .await
            .unwrap()
            .into_inner();
        a.next().await.unwrap().unwrap(); // running
        let mut b = c.generate(greedy(1, 8, None)).await.unwrap().into_inner(); // waits
        let full = c
            .generate(greedy(2, 8, None))
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(full.code(), tonic::Code::ResourceExhausted, "{full:?}");
        // The client of A goes away: A is aborted (4000 tokens would take
        // far longer than the bound below) and B gets to run.
        drop(a);
        let t = Instant::now();
        let mut b_toks = Vec::new();
        while let Some(m) = tokio::time::timeout(Duration::from_secs(20), b.next())
            .await
            .expect("B never ran: A was not aborted")
        {
            b_toks.extend(m.unwrap().token_ids);
        }
        assert_eq!(b_toks, reference(1, 8));
        eprintln!(
            "B finished {:.2}s after A's client left",
            t.elapsed().as_secs_f64()
        );

        let vocab = engine().model.config.vocab_size as u32;
        let ctx = engine().model.config.max_position_embeddings;
        let cases: Vec<(&str, GenerateRequest)> = vec![
            (
                "empty prompt",
                GenerateRequest {
                    prompt_ids: vec![],
                    ..greedy(0, 8, None)
                },
            ),
            (
                "token outside the vocabulary",
                GenerateRequest {
                    prompt_ids: vec![1, vocab + 7],
                    ..greedy(0, 8, None)
                },
            ),
            (
                "prompt longer than the context",
                GenerateRequest {
                    prompt_ids: vec![1; ctx + 100_000],
                    ..greedy(0, 8, None)
                },
            ),
            (
                "negative temperature",
                GenerateRequest {
                    sampling: Some(WireSampling {
                        temperature: Some(-1.0),
                        ..Default::default()
                    }),
                    ..greedy(0, 8, None)
                },
            ),
            (
                "top_p above 1",
                GenerateRequest {
                    sampling: Some(WireSampling {
                        top_p: Some(1.5),
                        ..Default::default()
                    }),
                    ..greedy(0, 8, None)
                },
            ),
            (
                "top_logprobs above 20",
                GenerateRequest { logprobs: true, top_logprobs: 21, ..greedy(0, 8, None) },
            ),
            (
                "logit_bias outside the vocabulary",
                GenerateRequest {
                    sampling: Some(WireSampling { logit_bias: [(vocab + 1, 1.0)].into(), ..Default::default() }),
                    ..greedy(0, 8, None)
                },
            ),
            ("n above 32", GenerateRequest { n: 33, ..greedy(0, 8, None) }),
            (
                "a regex that does not parse",
                GenerateRequest {
                    constraint: Some(aerie_proto::v1::Constraint { kind: Some(aerie_proto::v1::constraint::Kind::Regex("((".into())) }),
                    ..greedy(0, 8, None)
                },
            ),
        ];
        for (what, r) in cases {
            let e = c.generate(r).await.map(|_| ()).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}: {e:?}");
            assert!(!e.message().is_empty());
        }
        c.health(HealthRequest {})
            .await
            .expect("the worker went down");
        let (toks, _) = collect(c.clone(), greedy(3, 10, None)).await.unwrap();
        assert_eq!(toks, reference(3, 10));
    });
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let _g = serial();
    let mut target = target_worker(&[]);
    rt().block_on(async {
        let mut c = client(&target).await;
        let mut s = c.generate(greedy(4, 48, None)).await.unwrap().into_inner();
        let mut toks = s.next().await.unwrap().unwrap().token_ids;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(target.proc.child.id() as i32, libc::SIGTERM) };
        while let Some(m) = s.next().await {
            let m = m.expect("an in-flight request failed during drain");
            toks.extend(m.token_ids);
        }
        assert_eq!(toks, reference(4, 48));
    });
    let t = Instant::now();
    let status = loop {
        if let Some(st) = target.proc.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the worker did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn serve_fails_with_the_failing_childs_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_aerie"))
        .args([
            "serve",
            "--speculative-algorithm",
            "EAGLE",
            "--speculative-draft-model-path",
            "/nonexistent/head",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("draft-0 failed at startup") && err.contains("/nonexistent/head"),
        "{err}"
    );
}

/// A real Prometheus (Debian's `prometheus`) scrapes both workers, and its
/// query API answers the acceptance rate.
#[test]
fn prometheus_scrapes_both_workers_and_reports_the_acceptance_rate() {
    let _g = serial();
    let draft = draft_worker();
    let target = target_worker(&[]);
    rt().block_on(async {
        let c = client(&target).await;
        for i in 0..3 {
            collect(c.clone(), greedy(i, 24, Some(&draft))).await.unwrap();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let hostport = |u: &str| u.trim_start_matches("http://").split('/').next().unwrap().to_string();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: aerie-target\n    static_configs: [{{targets: ['{}']}}]\n  - job_name: aerie-draft\n    static_configs: [{{targets: ['{}']}}]\n",
        hostport(&target.metrics),
        hostport(&draft.metrics)
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is not installed (scripts/setup.sh installs Debian's `prometheus`)");
    let query = |q: &str| format!("http://127.0.0.1:{port}/api/v1/query?query={q}");
    let rate_q = "sum(aerie_target_draft_tokens_accepted_total)%2Fsum(aerie_target_draft_tokens_proposed_total)";
    let up_q = "sum(up)";
    let result = rt().block_on(async {
        let t = Instant::now();
        loop {
            let value = |body: String| -> Option<f64> {
                let json = body.split("\r\n\r\n").nth(1)?;
                let v: serde_json::Value = serde_json::from_str(json).ok()?;
                v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
            };
            let rate = http_get(&query(rate_q)).await.ok().and_then(value);
            let up = http_get(&query(up_q)).await.ok().and_then(value);
            if let (Some(rate), Some(2.0)) = (rate, up) {
                return Ok((rate, t.elapsed()));
            }
            if t.elapsed() > Duration::from_secs(30) {
                return Err(format!("no answer after 30 s (rate {rate:?}, targets up {up:?})"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let _ = prom.kill();
    let _ = prom.wait();
    let (rate, took) = result.unwrap();
    eprintln!("prometheus: acceptance rate {rate:.3} after {:.1}s", took.as_secs_f64());
    assert!(rate > 0.0 && rate <= 1.0, "acceptance rate {rate}");
}

/// The draft worker refuses bad session messages per sequence and stays up:
/// an unknown sequence, a token outside the vocabulary, features of the
/// wrong shape, and a ring slice announced without a ring.
#[test]
fn draft_worker_rejects_malformed_session_messages_and_stays_up() {
    use aerie_proto::v1::draft_service_client::DraftServiceClient;
    use aerie_proto::v1::session_request::Msg;
    use aerie_proto::v1::session_response::Msg as Out;
    use aerie_proto::v1::{feature_payload, FeaturePayload, ProposeRequest, SequenceBegin, SessionOpen, SessionRequest, ShmSlice};
    let _g = serial();
    let draft = draft_worker();
    rt().block_on(async {
        let mut c = DraftServiceClient::connect(draft.grpc.clone()).await.unwrap();
        let fp = engine().model.fingerprint.clone();
        let h = engine().model.config.hidden_size as u32;
        let vocab = engine().model.config.vocab_size as u32;
        let inline = |rows: u32, width: u32| FeaturePayload { rows, width, data: Some(feature_payload::Data::Inline(vec![0; (rows * width * 4) as usize])) };
        let msgs = vec![
            Msg::Open(SessionOpen { target_fingerprint: fp, shm_path: String::new(), shm_capacity: 0, ..Default::default() }),
            Msg::Propose(ProposeRequest { seq_id: 7, max_depth: 3 }),
            Msg::Begin(SequenceBegin { seq_id: 1, tokens: vec![1, vocab + 1], features: Some(inline(1, h)), constraint: None }),
            Msg::Begin(SequenceBegin { seq_id: 2, tokens: vec![1, 2, 3], features: Some(inline(1, h)), constraint: None }),
            Msg::Begin(SequenceBegin {
                seq_id: 3,
                tokens: vec![1, 2],
                features: Some(FeaturePayload { rows: 1, width: h, data: Some(feature_payload::Data::Shm(ShmSlice { offset: 0, len: h as u64 * 4, crc32: 0 })) }),
                constraint: None,
            }),
            Msg::Begin(SequenceBegin { seq_id: 4, tokens: vec![1, 2], features: Some(inline(1, h)), constraint: None }),
            Msg::Propose(ProposeRequest { seq_id: 4, max_depth: 3 }),
        ];
        let reqs: Vec<SessionRequest> = msgs.into_iter().map(|m| SessionRequest { msg: Some(m) }).collect();
        let mut out = c.session(tokio_stream::iter(reqs)).await.unwrap().into_inner();
        let mut errors = Vec::new();
        let proposal = loop {
            match tokio::time::timeout(Duration::from_secs(30), out.next()).await.expect("no answer").unwrap().unwrap().msg.unwrap() {
                Out::Error(e) => errors.push((e.seq_id, e.error_type)),
                Out::Proposal(p) => break p,
                Out::Ready(r) => assert!(!r.ring_mapped),
            }
        };
        let kinds: Vec<(u64, &str)> = errors.iter().map(|(s, k)| (*s, k.as_str())).collect();
        assert_eq!(kinds, vec![(7, "unknown_sequence"), (1, "bad_token"), (2, "bad_features"), (3, "no_ring")]);
        // The good sequence still gets a tree rooted at its last token.
        assert_eq!((proposal.seq_id, proposal.tokens[0], proposal.parents[0]), (4, 2, -1));
        let mut c2 = DraftServiceClient::connect(draft.grpc.clone()).await.unwrap();
        c2.health(HealthRequest {}).await.expect("the draft worker went down");
    });
}

/// Sends `sig` (`STOP`, `CONT`, `KILL`) to a process.
pub(crate) fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Polls `cond` on the worker's metrics for up to `secs`; the last scrape.
async fn wait_metrics(p: &Worker, secs: u64, cond: impl Fn(&str) -> bool) -> String {
    let t = Instant::now();
    loop {
        let m = scrape(p).await;
        if cond(&m) || t.elapsed() > Duration::from_secs(secs) {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn draft_stalls_past_the_timeout_leave_no_sessions_or_sequences_behind() {
    let _g = serial();
    const N: u32 = 40;
    let want = reference(1, N as usize);
    let draft = draft_worker();
    let target = target_worker(&["--propose-timeout-ms", "300"]);
    let pid = draft.proc.child.id();
    rt().block_on(async {
        let c = client(&target).await;
        let (_, fin) = collect(c.clone(), greedy(0, 8, Some(&draft))).await.unwrap();
        assert!(!fin.draft_fallback);
        for round in 0..2 {
            let mut s = c.clone().generate(greedy(1, N, Some(&draft))).await.unwrap().into_inner();
            let mut got = s.next().await.unwrap().unwrap().token_ids;
            signal(pid, "STOP");
            let fin = loop {
                let m = s.next().await.expect("stream ended early").expect("request failed");
                got.extend(m.token_ids);
                if let Some(f) = m.finished {
                    break f;
                }
            };
            signal(pid, "CONT");
            assert_eq!(got, want, "round {round}");
            assert!(fin.draft_fallback, "round {round}: the stall was not noticed");
        }
        // Every session the target gave up on is closed on the draft too,
        // with its sequences and its ring.
        let released = |m: &str| metric(m, "aerie_draft_sessions ") == 0.0 && metric(m, "aerie_draft_sequences ") == 0.0;
        let m = wait_metrics(&draft, 10, released).await;
        assert!(released(&m), "{m}");
        assert_eq!(metric(&m, "aerie_draft_shm_bytes "), 0.0, "{m}");
        let t = scrape(&target).await;
        assert_eq!(metric(&t, "aerie_target_draft_sessions "), 0.0, "{t}");
        assert_eq!(metric(&t, "aerie_target_draft_sequences "), 0.0, "{t}");
        // And the pair still speculates afterwards.
        let (toks, fin) = collect(c.clone(), greedy(1, N, Some(&draft))).await.unwrap();
        assert_eq!(toks, want);
        assert!(!fin.draft_fallback);
    });
}

/// This process's ring files in `/dev/shm` (the names hold the creator's pid).
pub(crate) fn rings_of(pid: u32) -> Vec<String> {
    let prefix = format!("{}{pid}-", aerie_proto::transport::RING_FILE_PREFIX);
    std::fs::read_dir("/dev/shm")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(&prefix)).collect())
        .unwrap_or_default()
}

#[test]
fn a_killed_target_leaves_nothing_in_dev_shm_and_stale_rings_are_swept() {
    let _g = serial();
    // What a target killed before its draft mapped the ring leaves: a ring
    // file nobody holds the lock of.
    let stale = std::path::Path::new("/dev/shm").join(format!("{}4000000-0", aerie_proto::transport::RING_FILE_PREFIX));
    std::fs::write(&stale, [0u8; 4096]).unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options().write(true).open(&stale).unwrap().set_modified(old).unwrap();
    let draft = draft_worker();
    let mut target = target_worker(&["--feature-transport", "shm"]);
    assert!(!stale.exists(), "the target's start did not sweep the stale ring");
    let pid = target.proc.child.id();
    rt().block_on(async {
        let c = client(&target).await;
        let (toks, fin) = collect(c.clone(), greedy(2, 16, Some(&draft))).await.unwrap();
        assert_eq!(toks, reference(2, 16));
        assert!(!fin.draft_fallback);
        let m = scrape(&target).await;
        assert!(metric(&m, "aerie_target_feature_bytes_total{transport=\"shm\"}") > 0.0, "the ring was not used: {m}");
        assert!(metric(&m, "aerie_target_shm_bytes ") > 0.0, "{m}");
        // Mapped by both sides, the ring has no name left to leak.
        assert_eq!(rings_of(pid), Vec::<String>::new());
    });
    target.proc.child.kill().unwrap();
    target.proc.child.wait().unwrap();
    assert_eq!(rings_of(pid), Vec::<String>::new());
}

#[test]
fn the_draft_evicts_sequences_past_its_cap_and_closes_idle_sessions() {
    use aerie_proto::v1::draft_service_client::DraftServiceClient;
    use aerie_proto::v1::session_request::Msg;
    use aerie_proto::v1::session_response::Msg as Out;
    use aerie_proto::v1::{feature_payload, FeaturePayload, SequenceBegin, SessionOpen, SessionRequest};
    let _g = serial();
    let draft = start(&["draft-worker", "--max-sequences-per-session", "2", "--session-idle-timeout-secs", "1"]);
    rt().block_on(async {
        let mut c = DraftServiceClient::connect(draft.grpc.clone()).await.unwrap();
        let h = engine().model.config.hidden_size as u32;
        let begin = |seq_id| Msg::Begin(SequenceBegin { seq_id, tokens: vec![1, 2], features: Some(FeaturePayload { rows: 1, width: h, data: Some(feature_payload::Data::Inline(vec![0; h as usize * 4])) }), constraint: None });
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for m in [Msg::Open(SessionOpen { target_fingerprint: engine().model.fingerprint.clone(), shm_path: String::new(), shm_capacity: 0, ..Default::default() }), begin(1), begin(2), begin(3)] {
            tx.send(SessionRequest { msg: Some(m) }).unwrap();
        }
        let mut out = c.session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await.unwrap().into_inner();
        let mut next = async || tokio::time::timeout(Duration::from_secs(20), out.next()).await.expect("no answer");
        assert!(matches!(next().await.unwrap().unwrap().msg, Some(Out::Ready(_))));
        match next().await.unwrap().unwrap().msg {
            Some(Out::Error(e)) => assert_eq!((e.seq_id, e.error_type.as_str()), (1, "sequence_evicted")),
            other => panic!("{other:?}"),
        }
        let m = wait_metrics(&draft, 5, |m| metric(m, "aerie_draft_sequences ") == 2.0).await;
        assert_eq!(metric(&m, "aerie_draft_sequences "), 2.0, "{m}");
        // Sequences keep a session open however long it is quiet...
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(metric(&scrape(&draft).await, "aerie_draft_sessions "), 1.0);
        // ...and once they are released, an idle session is closed.
        for id in [2, 3] {
            tx.send(SessionRequest { msg: Some(Msg::Release(aerie_proto::v1::SequenceRelease { seq_id: id })) }).unwrap();
        }
        match next().await.unwrap().unwrap().msg {
            Some(Out::Error(e)) => assert_eq!((e.seq_id, e.error_type.as_str()), (0, "session_idle")),
            other => panic!("{other:?}"),
        }
        assert!(next().await.is_none(), "the stream ends with the session");
        let m = scrape(&draft).await;
        assert_eq!((metric(&m, "aerie_draft_sessions "), metric(&m, "aerie_draft_sequences ")), (0.0, 0.0), "{m}");
        assert_eq!(metric(&m, "aerie_draft_evictions_total{reason=\"sequence_cap\"}"), 1.0, "{m}");
    });
}

/// A proposal asked for ahead of a step and then withdrawn (the step
/// verified its root alone: `--speculative-overlap` with an adaptive budget
/// of 0) is read past, never taken: the next proposal is rooted at the token
/// committed since, and the request keeps speculating.
#[test]
fn a_withdrawn_proposal_request_is_read_past_not_taken() {
    use aerie_engine::spec::{Features, Proposer};
    use aerie_target_worker::remote_draft::DraftLink;
    let _g = serial();
    let draft = draft_worker();
    rt().block_on(async {
        let e = engine();
        let c = &e.model.config;
        let cfg = aerie_target_worker::TargetConfig::default();
        let link = DraftLink::connect(&draft.grpc, &e.model.fingerprint, c.num_layers, c.vocab_size, None, &cfg).await.unwrap();
        let fallback = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut p = link.proposer(fallback.clone(), None);
        let h = c.hidden_size;
        tokio::task::spawn_blocking(move || {
            let mut tokens = prompt_ids(0);
            let rows = tokens.len();
            tokens.push(1000);
            let feats = |n: usize, seed: f32| Features { width: h, data: (0..n * h).map(|i| ((i % 89) as f32 - 44.0) / 64.0 + seed).collect() };
            p.begin(&tokens, &feats(rows, 0.0)).unwrap();
            for (round, next) in [(0, 2000u32), (1, 3000)] {
                p.request_proposal(3).unwrap();
                p.cancel_request();
                p.commit(&[next], &feats(1, round as f32 * 0.01)).unwrap();
            }
            let tree = p.propose(3).unwrap();
            assert_eq!(tree.tokens[0], 3000, "rooted at the last commit");
            assert!(tree.tokens.len() > 1, "the draft proposed nothing: {tree:?}");
            assert!(!fallback.load(std::sync::atomic::Ordering::Acquire), "the request stopped speculating");
            // And the next round as usual.
            p.commit(&[tree.tokens[1]], &feats(1, 0.5)).unwrap();
            assert_eq!(p.propose(3).unwrap().tokens[0], tree.tokens[1]);
        })
        .await
        .unwrap();
    });
}
