//! Local servers a benchmark starts itself: `aerie serve` clusters (for
//! sweeps and comparisons) and the peer, llama.cpp's OpenAI server.
//!
//! Every server is a child process on a free loopback port, killed when
//! its [`LocalServer`] drops (SIGTERM, then SIGKILL after 10 s) and also
//! when the bench itself dies (`PR_SET_PDEATHSIG`), so an interrupted sweep
//! leaves nothing behind.
//!
//! The peer is `llama-cpp-python[server]==0.3.36` in its own venv under
//! `~/.cache/aerie/peers/llama-cpp` (or `AERIE_PEERS_DIR`). PyPI has no
//! Linux wheel for it, so installing compiles llama.cpp (about 15 minutes
//! on 2 cores); [`llama_cpp_python`] does it on demand and says so.

use crate::error::{BenchError, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The pinned peer package.
pub const LLAMA_CPP_PACKAGE: &str = "llama-cpp-python[server]==0.3.36";

/// A started server; dropping it stops it.
pub struct LocalServer {
    pub name: String,
    child: Child,
    /// Up to and including `/v1`.
    pub base_url: String,
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| BenchError::io("127.0.0.1:0", e))?;
    l.local_addr().map(|a| a.port()).map_err(|e| BenchError::io("127.0.0.1:0", e))
}

fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to signal
    // the child when this process dies.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// Starts `aerie [--threads T] serve --port P <args>` and waits for its
/// "OpenAI endpoint:" line. Its stderr passes through when `verbose`.
pub fn start_aerie(exe: &Path, name: &str, threads: Option<usize>, args: &[String], timeout: Duration, verbose: bool) -> Result<LocalServer> {
    let port = free_port()?;
    let mut cmd = Command::new(exe);
    if let Some(t) = threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    cmd.args(["serve", "--port", &port.to_string()]).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(if verbose { Stdio::inherit() } else { Stdio::null() });
    die_with_parent(&mut cmd);
    let startup = |msg: String| BenchError::Startup { what: format!("aerie serve {}", args.join(" ")), msg };
    let mut child = cmd.spawn().map_err(|e| startup(e.to_string()))?;
    let stdout = child.stdout.take().ok_or_else(|| startup("no stdout".into()))?;
    let mut server = LocalServer { name: name.to_string(), child, base_url: format!("http://127.0.0.1:{port}/v1") };
    // Read the READY line on a thread so the timeout holds even if the
    // child stays silent.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut ready = false;
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if !ready && line.starts_with("OpenAI endpoint:") {
                ready = true;
                let _ = tx.send(());
            }
        }
    });
    let t0 = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(()) => return Ok(server),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = server.child.wait().map(|s| s.to_string()).unwrap_or_default();
                return Err(startup(format!("exited before it was ready ({status}); rerun with --verbose to see why")));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if t0.elapsed() > timeout => return Err(startup(format!("not ready after {timeout:?}"))),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// The peer venv's python, installing the peer first when `install` and it
/// is missing.
pub fn llama_cpp_python(install: bool) -> Result<PathBuf> {
    let dir = std::env::var("AERIE_PEERS_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into())).join(".cache/aerie/peers")).join("llama-cpp");
    let python = dir.join("bin/python");
    let has_peer = || Command::new(&python).args(["-c", "import llama_cpp.server"]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if has_peer() {
        return Ok(python);
    }
    let missing = |msg: String| BenchError::Startup { what: "llama.cpp server".into(), msg };
    if !install {
        return Err(missing(format!("{LLAMA_CPP_PACKAGE} is not installed in {}; rerun without --no-install-peer", dir.display())));
    }
    eprintln!("bench: installing {LLAMA_CPP_PACKAGE} into {} (pip compiles llama.cpp: about 15 minutes on 2 cores)", dir.display());
    let run = |cmd: &mut Command| -> Result<()> {
        let s = cmd.status().map_err(|e| missing(e.to_string()))?;
        if s.success() {
            Ok(())
        } else {
            Err(missing(format!("{cmd:?} failed ({s})")))
        }
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    run(Command::new(dir.join("bin/pip")).args(["install", "-q", "--disable-pip-version-check", LLAMA_CPP_PACKAGE]))?;
    if has_peer() {
        Ok(python)
    } else {
        Err(missing("installed, but `import llama_cpp.server` still fails".into()))
    }
}

/// Starts llama.cpp's OpenAI server on `gguf` with `threads` threads and
/// waits until `/v1/models` answers.
pub fn start_llama_cpp(python: &Path, gguf: &Path, threads: usize, timeout: Duration, verbose: bool) -> Result<LocalServer> {
    let port = free_port()?;
    let t = threads.to_string();
    let mut cmd = Command::new(python);
    cmd.args(["-m", "llama_cpp.server", "--model"])
        .arg(gguf)
        .args(["--model_alias", "smollm2", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--n_threads", &t, "--n_threads_batch", &t, "--n_ctx", "2048", "--verbose", "false"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if verbose { Stdio::inherit() } else { Stdio::null() });
    die_with_parent(&mut cmd);
    let startup = |msg: String| BenchError::Startup { what: "llama.cpp server".into(), msg };
    let child = cmd.spawn().map_err(|e| startup(e.to_string()))?;
    let mut server = LocalServer { name: "llama.cpp".into(), child, base_url: format!("http://127.0.0.1:{port}/v1") };
    let t0 = Instant::now();
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
    while agent.get(&format!("{}/models", server.base_url)).call().is_err() {
        if let Ok(Some(s)) = server.child.try_wait() {
            return Err(startup(format!("exited ({s}); rerun with --verbose to see why")));
        }
        if t0.elapsed() > timeout {
            return Err(startup(format!("not ready after {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(server)
}
