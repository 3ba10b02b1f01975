//! Cluster mode end to end: a real etcd (Debian's `etcd-server`) on
//! loopback, real `aerie router`, `target-worker` and `draft-worker`
//! processes that find each other only through it, and real HTTP requests.
//! Skipped with a printed reason when `/usr/bin/etcd` is missing, unless
//! `AERIE_REQUIRE_ETCD=1` (the test command sets it).

use crate::common;
use common::etcd::Etcd;
use common::{engine, ready_field, serial, start, Proc, PROMPTS};

use aerie_engine::generate::{generate, GenerateRequest};
use aerie_engine::{ChatMessage, SamplingParams};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(10);

/// One HTTP/1.0 exchange: status and body; status 0 when nothing answers.
fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else { return (0, String::new()) };
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let b = body.map(|b| b.to_string()).unwrap_or_default();
    if write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()).is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    (status, body)
}

fn etcd_flags(e: &Etcd) -> Vec<String> {
    vec!["--etcd-endpoints".into(), e.url(), "--cluster".into(), "test".into()]
}

fn router(e: &Etcd, extra: &[&str]) -> Proc {
    let mut args: Vec<String> = vec!["router".into(), "--port".into(), "0".into()];
    args.extend(etcd_flags(e));
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    start(&refs, "READY ", &ready_field("grpc="))
}

