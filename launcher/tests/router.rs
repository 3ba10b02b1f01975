//! The router end to end: `aerie serve` (router + workers as real
//! processes) checked by the official `openai` Python client, plus the
//! routing, error and disconnect behaviour that needs worker control.

use crate::common;
use common::{engine, ready_field, serial, serve, start, Proc, PROMPTS};

use aerie_engine::generate::{generate, GenerateRequest};
use aerie_engine::{ChatMessage, SamplingParams};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn worker(args: &[&str]) -> Proc {
    start(args, "READY ", &ready_field("grpc="))
}

fn router(targets: &[&Proc], drafts: &[&Proc], extra: &[&str]) -> Proc {
    let mut args: Vec<String> = vec!["router".into(), "--port".into(), "0".into()];
    for t in targets {
        args.extend(["--target".into(), format!("http://{}", t.addr)]);
    }
    for d in drafts {
        args.extend(["--draft".into(), format!("http://{}", d.addr)]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = start(&refs, "READY ", &ready_field("grpc="));
    // Wait for the first health probe to see the targets.
    let t = Instant::now();
    let expect_healthy = !targets.is_empty() || extra.contains(&"--workers-file");
    while expect_healthy && http(&r.addr, "GET", "/health", None).0 != 200 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    r
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.0 exchange: status and body.
fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let b = body.map(|b| b.to_string()).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    (status, body)
}

fn chat_body(content: &str, max_tokens: u64) -> Value {
    json!({"model": "smollm2", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true})
}

#[test]
fn openai_python_client_conformance_through_aerie_serve() {
    let _g = serial();
    let mut serve = serve(&["--api-key", "sk-test"]);
    let out = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("tests/openai/conformance.py"))
        .args(["--base-url", &format!("http://{}/v1", serve.addr), "--model", "smollm2", "--api-key", "sk-test", "--expect-spec"])
        .output()
        .expect("the test venv (scripts/setup.sh installs openai into .venv)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "conformance failures:\n{stdout}");
    // SIGTERM stops the whole cluster cleanly.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(serve.child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let st = loop {
        if let Some(st) = serve.child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "serve did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(st.success(), "{st}");
}

/// logprobs, penalties, logit_bias, min_tokens, stop_token_ids, n,
/// structured output and tool calls through the official client: greedy
/// output and logprobs with speculation equal those without it, and
/// constrained output and tool-call arguments validate
/// (`tests/openai/features.py`, `structured.py`, `tools.py`).
#[test]
fn openai_sampling_features_and_structured_output_are_lossless_under_speculation() {
    let _g = serial();
    let spec = serve(&[]);
    let plain = serve(&["--no-speculation"]);
    let e = engine();
    let id = |t: &str| {
        let ids = e.tokenizer.encode(t, false).unwrap();
        assert_eq!(ids.len(), 1, "{t:?} is one token");
        ids[0]
    };
    let ids = json!({"the": id(" the"), "period": id(".")});
    let metrics = spec
        .preamble
        .iter()
        .find(|l| l.trim_start().starts_with("target-0"))
        .and_then(|l| l.split_whitespace().find(|w| w.ends_with("/metrics")))
        .expect("serve prints its target's metrics URL")
        .to_string();
    let urls = ["--spec-url".to_string(), format!("http://{}/v1", spec.addr), "--plain-url".to_string(), format!("http://{}/v1", plain.addr)];
    let metrics_args = ["--target-metrics".to_string(), metrics];
    let feature_args = [&["--ids".to_string(), ids.to_string()][..], &metrics_args[..]].concat();
    for (script, extra) in [("tests/openai/features.py", &feature_args[..]), ("tests/openai/structured.py", &metrics_args[..]), ("tests/openai/tools.py", &[][..])] {
        let out = Command::new(repo().join(".venv/bin/python"))
            .arg(repo().join(script))
            .args(&urls)
            .args(extra)
            .output()
            .expect("the test venv (scripts/setup.sh installs openai and jsonschema into .venv)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{script} failures:\n{stdout}");
    }
}

/// SmolLM2 with an MTP layer of its own, made by `aerie train-eagle --kind
/// mtp` (a short run: the layer is barely trained, which losslessness must
/// not care about): the written directory is a whole checkpoint that
/// `aerie serve --model DIR` serves and drafts for with its MTP layer by
/// default, and the ten-prompt suite through the official client equals
/// `--no-speculation` token for token (`tests/openai/lossless.py`).
#[test]
fn a_trained_smollm2_mtp_checkpoint_serves_losslessly_through_the_openai_client() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sharegpt.json");
    let record = |id: &str, q: &str, a: &str| format!(r#"{{"id":"{id}","conversations":[{{"from":"human","value":"{q}"}},{{"from":"gpt","value":"{a}"}}]}}"#);
    std::fs::write(&data, format!("[{}]", [record("a", "Name a color.", "Blue."), record("b", "Count to three.", "1, 2, 3.")].join(",\n"))).unwrap();
    let ck = dir.path().join("smollm2-mtp");
    let out = Command::new(env!("CARGO_BIN_EXE_aerie"))
        .args(["train-eagle", "--kind", "mtp", "--data", data.to_str().unwrap(), "--out", ck.to_str().unwrap()])
        .args(["--conversations", "2", "--max-new-tokens", "8", "--epochs", "2", "--batch-seqs", "1", "--hot-vocab", "512"])
        .env("AERIE_THREADS", "2")
        .env("AERIE_PROGRESS_SECS", "0")
        .output()
        .expect("run aerie");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: Value = serde_json::from_slice(&std::fs::read(ck.join("config.json")).unwrap()).unwrap();
    assert_eq!((config["architectures"][0].as_str(), config["num_nextn_predict_layers"].as_u64()), (Some("MiMoForCausalLM"), Some(1)), "{config}");
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "hot_vocab.json"] {
        assert!(ck.join(f).is_file(), "{f} missing");
    }
    let m = ck.to_str().unwrap();
    let spec = serve(&["--model-path", m]);
    let plain = serve(&["--model-path", m, "--no-speculation"]);
    let out = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("tests/openai/lossless.py"))
        .args(["--spec-url", &format!("http://{}/v1", spec.addr), "--plain-url", &format!("http://{}/v1", plain.addr), "--max-tokens", "24"])
        // `aerie serve` names the model by its path, as SGLang does.
        .args(["--model", m])
        .output()
        .expect("the test venv (scripts/setup.sh installs openai into .venv)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "lossless.py failures:\n{stdout}");
}

/// A TP=2 cluster (`aerie serve --tp-size 2`: each target worker two rank
/// processes) under the official client, streamed and not: the ten-prompt
/// suite with speculation equals the same cluster without it, token for
/// token (`tests/openai/lossless.py`).
#[test]
fn a_tp2_cluster_serves_the_openai_client_losslessly() {
    let _g = serial();
    let spec = serve(&["--tp-size", "2"]);
    let plain = serve(&["--tp-size", "2", "--no-speculation"]);
    let out = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("tests/openai/lossless.py"))
        .args(["--spec-url", &format!("http://{}/v1", spec.addr), "--plain-url", &format!("http://{}/v1", plain.addr), "--max-tokens", "24"])
        .output()
        .expect("the test venv (scripts/setup.sh installs openai into .venv)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "lossless.py failures:\n{stdout}");
}

#[test]
fn greedy_text_is_identical_with_and_without_speculation() {
    let _g = serial();
    let draft = worker(&["draft-worker", "--speculative-num-steps", "3", "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "4"]);
    let target = worker(&["target-worker"]);
    // The speculative router finds its workers through a worker list file.
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("workers.toml");
    std::fs::write(&list, format!("targets = [\"http://{}\"]\ndrafts = [\"http://{}\"]\n", target.addr, draft.addr)).unwrap();
    let with = router(&[], &[], &["--workers-file", list.to_str().unwrap()]);
    let without = router(&[&target], &[], &[]);
    let e = engine();
    for (i, p) in PROMPTS.iter().enumerate() {
        let ids = e.chat_prompt_ids(&[ChatMessage::new("user", p)]).unwrap();
        let req = GenerateRequest { prompt_ids: &ids, max_tokens: 32, sampling: SamplingParams::default(), stop_ids: &[] };
        let want_ids = generate(&e.model, &req, &mut |_| {}).unwrap().token_ids;
        let want = e.tokenizer.decode(&want_ids, true).unwrap();
        let mut texts = Vec::new();
        for r in [&with, &without] {
            let (status, body) = http(&r.addr, "POST", "/v1/chat/completions", Some(&chat_body(p, 32)));
            assert_eq!(status, 200, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["usage"]["completion_tokens"], 32);
            texts.push((v["choices"][0]["message"]["content"].as_str().unwrap().to_string(), v["usage"].get("spec_accept_length").is_some()));
        }
        assert_eq!(texts[0].0, want, "prompt {i} with speculation");
        assert_eq!(texts[1].0, want, "prompt {i} without speculation");
        assert!(texts[0].1 && !texts[1].1, "spec stats only with a draft worker: {texts:?}");
        // The ids match too: the text re-encodes to the reference ids.
        assert_eq!(e.tokenizer.encode(&texts[0].0, false).unwrap(), e.tokenizer.encode(&want, false).unwrap());
    }
}

/// `aerie serve --device cuda` with `extra` flags, on the interpreted device.
fn serve_interpreted(extra: &[&str]) -> Proc {
    let port = free_port().to_string();
    let mut args = vec!["serve", "--port", &port, "--device", "cuda"];
    args.extend_from_slice(extra);
    common::start_exe_env(
        env!("CARGO_BIN_EXE_aerie").as_ref(),
        &args,
        &[("AERIE_CUDA_INTERPRET", "1")],
        "OpenAI endpoint:",
        &|l: &str| l.split_whitespace().nth(2).unwrap().trim_start_matches("http://").trim_end_matches("/v1").to_string(),
    )
}

/// The metrics address (`host:port`) `aerie serve` printed for worker `name`.
fn worker_metrics(serve: &Proc, name: &str) -> String {
    serve
        .preamble
        .iter()
        .find(|l| l.trim_start().starts_with(name))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("http://")))
        .map(|m| m.trim_end_matches("/metrics").to_string())
        .unwrap_or_else(|| panic!("no metrics address for {name} in {:?}", serve.preamble))
}

/// `aerie serve --device cuda` (the interpreter: the host code and `.cu`
/// kernels a GPU runs) serves the default speculative cluster with the
/// target, and the draft worker's EAGLE head, on the device: greedy text equals the
/// CUDA path's plain decoding in process, features cross between the two
/// processes through CUDA IPC, and the target exports its device memory and
/// KV pool.
#[test]
fn serve_on_the_cuda_device_is_lossless_and_reports_device_memory() {
    let _g = serial();
    let serve = serve_interpreted(&["--max-running-requests", "2"]);
    let target_metrics = worker_metrics(&serve, "target-0");
    let e = engine();
    let dev = aerie_engine::Engine::load("smollm2", aerie_engine::DType::Auto).unwrap();
    let model = std::sync::Arc::try_unwrap(dev.model)
        .ok()
        .unwrap()
        .to_device(std::sync::Arc::new(aerie_kernels::cuda::device::InterpDevice::new(2 << 30)), 1024)
        .unwrap();
    for p in &PROMPTS[..2] {
        let ids = e.chat_prompt_ids(&[ChatMessage::new("user", p)]).unwrap();
        let req = GenerateRequest { prompt_ids: &ids, max_tokens: 16, sampling: SamplingParams::default(), stop_ids: &[] };
        let want = e.tokenizer.decode(&generate(&model, &req, &mut |_| {}).unwrap().token_ids, true).unwrap();
        let (status, body) = http(&serve.addr, "POST", "/v1/chat/completions", Some(&chat_body(p, 16)));
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"].as_str().unwrap(), want, "{p}");
        assert!(v["usage"]["spec_verify_ct"].as_u64().unwrap_or(0) > 0, "speculation ran: {}", v["usage"]);
    }
    // Both workers on one (interpreted) GPU: `auto` hands features over
    // through CUDA IPC.
    assert_eq!(gauge(&target_metrics, "aerie_target_draft_session_transport{transport=\"cuda-ipc\"}"), 1.0);
    assert!(gauge(&target_metrics, "aerie_target_feature_bytes_total{transport=\"cuda-ipc\"}") > 0.0);
    // The draft worker's head is on the device too.
    let draft_metrics = worker_metrics(&serve, "draft-0");
    let draft_used = gauge(&draft_metrics, "aerie_draft_device_memory_used_bytes");
    assert!(draft_used > 50e6, "the shipped head's bf16 weights, the target's lm_head rows and a KV pool: {draft_used}");
    let used = gauge(&target_metrics, "aerie_target_device_memory_used_bytes");
    assert!(used > 250e6, "bf16 SmolLM2 plus its KV pool: {used}");
    assert_eq!(gauge(&target_metrics, "aerie_target_device_memory_total_bytes"), (16u64 << 30) as f64);
    let pool = gauge(&target_metrics, "aerie_target_device_kv_pool_capacity_tokens");
    assert!(pool >= 65_536.0, "{pool}");
    // The scheduler refreshes its gauges each loop, at least every 200 ms.
    let t = Instant::now();
    while gauge(&target_metrics, "aerie_target_device_kv_pool_used_tokens") != 0.0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(gauge(&target_metrics, "aerie_target_device_kv_pool_used_tokens"), 0.0, "every sequence's pages came back");
}

/// A target on library GEMMs (`--gemm-mode library`: cuBLAS on a GPU, the
/// reference GEMM in the interpreter) is not batch invariant, so it decodes
/// requests that name a draft worker without speculation and counts them.
#[test]
fn a_target_on_library_gemms_does_not_speculate() {
    let _g = serial();
    let serve = serve_interpreted(&["--gemm-mode", "library", "--max-running-requests", "1"]);
    let target_metrics = worker_metrics(&serve, "target-0");
    let (status, body) = http(&serve.addr, "POST", "/v1/chat/completions", Some(&chat_body(PROMPTS[0], 6)));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 6, "{}", v["usage"]);
    // Plain steps still count as verifies of an empty tree; no draft token was.
    assert_eq!(v["usage"]["spec_num_correct_drafts"].as_u64(), Some(0), "{}", v["usage"]);
    let (_, page) = http(&target_metrics, "GET", "/metrics", None);
    assert!(
        page.lines().any(|l| l.starts_with("aerie_target_draft_fallbacks_total{") && l.contains("not_batch_invariant") && !l.ends_with(" 0")),
        "no not_batch_invariant fallback counted"
    );
}

