//! The GPU device's compile step, run without a GPU: every kernel source
//! through NVRTC (the library the GPU device loads, here from the PyPI wheel
//! that `scripts/setup.sh` installs into `.venv`) into cubins for sm_80 and
//! sm_90, each holding the entry points the device looks up by name.

use aerie_kernels::cuda::{interp, nvrtc, SOURCES};
use std::path::{Path, PathBuf};

/// NVRTC from `.venv` unless `AERIE_NVRTC_LIB` or the loader path has one.
fn find_venv_nvrtc() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let lib = std::fs::read_dir(root.join(".venv/lib")).ok()?.filter_map(|e| e.ok()).find(|e| e.file_name().to_string_lossy().starts_with("python"))?;
    let dir = lib.path().join("site-packages/nvidia/cuda_nvrtc/lib");
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&dir).ok()?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    libs.sort();
    libs.into_iter().find(|p| {
        let n = p.file_name().unwrap_or_default().to_string_lossy();
        n.starts_with("libnvrtc.so") && !n.contains("builtins")
    })
}

fn load() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("AERIE_NVRTC_LIB").is_none() {
            if let Some(p) = find_venv_nvrtc() {
                std::env::set_var("AERIE_NVRTC_LIB", p);
            }
        }
    });
    nvrtc::ensure_loaded().expect("NVRTC: run scripts/setup.sh, which installs it into .venv");
}

#[test]
fn every_kernel_compiles_to_a_cubin_for_sm80_and_sm90_with_its_entry_points() {
    load();
    let (major, minor) = nvrtc::version().unwrap();
    assert!(major >= 12, "NVRTC {major}.{minor}");
    for src in SOURCES {
        let entries: Vec<&str> = interp::kernels().filter(|(_, f)| *f == src.file).map(|(n, _)| n).collect();
        assert!(!entries.is_empty(), "{}: no entry points", src.file);
        for arch in [80, 90] {
            let cubin = nvrtc::compile_cubin(src, arch).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&cubin[..4], b"\x7fELF", "{} sm_{arch}: not an ELF cubin", src.file);
            for e in &entries {
                let needle = format!("{e}\0");
                assert!(cubin.windows(needle.len()).any(|w| w == needle.as_bytes()), "{} sm_{arch}: no symbol {e}", src.file);
            }
        }
    }
}

#[test]
fn a_kernel_that_does_not_compile_is_an_error_with_nvrtcs_log() {
    load();
    let bad = aerie_kernels::cuda::Source { file: "bad.cu", text: "extern \"C\" __global__ void k(float* x) { x[0] = undeclared; }" };
    let err = nvrtc::compile_cubin(&bad, 90).unwrap_err().to_string();
    assert!(err.contains("bad.cu") && err.contains("undeclared"), "{err}");
}

#[test]
fn the_cubin_cache_returns_the_compiled_bytes_and_recompiles_a_changed_source() {
    load();
    let dir = std::env::temp_dir().join(format!("aerie-cubin-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = &SOURCES[0];
    let first = nvrtc::compile_cubin_in(Some(&dir), src, 90).unwrap();
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).collect();
    assert_eq!(files.len(), 1, "one cache entry");
    let t = std::time::Instant::now();
    assert_eq!(nvrtc::compile_cubin_in(Some(&dir), src, 90).unwrap(), first);
    assert!(t.elapsed().as_millis() < 50, "a hit reads the file: {:?}", t.elapsed());
    let changed = aerie_kernels::cuda::Source { file: src.file, text: format!("{}\n// changed\n", src.text).leak() };
    nvrtc::compile_cubin_in(Some(&dir), &changed, 90).unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "a changed source is a new entry");
    // A corrupt entry is a miss, not an error.
    for e in std::fs::read_dir(&dir).unwrap() {
        std::fs::write(e.unwrap().path(), b"garbage").unwrap();
    }
    assert_eq!(nvrtc::compile_cubin_in(Some(&dir), src, 90).unwrap(), first);
    std::fs::remove_dir_all(&dir).unwrap();
}
