//! Helpers shared by the end-to-end tests: the real SmolLM2, a binary-wide
//! lock so two clusters never share the two cores, and fixed prompts.
#![allow(dead_code)]

pub mod etcd;

use aerie_engine::{DType, Engine};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub const PROMPTS: [&str; 10] = [
    "Name three rivers in Europe.",
    "Write a Python function that checks whether a number is prime.",
    "Count from 1 to 40, separated by commas.",
    "Explain why the sky is blue in two sentences.",
    "Repeat the sentence 'The quick brown fox jumps over the lazy dog.' five times.",
    "Give me a recipe for pancakes.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Translate 'Good morning, how are you?' into French, Spanish and German.",
    "List the planets of the solar system in order from the Sun.",
    "Write a haiku about autumn leaves.",
];

static CORES: RwLock<()> = RwLock::new(());

/// Held for a whole test: one cluster at a time, and nothing else beside it.
pub fn serial() -> RwLockWriteGuard<'static, ()> {
    CORES.write().unwrap_or_else(|e| e.into_inner())
}

/// Held by a light test (one short `aerie` process): such tests may run
/// beside each other, never beside a cluster, whose timeouts assume the two
/// cores are its own.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    CORES.read().unwrap_or_else(|e| e.into_inner())
}

pub fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::load("smollm2", DType::Auto).expect("load smollm2"))
}

/// A child `aerie` process, killed on drop.
pub struct Proc {
    pub child: Child,
    pub addr: String,
    /// The stdout line that said it was ready.
    pub ready: String,
    /// The stdout lines before it.
    pub preamble: Vec<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `aerie ARGS` and waits for a stdout line starting with `ready`;
/// `field` picks the address out of it.
pub fn start(args: &[&str], ready: &str, field: &dyn Fn(&str) -> String) -> Proc {
    start_exe(env!("CARGO_BIN_EXE_aerie").as_ref(), args, ready, field)
}

/// As [`start`], from the `aerie` binary at `exe`.
pub fn start_exe(exe: &std::path::Path, args: &[&str], ready: &str, field: &dyn Fn(&str) -> String) -> Proc {
    start_exe_env(exe, args, &[], ready, field)
}

/// As [`start_exe`], with extra environment variables.
pub fn start_exe_env(exe: &std::path::Path, args: &[&str], env: &[(&str, &str)], ready: &str, field: &dyn Fn(&str) -> String) -> Proc {
    let mut child = Command::new(exe)
        .envs(env.iter().copied())
        .args(["--threads", "1"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut preamble = Vec::new();
    let line = loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with(ready) => break l,
            Some(Ok(l)) => preamble.push(l),
            _ => panic!("{args:?} exited before `{ready}`: {:?}", child.wait()),
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Proc { addr: field(&line), child, ready: line, preamble }
}

/// The value after `key` in a READY line (`grpc=`, `metrics=`, …).
pub fn ready_field(key: &'static str) -> impl Fn(&str) -> String {
    move |l: &str| l.split_whitespace().find_map(|w| w.strip_prefix(key)).unwrap().to_string()
}

/// `aerie serve` (the default speculative cluster) on a free port, with
/// `extra` flags; `addr` is the router's host:port.
pub fn serve(extra: &[&str]) -> Proc {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let args: Vec<&str> = [&["serve", "--port", &port][..], extra].concat();
    start(&args, "OpenAI endpoint:", &|l: &str| l.split_whitespace().nth(2).unwrap().trim_start_matches("http://").trim_end_matches("/v1").to_string())
}