#[test]
fn no_target_is_503_and_full_queues_are_429() {
    let _g = serial();
    let dead = Proc { child: Command::new("true").spawn().unwrap(), addr: format!("127.0.0.1:{}", free_port()), ready: String::new(), preamble: Vec::new() };
    let r = router(&[&dead], &[], &[]);
    let (s, b) = http(&r.addr, "GET", "/health", None);
    assert_eq!(s, 503, "{b}");
    let (s, b) = http(&r.addr, "POST", "/v1/chat/completions", Some(&chat_body("hi", 4)));
    assert_eq!(s, 503, "{b}");
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["error"]["type"], "service_unavailable");
    drop(r);

    let target = worker(&["target-worker", "--max-running-requests", "1", "--max-queued-requests", "1"]);
    let r = router(&[&target], &[], &[]);
    let addr = r.addr.clone();
    // One long request runs, one waits; the third finds every queue full.
    let long = std::thread::spawn(move || http(&addr, "POST", "/v1/chat/completions", Some(&chat_body("Tell a long story.", 600))));
    std::thread::sleep(Duration::from_millis(1500));
    let addr = r.addr.clone();
    let waiting = std::thread::spawn(move || http(&addr, "POST", "/v1/chat/completions", Some(&chat_body("hi", 4))));
    std::thread::sleep(Duration::from_millis(500));
    let (s, b) = http(&r.addr, "POST", "/v1/chat/completions", Some(&chat_body("hello", 4)));
    assert_eq!(s, 429, "{b}");
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["error"]["type"], "rate_limit_error");
    assert_eq!(long.join().unwrap().0, 200);
    assert_eq!(waiting.join().unwrap().0, 200);
}