fn worker(e: &Etcd, role: &str, id: &str) -> Proc {
    let mut args: Vec<String> = vec![role.into(), "--worker-id".into(), id.into()];
    if role == "draft-worker" {
        args.extend(["--speculative-num-steps", "3", "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "4"].map(String::from));
    }
    args.extend(etcd_flags(e));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    start(&refs, "READY ", &ready_field("grpc="))
}

/// The router's view: (role, id, healthy, status) for every worker.
fn view(router: &str) -> Vec<(String, String, bool, String)> {
    let (st, body) = http(router, "GET", "/workers", None);
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut out = Vec::new();
    for role in ["targets", "drafts"] {
        for w in v[role].as_array().unwrap() {
            out.push((role.to_string(), w["id"].as_str().unwrap().to_string(), w["healthy"].as_bool().unwrap(), w["status"].as_str().unwrap().to_string()));
        }
    }
    out
}

/// Waits until `pred` holds for the router's view; the time it took.
fn wait_view(r: &Proc, limit: Duration, what: &str, pred: impl Fn(&[(String, String, bool, String)]) -> bool) -> Duration {
    let t = Instant::now();
    loop {
        let v = view(&r.addr);
        if pred(&v) {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}; view {v:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn healthy(v: &[(String, String, bool, String)], role: &str, id: &str) -> bool {
    v.iter().any(|w| w.0 == role && w.1 == id && w.2)
}

fn present(v: &[(String, String, bool, String)], role: &str, id: &str) -> bool {
    v.iter().any(|w| w.0 == role && w.1 == id)
}

/// In-process plain greedy text: the reference every answer must equal.
fn reference(prompt: &str, max_tokens: usize) -> String {
    let e = engine();
    let ids = e.chat_prompt_ids(&[ChatMessage::new("user", prompt)]).unwrap();
    let req = GenerateRequest { prompt_ids: &ids, max_tokens, sampling: SamplingParams::default(), stop_ids: &[] };
    e.tokenizer.decode(&generate(&e.model, &req, &mut |_| {}).unwrap().token_ids, true).unwrap()
}

/// A greedy chat completion: (text, whether it was speculative).
fn chat(router: &str, prompt: &str, max_tokens: u64) -> (String, bool) {
    let body = json!({"model": "smollm2", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true});
    let (st, text) = http(router, "POST", "/v1/chat/completions", Some(&body));
    assert_eq!(st, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    (v["choices"][0]["message"]["content"].as_str().unwrap().to_string(), v["usage"].get("spec_accept_length").is_some())
}

/// Routing decisions the router made for the target at `addr`.
fn routed_to(r: &Proc, addr: &str) -> f64 {
    let (_, text) = http(&r.addr, "GET", "/metrics", None);
    text.lines().filter(|l| l.starts_with("aerie_router_routing_decisions_total") && l.contains(&format!("worker=\"http://{addr}\""))).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

fn sigterm(p: &Proc) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
}

/// A router, target `t1` and draft `d1`, all known to the router.
fn basic_cluster(etcd: &Etcd, router_args: &[&str]) -> (Proc, Proc, Proc) {
    let r = router(etcd, router_args);
    let t1 = worker(etcd, "target-worker", "t1");
    let d1 = worker(etcd, "draft-worker", "d1");
    // Registered once ready; the router sees them through its watch.
    let took = wait_view(&r, Duration::from_secs(5), "t1 and d1 known and healthy", |v| healthy(v, "targets", "t1") && healthy(v, "drafts", "d1"));
    eprintln!("t1 and d1 routable {took:?} after d1's READY");
    (r, t1, d1)
}

#[test]
fn workers_register_are_routed_to_and_a_killed_worker_leaves_within_the_lease_ttl() {
    let _g = serial();
    let Some(etcd) = Etcd::start() else { return };
    // Round robin, so the new target gets work whatever the loads look like.
    let (r, t1, d1) = basic_cluster(&etcd, &["--policy", "round_robin"]);
    let want = reference(PROMPTS[0], 24);
    assert_eq!(chat(&r.addr, PROMPTS[0], 24), (want.clone(), true), "routed through etcd-discovered workers, speculatively");

    // A new target is used within 2 s of its READY line.
    let t2 = worker(&etcd, "target-worker", "t2");
    let took = wait_view(&r, Duration::from_secs(2), "t2 routable", |v| healthy(v, "targets", "t2"));
    eprintln!("t2 routable {took:?} after READY");
    for _ in 0..4 {
        assert_eq!(chat(&r.addr, PROMPTS[0], 24).0, want);
    }
    assert!(routed_to(&r, &t2.addr) >= 1.0, "the new target received work");

    // kill -9: no goodbye; the lease runs out and etcd deletes the key.
    let mut t2 = t2;
    let killed = Instant::now();
    t2.child.kill().unwrap();
    let _ = t2.child.wait();
    wait_view(&r, TTL + Duration::from_secs(2), "t2 removed", |v| !present(v, "targets", "t2"));
    eprintln!("t2 removed {:?} after kill -9", killed.elapsed());
    let before = routed_to(&r, &t2.addr);
    for i in 0..4 {
        assert_eq!(chat(&r.addr, PROMPTS[i], 16).0, reference(PROMPTS[i], 16));
    }
    assert_eq!(routed_to(&r, &t2.addr), before, "no request went to the dead target after its removal");
    drop((t1, d1));
}

#[test]
fn an_etcd_restart_and_a_revoked_lease_lose_no_request_and_workers_reregister() {
    let _g = serial();
    let Some(mut etcd) = Etcd::start() else { return };
    let (r, _t1, _d1) = basic_cluster(&etcd, &[]);
    let wants: Vec<String> = (0..4).map(|i| reference(PROMPTS[i], 24)).collect();

    // Traffic on a second thread before, during and after etcd's restart.
    let (addr, restarted) = (r.addr.clone(), std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let done = restarted.clone();
    let traffic = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut after = 0;
        let mut i = 0;
        while after < 3 {
            after += done.load(std::sync::atomic::Ordering::Acquire) as usize;
            got.push((i % 4, chat(&addr, PROMPTS[i % 4], 24).0));
            i += 1;
        }
        got
    });
    std::thread::sleep(Duration::from_millis(800));
    etcd.restart(Duration::from_secs(2), false);
    restarted.store(true, std::sync::atomic::Ordering::Release);
    let got = traffic.join().expect("a request failed during the etcd restart");
    assert!(got.len() >= 6, "requests spanned the outage: {}", got.len());
    for (i, text) in got {
        assert_eq!(text, wants[i], "prompt {i}");
    }
    // The router's watch resumed: a worker started after the restart is seen.
    let _d2 = worker(&etcd, "draft-worker", "d2");
    wait_view(&r, Duration::from_secs(5), "d2 seen after the restart", |v| healthy(v, "drafts", "d2") && healthy(v, "targets", "t1"));

    // A lost lease (revoked by another client, as after a long outage) is
    // replaced: the worker registers again under a new lease.
    let url = etcd.url();
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let lease_of_t1 = |tokio: &tokio::runtime::Runtime| {
        tokio.block_on(async {
            let mut c = etcd_client::Client::connect([url.as_str()], None).await.unwrap();
            let resp = c.get("/aerie/v1/test/targets/t1", None).await.unwrap();
            resp.kvs().first().map(|kv| kv.lease())
        })
    };
    let old = lease_of_t1(&tokio).expect("t1 is registered");
    tokio.block_on(async {
        let mut c = etcd_client::Client::connect([url.as_str()], None).await.unwrap();
        c.lease_revoke(old).await.unwrap();
    });
    let t = Instant::now();
    loop {
        match lease_of_t1(&tokio) {
            Some(l) if l != old => break,
            _ => assert!(t.elapsed() < TTL, "t1 did not re-register after its lease was revoked"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("t1 re-registered {:?} after its lease was revoked", t.elapsed());
    wait_view(&r, Duration::from_secs(3), "t1 back", |v| healthy(v, "targets", "t1"));
    assert_eq!(chat(&r.addr, PROMPTS[0], 24).0, wants[0]);

    // etcd loses everything (an emptyDir restart): its revisions start over
    // below the router's resume point. Workers register again under new
    // leases, and the router reads in full rather than waiting on a watch
    // etcd would accept and never answer.
    etcd.restart(Duration::from_millis(500), true);
    let _d3 = worker(&etcd, "draft-worker", "d3");
    let took = wait_view(&r, TTL, "the cluster rebuilt after etcd lost its data", |v| healthy(v, "targets", "t1") && healthy(v, "drafts", "d3"));
    eprintln!("router view rebuilt {took:?} after d3's READY on a wiped etcd");
    assert_eq!(chat(&r.addr, PROMPTS[1], 24).0, reference(PROMPTS[1], 24));
}

#[test]
fn sigterm_on_a_target_drains_it_and_new_requests_go_elsewhere() {
    let _g = serial();
    let Some(etcd) = Etcd::start() else { return };
    let r = router(&etcd, &[]);
    let ta = worker(&etcd, "target-worker", "ta");
    let tb = worker(&etcd, "target-worker", "tb");
    wait_view(&r, Duration::from_secs(5), "ta and tb", |v| healthy(v, "targets", "ta") && healthy(v, "targets", "tb"));
    let long = reference(PROMPTS[2], 160);
    let addr = r.addr.clone();
    let inflight = std::thread::spawn(move || {
        chat(&addr, PROMPTS[2], 160).0
    });
    // Which target runs it: the one the router counted.
    let t = Instant::now();
    let (victim, other) = loop {
        if routed_to(&r, &ta.addr) >= 1.0 {
            break ("ta", "tb");
        }
        if routed_to(&r, &tb.addr) >= 1.0 {
            break ("tb", "ta");
        }
        assert!(t.elapsed() < Duration::from_secs(5), "the request was not routed");
        std::thread::sleep(Duration::from_millis(20));
    };
    // SIGTERM the one running the request.
    let (mut victim_proc, other_proc) = if victim == "ta" { (ta, tb) } else { (tb, ta) };
    std::thread::sleep(Duration::from_millis(300));
    sigterm(&victim_proc);
    let took = wait_view(&r, Duration::from_secs(5), "victim draining", |v| v.iter().any(|w| w.1 == victim && w.3 == "draining") || !present(v, "targets", victim));
    eprintln!("{victim} seen draining {took:?} after SIGTERM");
    let before = routed_to(&r, &victim_proc.addr);
    for i in 0..3 {
        assert_eq!(chat(&r.addr, PROMPTS[i], 16).0, reference(PROMPTS[i], 16));
    }
    assert_eq!(routed_to(&r, &victim_proc.addr), before, "a draining target got new work");
    assert!(routed_to(&r, &other_proc.addr) >= 3.0);
    assert_eq!(inflight.join().expect("the in-flight request failed during the drain"), long);
    let t = Instant::now();
    let status = loop {
        if let Some(st) = victim_proc.child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the draining target did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    // It revoked its lease on the way out: gone now, not after a TTL.
    wait_view(&r, Duration::from_secs(3), "victim deregistered", |v| !present(v, "targets", victim) && healthy(v, "targets", other));
    drop(other_proc);
}

#[test]
fn drafts_scale_out_and_in_under_load_and_greedy_output_stays_plain() {
    let _g = serial();
    let Some(etcd) = Etcd::start() else { return };
    let (r, _t1, d1) = basic_cluster(&etcd, &[]);
    let wants: Vec<String> = (0..4).map(|i| reference(PROMPTS[i], 32)).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Two clients in a closed loop until told to stop.
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let (addr, stop, done) = (r.addr.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut i = c;
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    got.push((i % 4, chat(&addr, PROMPTS[i % 4], 32)));
                    done.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    i += 1;
                }
                got
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let d2 = worker(&etcd, "draft-worker", "d2");
    let took = wait_view(&r, Duration::from_secs(5), "d2 joined", |v| healthy(v, "drafts", "d2"));
    eprintln!("d2 routable {took:?} after READY, under load");
    std::thread::sleep(Duration::from_secs(2));
    sigterm(&d1);
    wait_view(&r, Duration::from_secs(3), "d1 left", |v| !present(v, "drafts", "d1"));
    // The load goes on until four more requests have finished after the
    // change (at least eight in all), however fast the machine decodes.
    let after = done.load(std::sync::atomic::Ordering::Acquire) + 4;
    let t = std::time::Instant::now();
    while done.load(std::sync::atomic::Ordering::Acquire) < after.max(8) && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let mut n = 0;
    let mut speculative_after = 0;
    for c in clients {
        let got = c.join().expect("a request failed while drafts were scaled");
        n += got.len();
        for (i, (text, _)) in &got {
            assert_eq!(text, &wants[*i], "prompt {i}");
        }
        speculative_after += got.iter().rev().take(2).filter(|(_, (_, spec))| *spec).count();
    }
    assert!(n >= 8, "only {n} requests ran");
    assert!(speculative_after >= 1, "requests after the change still speculate, through d2");
    drop(d2);
}
