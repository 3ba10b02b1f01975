//! The soak test: `aerie serve` with 2 targets and 2 drafts under
//! closed-loop load while a fault lands every few seconds, checking that
//! every request ends (a correct answer or a clean error) in bounded time,
//! that greedy answers equal plain greedy decoding, and that memory,
//! `/dev/shm` and processes come back to their baseline.
//!
//! The cluster runs in discovery mode: `aerie serve --etcd-endpoints` over a
//! real etcd, so workers register and the router finds them as in a
//! Kubernetes deployment.
//!
//! Faults, one at random every `AERIE_SOAK_FAULT_SECS` (4): kill -9 of a
//! target or a draft (serve restarts it), SIGSTOP of a target or a draft for
//! 3 s then SIGCONT, a kill -9 of etcd restarted 2 s later on its data, a
//! network partition of a target or a draft for 12 s (longer than the gRPC
//! keepalive's 10 s and the 10 s lease: iptables drops every loopback packet
//! to or from the TCP ports the worker holds, listening and connected, so
//! nothing reaches it and nothing it sends arrives; needs root and
//! iptables, else that kind is skipped and reported), and a volley of
//! hostile requests (a body over the limit, a prompt of 650k tokens, a
//! client that sends half its headers, a body sent too slowly, a client that
//! leaves mid-stream).
//!
//! `AERIE_SOAK_SECS` sets the faulty phase (default 75 s, the suite's short
//! profile); `scripts/soak.sh` runs it for an hour. The report goes to
//! stderr and, with `AERIE_SOAK_REPORT=path`, to a JSON file.

use crate::common;
use common::etcd::Etcd;
use common::{engine, serial, serve, PROMPTS};

use aerie_engine::generate::{generate, GenerateRequest};
use aerie_engine::{ChatMessage, SamplingParams};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAX_TOKENS: usize = 24;
const CLIENTS: usize = 3;
/// A request that has not ended by now counts as hung.
const HUNG_AFTER: Duration = Duration::from_secs(90);

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A tiny xorshift: the fault schedule needs no more.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One HTTP/1.0 exchange, bounded by `wait`: status (0 when none) and body;
/// `Err` when the exchange did not end in time.
fn http(addr: &str, req: &str, wait: Duration) -> Result<(u16, String), ()> {
    let Ok(mut s) = TcpStream::connect(addr) else { return Ok((0, "connection refused".into())) };
    s.set_read_timeout(Some(wait)).unwrap();
    if s.write_all(req.as_bytes()).is_err() {
        return Ok((0, "write failed".into()));
    }
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return Err(()),
        _ => {}
    }
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    Ok((status, out.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default()))
}

fn post(path: &str, body: &str) -> String {
    format!("POST {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

fn chat(prompt: &str, stream: bool) -> String {
    json!({"model": "smollm2", "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": true, "stream": stream}).to_string()
}

/// The text of a streamed answer, or `None` if the stream carried an error
/// or did not finish.
fn sse_text(body: &str) -> Option<String> {
    let mut text = String::new();
    let mut done = false;
    for line in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(line).ok()?;
        if v.get("error").is_some() {
            return None;
        }
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    done.then_some(text)
}

fn rss_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// Children of `parent` and their roles (`target-worker`, `draft-worker`, `router`).
fn children(parent: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).into_owned();
        if let Some(role) = ["target-worker", "draft-worker", "router"].iter().find(|r| cmd.split('\0').any(|a| a == **r)) {
            out.push((pid, role.to_string()));
        }
    }
    out
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: signalling a child of the serve process this test started.
    unsafe { libc::kill(pid as i32, sig) };
}