#[test]
fn sixty_four_streaming_clients_some_leaving_midway_and_kv_returns_to_zero() {
    use aerie_proto::v1::target_service_client::TargetServiceClient;
    use aerie_proto::v1::LoadRequest;
    let _g = serial();
    let draft = worker(&["draft-worker", "--speculative-num-steps", "3", "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "4"]);
    let target = worker(&["target-worker", "--max-running-requests", "16"]);
    let r = router(&[&target], &[&draft], &[]);
    let mut threads = Vec::new();
    for k in 0..64usize {
        let addr = r.addr.clone();
        threads.push(std::thread::spawn(move || {
            let mut body = chat_body(PROMPTS[k % 10], 24);
            body["stream"] = json!(true);
            let b = body.to_string();
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
            write!(s, "POST /v1/chat/completions HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()).unwrap();
            let mut reader = BufReader::new(s);
            let mut events = 0;
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return (k, events, false);
                }
                if line.starts_with("data: ") {
                    events += 1;
                    if line.trim() == "data: [DONE]" {
                        return (k, events, true);
                    }
                    // Every fourth client hangs up after a few chunks.
                    if k % 4 == 1 && events == 3 {
                        return (k, events, false);
                    }
                }
            }
        }));
    }
    for t in threads {
        let (k, events, done) = t.join().unwrap();
        if k % 4 == 1 {
            assert_eq!(events, 3);
        } else {
            assert!(done, "client {k} got no [DONE] after {events} events");
        }
    }
    // Everything the leavers started is aborted and its KV released.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = TargetServiceClient::connect(format!("http://{}", target.addr)).await.unwrap();
        let t = Instant::now();
        loop {
            let l = c.get_load(LoadRequest {}).await.unwrap().into_inner();
            if l.kv_tokens_used == 0 && l.running == 0 && l.waiting == 0 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "KV never returned to zero: {l:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let (s, _) = http(&r.addr, "GET", "/health", None);
    assert_eq!(s, 200);
}

#[test]
fn adversarial_requests_get_4xx_and_every_process_stays_up() {
    let _g = serial();
    let target = worker(&["target-worker"]);
    let r = router(&[&target], &[], &[]);
    let stops: Vec<String> = (0..2000).map(|i| format!("s{i}")).collect();
    let cases: Vec<(&str, Value)> = vec![
        ("wrong type", json!({"model": "smollm2", "messages": [{"role": "user", "content": 5}]})),
        ("2000 stop strings", json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "stop": stops})),
        ("max_tokens 1e9", json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1_000_000_000u64})),
        ("empty messages", json!({"model": "smollm2", "messages": []})),
        ("prompt over the context", json!({"model": "smollm2", "messages": [{"role": "user", "content": "word ".repeat(12000)}]})),
        ("bad role", json!({"model": "smollm2", "messages": [{"role": "wizard", "content": "hi"}]})),
        ("negative max_tokens", json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3})),
        ("completions with two prompts", json!({"model": "smollm2", "prompt": ["a", "b"]})),
    ];
    for (what, body) in cases {
        let path = if body.get("prompt").is_some() { "/v1/completions" } else { "/v1/chat/completions" };
        let (s, b) = http(&r.addr, "POST", path, Some(&body));
        assert_eq!(s, 400, "{what}: {b}");
        let v: Value = serde_json::from_str(&b).unwrap_or_else(|_| panic!("{what}: not JSON: {b}"));
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {v}");
    }
    assert_eq!(http(&r.addr, "GET", "/health", None).0, 200);
    let (s, b) = http(&r.addr, "POST", "/v1/chat/completions", Some(&chat_body("Say hi.", 4)));
    assert_eq!(s, 200, "{b}");
}

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap();
    kb * 1024
}

