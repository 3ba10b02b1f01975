//! A single-node etcd (Debian's `etcd-server`) for the tests that need one:
//! started on free loopback ports in a temporary directory, restartable on
//! the same ports, killed on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A single-node etcd in a temporary directory, killed on drop.
pub struct Etcd {
    child: Child,
    dir: tempfile::TempDir,
    client: u16,
    peer: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Etcd {
    /// `None` (with the reason printed) when etcd is not installed.
    pub fn start() -> Option<Etcd> {
        if !std::path::Path::new("/usr/bin/etcd").exists() {
            assert!(std::env::var("AERIE_REQUIRE_ETCD").is_err(), "AERIE_REQUIRE_ETCD is set but /usr/bin/etcd is missing (apt install etcd-server)");
            eprintln!("SKIP: /usr/bin/etcd is missing (Debian package etcd-server)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let child = Self::spawn(dir.path(), client, peer);
        let e = Etcd { child, dir, client, peer };
        e.wait_healthy();
        Some(e)
    }

    fn spawn(dir: &std::path::Path, client: u16, peer: u16) -> Child {
        let c = format!("http://127.0.0.1:{client}");
        let p = format!("http://127.0.0.1:{peer}");
        Command::new("/usr/bin/etcd")
            .args(["--name", "t0", "--data-dir", dir.join("data").to_str().unwrap(), "--listen-client-urls", &c, "--advertise-client-urls", &c, "--listen-peer-urls", &p])
            .args(["--initial-advertise-peer-urls", &p, "--initial-cluster", &format!("t0={p}"), "--initial-cluster-state", "new", "--logger", "zap", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    pub fn wait_healthy(&self) {
        let t = Instant::now();
        while !healthy(self.client) {
            assert!(t.elapsed() < Duration::from_secs(10), "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9, then the same ports again after `down`; `wipe` loses the
    /// data directory as an emptyDir-backed etcd would.
    pub fn restart(&mut self, down: Duration, wipe: bool) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if wipe {
            std::fs::remove_dir_all(self.dir.path().join("data")).unwrap();
        }
        std::thread::sleep(down);
        self.child = Self::spawn(self.dir.path(), self.client, self.peer);
        self.wait_healthy();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /health` answers 200.
fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200")
}
