//! API speculative execution against normal mode: calls, tokens and wall
//! time for the 20 character programs of `aerie_client::demo`.
//!
//!     cargo bench -p aerie-launcher --bench client_bench -- [SPEC_TOKENS]
//!
//! Starts `aerie serve` (the default speculative cluster, SmolLM2 on CPU)
//! and runs each program in both modes through the chat endpoint at
//! temperature 0, alternating which mode goes first. SPEC_TOKENS is
//! `num_api_spec_tokens` (default 64).

use aerie_client::{demo, Api, Client, ClientConfig, Mode, ProgramResult};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGTERM lets serve stop its workers.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn main() {
    let spec_tokens: u32 = std::env::args().skip(1).find(|a| !a.starts_with('-')).map(|a| a.parse().expect("SPEC_TOKENS")).unwrap_or(64);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_aerie")).args(["serve", "--port", &port]).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = lines.find_map(|l| l.ok().and_then(|l| l.strip_prefix("OpenAI endpoint: ").map(|u| u.split_whitespace().next().unwrap_or("").to_string()))).expect("aerie serve failed");
    std::thread::spawn(move || for _ in lines {});
    let _serve = Serve(child);
    let mut cfg = ClientConfig::new(&base, "smollm2");
    cfg.api = Api::Chat;
    // Exact token counts even for speculative streams cut short.
    cfg.continuous_usage = true;
    let client = Client::new(cfg);
    let spec = Mode::Speculative { num_api_spec_tokens: spec_tokens };
    // Warm-up: first requests pay one-time costs.
    client.run(&demo::character(), spec).unwrap();

    let programs = demo::bench_programs();
    println!("program  | normal calls/tokens/ms | spec calls/tokens/ms | fallback fields | same fields");
    let mut totals = [[0f64; 3]; 2];
    let (mut fallbacks, mut same) = (0, 0);
    for (i, p) in programs.iter().enumerate() {
        let run = |m| client.run(p, m).unwrap();
        let (n, s): (ProgramResult, ProgramResult) = if i % 2 == 0 {
            let n = run(Mode::Normal);
            (n, run(spec))
        } else {
            let s = run(spec);
            (run(Mode::Normal), s)
        };
        for (t, r) in totals.iter_mut().zip([&n, &s]) {
            t[0] += r.calls as f64;
            t[1] += (r.prompt_tokens + r.completion_tokens) as f64;
            t[2] += r.elapsed.as_secs_f64() * 1e3;
        }
        let fb = s.fallback_fields().len();
        fallbacks += fb;
        let eq = n.fields.iter().map(|f| &f.value).eq(s.fields.iter().map(|f| &f.value));
        same += eq as usize;
        println!(
            "{i:>8} | {:>5} {:>6} {:>8.0} | {:>5} {:>6} {:>8.0} | {fb:>15} | {eq}",
            n.calls,
            n.prompt_tokens + n.completion_tokens,
            n.elapsed.as_secs_f64() * 1e3,
            s.calls,
            s.prompt_tokens + s.completion_tokens,
            s.elapsed.as_secs_f64() * 1e3
        );
    }
    let k = programs.len() as f64;
    println!("\nper program (mean over {k}): normal {:.2} calls, {:.0} tokens, {:.0} ms; speculative {:.2} calls, {:.0} tokens, {:.0} ms", totals[0][0] / k, totals[0][1] / k, totals[0][2] / k, totals[1][0] / k, totals[1][1] / k, totals[1][2] / k);
    println!(
        "speculative / normal: calls {:.2}, tokens {:.2}, wall time {:.2}; fallback fields {fallbacks} of {}; programs with identical fields {same} of {}",
        totals[1][0] / totals[0][0],
        totals[1][1] / totals[0][1],
        totals[1][2] / totals[0][2],
        3 * programs.len(),
        programs.len()
    );
}