/// Writes `req` as is and reads until the server closes: the raw response.
fn exchange(addr: &str, req: &str, wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn huge_prompts_are_refused_without_tokenizing_them_and_keys_have_request_slots() {
    let _g = serial();
    let target = worker(&["target-worker"]);
    let r = router(&[&target], &[], &["--max-concurrent-requests-per-key", "1"]);
    let pid = r.child.id();
    assert_eq!(http(&r.addr, "POST", "/v1/chat/completions", Some(&chat_body("Say hi.", 4))).0, 200);
    let base = rss(pid);
    // About 650k tokens, just under the 4 MiB body limit.
    let huge = "lorem ipsum dolor sit amet, consectetur adipiscing elit; ".repeat(70_000);
    for _ in 0..3 {
        let t = Instant::now();
        let (s, b) = http(&r.addr, "POST", "/v1/chat/completions", Some(&chat_body(&huge, 16)));
        assert_eq!(s, 400, "{b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
        eprintln!("refused in {:?}", t.elapsed());
    }
    let after = rss(pid);
    eprintln!("router RSS: {} MB before, {} MB after three 4 MB prompts", base >> 20, after >> 20);
    assert!(after < base + (20 << 20), "router RSS grew from {base} to {after}");
    // Per-key slots: a second request with the same key waits for none.
    let addr = r.addr.clone();
    let long = std::thread::spawn(move || {
        let b = chat_body("Tell a long story.", 300).to_string();
        exchange(&addr, &format!("POST /v1/chat/completions HTTP/1.0\r\nAuthorization: Bearer key-a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()), Duration::from_secs(300))
    });
    std::thread::sleep(Duration::from_millis(1500));
    let b = chat_body("hi", 4).to_string();
    let req = |key: &str| format!("POST /v1/chat/completions HTTP/1.0\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len());
    let busy = exchange(&r.addr, &req("key-a"), Duration::from_secs(60));
    assert!(busy.starts_with("HTTP/1.0 429"), "{busy}");
    assert!(busy.to_ascii_lowercase().contains("retry-after: 1"), "{busy}");
    assert!(busy.contains("rate_limit_exceeded"), "{busy}");
    let other = exchange(&r.addr, &req("key-b"), Duration::from_secs(60));
    assert!(other.starts_with("HTTP/1.0 200"), "{other}");
    assert!(long.join().unwrap().starts_with("HTTP/1.0 200"));
    // The slot came back with the response.
    let again = exchange(&r.addr, &req("key-a"), Duration::from_secs(60));
    assert!(again.starts_with("HTTP/1.0 200"), "{again}");
}

#[test]
fn slow_and_partial_clients_are_cut_off_and_connections_are_capped() {
    let _g = serial();
    // Nothing here reaches a target: an address nobody listens on will do.
    let args = ["router", "--port", "0", "--target", &format!("http://127.0.0.1:{}", free_port()), "--api-key", "k",
        "--header-read-timeout-secs", "2", "--body-read-timeout-secs", "2", "--max-connections", "4"];
    let r = start(&args, "READY ", &ready_field("grpc="));
    // The scheme of Authorization is case-insensitive; the key is not.
    for (auth, want) in [("Bearer k", "200"), ("bearer k", "200"), ("BEARER  k", "200"), ("Bearer K", "401"), ("Basic k", "401")] {
        let out = exchange(&r.addr, &format!("GET /v1/models HTTP/1.0\r\nAuthorization: {auth}\r\n\r\n"), Duration::from_secs(10));
        assert!(out.starts_with(&format!("HTTP/1.0 {want}")), "{auth}: {out}");
    }
    // Half a request line and headers: the connection is closed.
    let t = Instant::now();
    let out = exchange(&r.addr, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n", Duration::from_secs(20));
    assert!(t.elapsed() < Duration::from_secs(6), "held {:?}: {out}", t.elapsed());
    // Headers but only part of the body: 408.
    let t = Instant::now();
    let out = exchange(&r.addr, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: 100\r\n\r\n{\"model\"", Duration::from_secs(20));
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(6), "held {:?}", t.elapsed());
    // Four idle connections fill the router; a fifth is closed at once.
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&r.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let out = exchange(&r.addr, "GET /live HTTP/1.0\r\n\r\n", Duration::from_secs(20));
    assert!(out.is_empty() && t.elapsed() < Duration::from_secs(1), "{out:?} after {:?}", t.elapsed());
    // Idle connections are dropped after the header timeout, freeing room.
    std::thread::sleep(Duration::from_millis(2500));
    let out = exchange(&r.addr, "GET /live HTTP/1.0\r\n\r\n", Duration::from_secs(20));
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    drop(idle);
}

/// Children of `parent` whose command line holds `role` (`target-worker`, …).
fn children(parent: u32, role: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The fields after the command name, which may hold spaces.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(parent) && String::from_utf8_lossy(&cmd).split('\0').any(|a| a == role) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn serve_restarts_a_killed_worker_while_the_others_keep_serving() {
    let _g = serial();
    // serve runs from a copy of the binary that is deleted once it is up, as
    // a rebuild or an upgrade replaces it: restarts must still start the
    // binary serve runs (before, every restart failed on the missing path).
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("aerie");
    std::fs::copy(env!("CARGO_BIN_EXE_aerie"), &exe).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let serve = common::start_exe(&exe, &["serve", "--port", &port, "--target-workers", "2"], "OpenAI endpoint:", &|l: &str| l.split_whitespace().nth(2).unwrap().trim_start_matches("http://").trim_end_matches("/v1").to_string());
    std::fs::remove_file(&exe).unwrap();
    let targets = children(serve.child.id(), "target-worker");
    let drafts = children(serve.child.id(), "draft-worker");
    assert_eq!((targets.len(), drafts.len()), (2, 1));
    let healthy = |addr: &str| serde_json::from_str::<Value>(&http(addr, "GET", "/workers", None).1).unwrap()["targets"].as_array().unwrap().iter().filter(|t| t["healthy"] == true).count();
    // A client sending one request after another throughout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (addr, stop2) = (serve.addr.clone(), stop.clone());
    let client = std::thread::spawn(move || {
        let mut statuses = Vec::new();
        while !stop2.load(std::sync::atomic::Ordering::Acquire) {
            let (s, b) = http(&addr, "POST", "/v1/chat/completions", Some(&chat_body("Count to five.", 8)));
            assert!(s == 200 || serde_json::from_str::<Value>(&b).is_ok_and(|v| v["error"]["message"].is_string()), "{s}: {b}");
            statuses.push(s);
        }
        statuses
    });
    std::thread::sleep(Duration::from_secs(1));
    for (role, pid) in [("target-worker", targets[0]), ("draft-worker", drafts[0])] {
        // SAFETY: signalling a process this test started (serve's child).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let t = Instant::now();
        let back = loop {
            let now = children(serve.child.id(), role);
            if now.len() == if role == "target-worker" { 2 } else { 1 } && !now.contains(&pid) && healthy(&serve.addr) == 2 {
                break t.elapsed();
            }
            assert!(t.elapsed() < Duration::from_secs(10), "{role} not back after 10 s");
            std::thread::sleep(Duration::from_millis(100));
        };
        eprintln!("{role} back and healthy {back:?} after kill -9");
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Release);
    let statuses = client.join().unwrap();
    let failed = statuses.iter().filter(|&&s| s != 200).count();
    eprintln!("{} requests during the kills, {failed} failed", statuses.len());
    // Only a request running on the killed target may fail (with an error).
    assert!(statuses.len() >= 5 && failed <= 1, "{statuses:?}");
    // The restarted pair speculates again. Until the router's probe and the
    // target's session have both found the new draft worker, a request may
    // be decoded plainly (correct, just not speculated): allow 10 s for that.
    let t = Instant::now();
    loop {
        let (s, b) = http(&serve.addr, "POST", "/v1/chat/completions", Some(&chat_body("Name three rivers in Europe.", 24)));
        assert_eq!(s, 200, "{b}");
        if serde_json::from_str::<Value>(&b).unwrap()["usage"]["spec_verify_ct"].as_u64().is_some_and(|n| n > 0) {
            eprintln!("speculating again {:?} after the draft worker came back", t.elapsed());
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no speculation 10 s after the draft worker came back: {b}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A metric's value from a `/metrics` page at `host:port`.
fn gauge(metrics_addr: &str, name: &str) -> f64 {
    let (_, page) = http(metrics_addr, "GET", "/metrics", None);
    page.lines().filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{'])).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[test]
fn a_target_frees_the_requests_of_a_router_that_froze() {
    let _g = serial();
    let target = worker(&["target-worker"]);
    let tmetrics = ready_field("metrics=")(&target.ready);
    let r = router(&[&target], &[], &[]);
    // A long streaming request; the client reads a little, then the router freezes.
    let mut s = TcpStream::connect(&r.addr).unwrap();
    let b = json!({"model": "smollm2", "messages": [{"role": "user", "content": "Tell a very long story."}], "max_tokens": 6000, "ignore_eos": true, "stream": true}).to_string();
    write!(s, "POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()).unwrap();
    // Past the role chunk: tokens are flowing.
    let mut buf = [0u8; 2048];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(gauge(&tmetrics, "aerie_target_running_requests"), 1.0, "{}", http(&tmetrics, "GET", "/metrics", None).1);
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGSTOP) };
    let t = Instant::now();
    while gauge(&tmetrics, "aerie_target_running_requests") != 0.0 {
        assert!(t.elapsed() < Duration::from_secs(30), "the target still runs the frozen router's request");
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("request aborted {:?} after the router froze", t.elapsed());
    unsafe { libc::kill(r.child.id() as i32, libc::SIGCONT) };
    assert_eq!(gauge(&tmetrics, "aerie_target_kv_used_tokens"), 0.0);
}

#[test]
fn a_request_past_the_request_timeout_ends_with_504_and_is_cancelled_on_the_target() {
    let _g = serial();
    let target = worker(&["target-worker"]);
    let tmetrics = ready_field("metrics=")(&target.ready);
    let r = router(&[&target], &[], &["--request-timeout-secs", "2"]);
    // Whole response: 6000 tokens take far longer than 2 s on the CPU.
    let t = Instant::now();
    let (status, body) = http(&r.addr, "POST", "/v1/chat/completions", Some(&chat_body("Tell a very long story.", 6000)));
    let took = t.elapsed();
    assert_eq!(status, 504, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "request_timeout", "{body}");
    assert!(took < Duration::from_secs(6), "answered after {took:?}");
    // Streamed: the error arrives as the last event, then [DONE].
    let mut b = chat_body("Tell a very long story.", 6000);
    b["stream"] = json!(true);
    let (status, body) = http(&r.addr, "POST", "/v1/chat/completions", Some(&b));
    assert_eq!(status, 200);
    let events: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert!(events.len() > 3, "tokens streamed before the deadline: {body}");
    assert_eq!(events.last(), Some(&"[DONE]"));
    assert!(events[events.len() - 2].contains("\"request_timeout\""), "{body}");
    // Neither request goes on running on the target.
    let t = Instant::now();
    while gauge(&tmetrics, "aerie_target_running_requests") != 0.0 {
        assert!(t.elapsed() < Duration::from_secs(5), "the target still runs a timed-out request");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(gauge(&tmetrics, "aerie_target_kv_used_tokens"), 0.0);
}