/// The local TCP ports `pid` holds (listening and connected), from the
/// socket inodes among its file descriptors and `/proc/net/tcp{,6}`.
fn tcp_ports(pid: u32) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.flatten().filter_map(|e| std::fs::read_link(e.path()).ok()?.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string)).collect())
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && inodes.contains(f[9]) {
                if let Some(p) = f[1].rsplit(':').next().and_then(|h| u16::from_str_radix(h, 16).ok()) {
                    ports.push(p);
                }
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// A network partition of one process: iptables rules that drop every
/// loopback packet to or from its TCP ports, removed on drop.
struct Partition {
    rules: Vec<Vec<String>>,
}

impl Partition {
    /// Whether this machine can partition (root and a working iptables).
    fn available() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        root && std::process::Command::new("iptables").args(["-w", "-n", "-L", "OUTPUT"]).output().is_ok_and(|o| o.status.success())
    }

    fn of(pid: u32) -> Partition {
        let ports: Vec<String> = tcp_ports(pid).iter().map(u16::to_string).collect();
        let mut p = Partition { rules: Vec::new() };
        // multiport takes at most 15 ports per rule.
        for chunk in ports.chunks(15) {
            let rule: Vec<String> = ["-o", "lo", "-p", "tcp", "-m", "multiport", "--ports", &chunk.join(","), "-m", "comment", "--comment", "aerie-soak", "-j", "DROP"].iter().map(|s| s.to_string()).collect();
            let ok = std::process::Command::new("iptables").args(["-w", "-I", "OUTPUT"]).args(&rule).status().is_ok_and(|s| s.success());
            assert!(ok, "iptables refused {rule:?}");
            p.rules.push(rule);
        }
        p
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = std::process::Command::new("iptables").args(["-w", "-D", "OUTPUT"]).args(rule).status();
        }
    }
}

#[derive(Default)]
struct Tally {
    sent: u64,
    completed: u64,
    clean_errors: u64,
    hung: u64,
    wrong: Vec<String>,
    /// Failed requests by HTTP status and error code (`0` when the router
    /// could not be reached).
    errors: BTreeMap<String, u64>,
}

