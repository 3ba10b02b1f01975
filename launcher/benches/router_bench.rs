//! The router's overhead: HTTP end-to-end latency through `aerie router`
//! minus the target worker's own gRPC latency, per request and per token.
//!
//!     cargo bench -p aerie-launcher --bench router_bench -- [QUESTIONS] [MAX_TOKENS]
//!
//! One target worker (no speculation, so both paths do identical work) and
//! one router in front of it, as real processes on loopback. For each
//! MT-bench first turn (default 16, evenly spaced; greedy, EOS ignored, 64
//! tokens) the same request goes straight to the worker over gRPC and
//! through the router as a streamed chat completion, alternating which goes
//! first. The router path includes HTTP parsing, the chat template and
//! tokenization, routing, detokenization and SSE framing.

use aerie_engine::{ChatMessage, DType, Engine};
use aerie_proto::v1::target_service_client::TargetServiceClient;
use aerie_proto::v1::GenerateRequest;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Instant;
use tokio_stream::StreamExt;

struct Proc(Child, String);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[String]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aerie")).args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.find_map(|l| l.ok().filter(|l| l.starts_with("READY "))).expect("worker failed to start");
    std::thread::spawn(move || for _ in lines {});
    let addr = line.split_whitespace().find_map(|w| w.strip_prefix("grpc=")).unwrap().to_string();
    Proc(child, addr)
}

/// (time to first token, end to end, chunks) in seconds.
type Timing = (f64, f64, usize);

fn via_router(addr: &str, question: &str, max_tokens: usize) -> Timing {
    let body = serde_json::json!({"model": "smollm2", "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true, "stream": true})
    .to_string();
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    write!(s, "POST /v1/chat/completions HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut r = BufReader::new(s);
    let (mut ttft, mut chunks) = (None, 0);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 || line.trim() == "data: [DONE]" {
            break;
        }
        if line.contains("\"content\":\"") && !line.contains("\"content\":\"\"") {
            ttft.get_or_insert(t.elapsed().as_secs_f64());
            chunks += 1;
        }
    }
    (ttft.unwrap_or(0.0), t.elapsed().as_secs_f64(), chunks)
}

async fn direct(c: &mut TargetServiceClient<tonic::transport::Channel>, prompt: Vec<u32>, max_tokens: usize) -> Timing {
    let t = Instant::now();
    let req = GenerateRequest { prompt_ids: prompt, max_tokens: Some(max_tokens as u32), ignore_eos: true, ..Default::default() };
    let mut s = c.generate(req).await.unwrap().into_inner();
    let (mut ttft, mut chunks) = (None, 0);
    while let Some(m) = s.next().await {
        let m = m.unwrap();
        if !m.token_ids.is_empty() {
            ttft.get_or_insert(t.elapsed().as_secs_f64());
            chunks += 1;
        }
    }
    (ttft.unwrap_or(0.0), t.elapsed().as_secs_f64(), chunks)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let questions: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(16);
    let max_tokens: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let threads = std::env::var("AERIE_THREADS").unwrap_or_else(|_| "2".into());
    let e = Engine::load("smollm2", DType::Auto).unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mt_bench.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let n = questions.min(lines.len());
    let qs: Vec<String> = (0..n)
        .map(|i| serde_json::from_str::<serde_json::Value>(lines[i * lines.len() / n]).unwrap()["turns"][0].as_str().unwrap().to_string())
        .collect();
    let target = start(&["--threads".into(), threads.clone(), "target-worker".into()]);
    let router = start(&["--threads".into(), "1".into(), "router".into(), "--port".into(), "0".into(), "--target".into(), format!("http://{}", target.1)]);
    std::thread::sleep(std::time::Duration::from_secs(3)); // first health probe
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut c = rt.block_on(TargetServiceClient::connect(format!("http://{}", target.1))).unwrap();
    via_router(&router.1, &qs[0], 4); // warm-up
    let (mut d_sum, mut r_sum) = ((0.0, 0.0, 0usize), (0.0, 0.0, 0usize));
    for (i, q) in qs.iter().enumerate() {
        let ids = e.chat_prompt_ids(&[ChatMessage::new("user", q)]).unwrap();
        let run_direct = |c: &mut TargetServiceClient<_>| rt.block_on(direct(c, ids.clone(), max_tokens));
        let (d, r) = if i % 2 == 0 {
            let d = run_direct(&mut c);
            (d, via_router(&router.1, q, max_tokens))
        } else {
            let r = via_router(&router.1, q, max_tokens);
            (run_direct(&mut c), r)
        };
        d_sum = (d_sum.0 + d.0, d_sum.1 + d.1, d_sum.2 + d.2);
        r_sum = (r_sum.0 + r.0, r_sum.1 + r.1, r_sum.2 + r.2);
    }
    let nq = qs.len() as f64;
    let toks = (nq * max_tokens as f64).max(1.0);
    println!("\n## Router overhead, {n} MT-bench first turns x {max_tokens} tokens, greedy, no speculation\n");
    println!("| path | mean TTFT ms | mean end-to-end ms | ms per token | chunks |");
    println!("|---|---|---|---|---|");
    println!("| gRPC straight to the target | {:.2} | {:.1} | {:.3} | {} |", d_sum.0 / nq * 1e3, d_sum.1 / nq * 1e3, d_sum.1 / toks * 1e3, d_sum.2);
    println!("| HTTP through the router | {:.2} | {:.1} | {:.3} | {} |", r_sum.0 / nq * 1e3, r_sum.1 / nq * 1e3, r_sum.1 / toks * 1e3, r_sum.2);
    println!(
        "\nrouter overhead: {:+.2} ms per request ({:+.2}%), {:+.3} ms per streamed token; TTFT {:+.2} ms",
        (r_sum.1 - d_sum.1) / nq * 1e3,
        (r_sum.1 / d_sum.1 - 1.0) * 100.0,
        (r_sum.1 - d_sum.1) / toks * 1e3,
        (r_sum.0 - d_sum.0) / nq * 1e3
    );
}