/// Hostile requests; each must end promptly with a 4xx or a closed socket.
fn hostile_volley(addr: &str, which: usize) {
    let wait = Duration::from_secs(30);
    match which {
        0 => {
            let big = "x".repeat(5 << 20);
            let r = http(addr, &post("/v1/chat/completions", &big), wait);
            assert!(matches!(r, Ok((413 | 0, _))), "oversized body: {r:?}");
        }
        1 => {
            let huge = "lorem ipsum dolor sit amet, consectetur adipiscing elit; ".repeat(70_000);
            let r = http(addr, &post("/v1/chat/completions", &chat(&huge, false)), wait);
            assert!(matches!(r, Ok((400 | 0, _))), "huge prompt: {r:?}");
        }
        2 => {
            // Half the headers, then silence: closed by the header timeout.
            let r = http(addr, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n", Duration::from_secs(45));
            assert!(r.is_ok(), "a half-sent request was held open");
        }
        3 => {
            // Answered 408 once the body read timeout (60 s) passes.
            let r = http(addr, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"model\":", Duration::from_secs(80));
            assert!(matches!(r, Ok((408 | 0, _))), "slow body: {r:?}");
        }
        _ => {
            // A streaming client that leaves after the first bytes.
            if let Ok(mut s) = TcpStream::connect(addr) {
                let _ = s.write_all(post("/v1/chat/completions", &chat(PROMPTS[0], true)).as_bytes());
                let mut b = [0u8; 64];
                let _ = s.set_read_timeout(Some(wait));
                let _ = s.read(&mut b);
            }
        }
    }
}

#[test]
fn soak_under_faults() {
    let _g = serial();
    let soak = Duration::from_secs(env_secs("AERIE_SOAK_SECS", 75));
    let every = Duration::from_secs(env_secs("AERIE_SOAK_FAULT_SECS", 4));
    let e = engine();
    let prompts: Vec<&str> = PROMPTS[..6].to_vec();
    let want: Vec<String> = prompts
        .iter()
        .map(|p| {
            let ids = e.chat_prompt_ids(&[ChatMessage::new("user", p)]).unwrap();
            let req = GenerateRequest { prompt_ids: &ids, max_tokens: MAX_TOKENS, sampling: SamplingParams::default(), stop_ids: &[] };
            e.tokenizer.decode(&generate(&e.model, &req, &mut |_| {}).unwrap().token_ids, true).unwrap()
        })
        .collect();
    let mut etcd = Etcd::start();
    let can_partition = Partition::available();
    let mut args = vec!["--target-workers".to_string(), "2".into(), "--draft-workers".into(), "2".into()];
    if let Some(e) = &etcd {
        args.extend(["--etcd-endpoints".to_string(), e.url(), "--cluster".into(), "soak".into()]);
    }
    let mut serve = serve(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let serve_pid = serve.child.id();
    let addr = serve.addr.clone();
    let ring_prefix = aerie_proto::transport::RING_FILE_PREFIX;
    let shm_baseline: Vec<String> = std::fs::read_dir("/dev/shm").unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(ring_prefix)).collect();

    // Warm up, then take the baseline.
    for (i, p) in prompts.iter().enumerate() {
        let (s, b) = http(&addr, &post("/v1/chat/completions", &chat(p, false)), HUNG_AFTER).unwrap();
        assert_eq!(s, 200, "{b}");
        assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["choices"][0]["message"]["content"], want[i].as_str(), "warm-up {i}");
    }
    let router_pid = children(serve_pid).into_iter().find(|(_, r)| r == "router").unwrap().0;
    let router_base = rss_mb(router_pid).unwrap();
    let peak: Arc<Mutex<BTreeMap<String, f64>>> = Arc::default();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (addr, stop, tally, want, prompts) = (addr.clone(), stop.clone(), tally.clone(), want.clone(), prompts.clone());
            std::thread::spawn(move || {
                let mut n = c;
                while !stop.load(Ordering::Acquire) {
                    let i = n % prompts.len();
                    let stream = n % 2 == 0;
                    n += CLIENTS;
                    let r = http(&addr, &post("/v1/chat/completions", &chat(prompts[i], stream)), HUNG_AFTER);
                    let mut t = tally.lock().unwrap();
                    t.sent += 1;
                    let text = match &r {
                        Err(()) => {
                            t.hung += 1;
                            continue;
                        }
                        Ok((200, b)) if stream => sse_text(b),
                        Ok((200, b)) => serde_json::from_str::<Value>(b).ok().and_then(|v| v["choices"][0]["message"]["content"].as_str().map(str::to_string)),
                        Ok(_) => None,
                    };
                    let ok = match text {
                        Some(got) if got == want[i] => {
                            t.completed += 1;
                            true
                        }
                        Some(got) => {
                            t.wrong.push(format!("prompt {i}: {got:?} != {:?}", want[i]));
                            true
                        }
                        None => {
                            t.clean_errors += 1;
                            let (status, body) = r.as_ref().map(|(s, b)| (*s, b.as_str())).unwrap_or((0, ""));
                            let code = body.split("\"code\":\"").nth(1).and_then(|c| c.split('"').next()).unwrap_or("-");
                            *t.errors.entry(format!("{status} {code}")).or_default() += 1;
                            false
                        }
                    };
                    drop(t);
                    if !ok {
                        // As a client with backoff would: failures are counted per try, not per spin.
                        std::thread::sleep(Duration::from_millis(250));
                    }
                }
            })
        })
        .collect();

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64);
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    // Fault kinds this machine cannot inject (no etcd, no iptables).
    let mut skipped: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut volleys = Vec::new();
    const HOSTILE: [&str; 5] = ["hostile_huge_body", "hostile_huge_prompt", "hostile_partial_headers", "hostile_slow_body", "hostile_disconnect"];
    let t0 = Instant::now();
    // When all four workers were last seen up (seconds into the soak).
    let mut last_full = 0;
    while t0.elapsed() < soak {
        std::thread::sleep(every);
        for (pid, role) in children(serve_pid) {
            if let Some(mb) = rss_mb(pid) {
                let mut p = peak.lock().unwrap();
                let e = p.entry(role).or_insert(0.0);
                *e = e.max(mb);
            }
        }
        let kids = children(serve_pid);
        if kids.iter().filter(|(_, r)| r != "router").count() == 4 {
            last_full = t0.elapsed().as_secs();
        }
        let pick = |role: &str, rng: &mut Rng| {
            let v: Vec<u32> = kids.iter().filter(|(_, r)| r == role).map(|x| x.0).collect();
            (!v.is_empty()).then(|| v[rng.below(v.len())])
        };
        let kind = match rng.below(8) {
            0 => pick("target-worker", &mut rng).map(|p| (p, libc::SIGKILL, "kill_target")),
            1 => pick("draft-worker", &mut rng).map(|p| (p, libc::SIGKILL, "kill_draft")),
            2 => pick("target-worker", &mut rng).map(|p| (p, libc::SIGSTOP, "stop_target")),
            3 => pick("draft-worker", &mut rng).map(|p| (p, libc::SIGSTOP, "stop_draft")),
            4 => {
                match etcd.as_mut() {
                    Some(e) => {
                        eprintln!("soak {:>5} s: restart_etcd", t0.elapsed().as_secs());
                        e.restart(Duration::from_secs(2), false);
                        *faults.entry("restart_etcd").or_default() += 1;
                    }
                    None => *skipped.entry("restart_etcd").or_default() += 1,
                }
                continue;
            }
            5 | 6 => {
                let (role, name) = if rng.below(2) == 0 { ("target-worker", "partition_target") } else { ("draft-worker", "partition_draft") };
                match pick(role, &mut rng).filter(|_| can_partition) {
                    Some(pid) => {
                        eprintln!("soak {:>5} s: {name} pid {pid}", t0.elapsed().as_secs());
                        let cut = Partition::of(pid);
                        std::thread::sleep(Duration::from_secs(12));
                        drop(cut);
                        *faults.entry(name).or_default() += 1;
                    }
                    None => *skipped.entry(name).or_default() += 1,
                }
                continue;
            }
            _ => None,
        };
        match kind {
            Some((pid, sig, name)) => {
                eprintln!("soak {:>5} s: {name} pid {pid}", t0.elapsed().as_secs());
                signal(pid, sig);
                if sig == libc::SIGSTOP {
                    std::thread::sleep(Duration::from_secs(3));
                    signal(pid, libc::SIGCONT);
                }
                *faults.entry(name).or_default() += 1;
            }
            None => {
                // On its own thread: a slow client takes the header timeout (30 s) to be cut off.
                let (which, addr) = (rng.below(HOSTILE.len()), addr.clone());
                volleys.push(std::thread::spawn(move || hostile_volley(&addr, which)));
                *faults.entry(HOSTILE[which]).or_default() += 1;
            }
        }
    }
    // Checked after the report, so a long run always reports.
    let mishandled = volleys.into_iter().filter_map(|v| v.join().err()).count();
    stop.store(true, Ordering::Release);
    for c in clients {
        c.join().unwrap();
    }

    // Quiesce: every role back, then the checks (after the report).
    let t = Instant::now();
    let mut recovered = true;
    loop {
        let kids = children(serve_pid);
        let n = |role: &str| kids.iter().filter(|(_, r)| r == role).count();
        let healthy = http(&addr, "GET /workers HTTP/1.0\r\n\r\n", Duration::from_secs(10))
            .ok()
            .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
            .map(|v| v["targets"].as_array().map_or(0, |a| a.iter().filter(|t| t["healthy"] == true).count()))
            .unwrap_or(0);
        if n("target-worker") == 2 && n("draft-worker") == 2 && healthy == 2 {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            recovered = false;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(3));
    let kids = children(serve_pid);
    let rings: Vec<String> = std::fs::read_dir("/dev/shm").unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(ring_prefix) && !shm_baseline.contains(n)).collect();
    let router_final = rss_mb(router_pid).unwrap_or(f64::NAN);
    let finals: BTreeMap<String, f64> = kids.iter().filter_map(|(pid, role)| Some((format!("{role}:{pid}"), rss_mb(*pid)?))).collect();
    let t = tally.lock().unwrap();
    let report = json!({
        "soak_seconds": soak.as_secs(), "fault_every_seconds": every.as_secs(),
        "requests_sent": t.sent, "completed_correct": t.completed, "failed_clean": t.clean_errors,
        "hung": t.hung, "wrong": t.wrong.len(), "errors": t.errors, "faults": faults, "faults_skipped": skipped,
        "rss_mb": {"router_baseline": router_base, "router_final": router_final, "peak_by_role": *peak.lock().unwrap(), "final": finals},
        "leftover_rings": rings, "hostile_mishandled": mishandled,
        "recovered": recovered, "processes_at_end": kids.iter().map(|(p, r)| format!("{r}:{p}")).collect::<Vec<_>>(),
        "last_full_cluster_at_s": last_full,
    });
    eprintln!("SOAK REPORT {report:#}");
    if let Ok(path) = std::env::var("AERIE_SOAK_REPORT") {
        std::fs::write(path, format!("{report:#}\n")).unwrap();
    }
    assert!(recovered, "the cluster did not come back within 60 s: {kids:?}");
    assert_eq!(mishandled, 0, "hostile requests not answered as they should be (see the panics above)");
    assert_eq!(t.hung, 0, "requests hung");
    assert!(t.wrong.is_empty(), "wrong outputs: {:?}", t.wrong);
    assert!(t.completed > t.sent / 2, "most requests should succeed: {report}");
    assert!(rings.is_empty(), "rings left in /dev/shm: {rings:?}");
    assert!(router_final < router_base + 50.0, "router RSS {router_base:.0} MB -> {router_final:.0} MB");
    drop(t);

    // A clean stop leaves no process behind.
    signal(serve_pid, libc::SIGTERM);
    let t = Instant::now();
    while serve.child.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(60), "serve did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<u32> = kids.iter().map(|k| k.0).filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists()).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
}
