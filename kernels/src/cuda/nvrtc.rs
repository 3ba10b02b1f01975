//! Compiling `kernels/cuda/` at run time with NVRTC, into a cubin for the
//! exact architecture of the GPU in hand.
//!
//! Why run time and cubins: `cargo build` then needs no CUDA toolkit, one
//! binary serves sm_80 and sm_90 alike, and a cubin sidesteps the driver's
//! PTX JIT, which refuses PTX newer than the driver (an NVRTC 13.x next to an
//! R580 driver would otherwise fail). NVRTC is loaded through cudarc with
//! dynamic loading, so a machine without it still builds and starts; the
//! library is looked up by its usual names on the loader path, or taken from
//! `AERIE_NVRTC_LIB` (an absolute path, e.g. inside a PyPI
//! `nvidia-cuda-nvrtc` wheel; cudarc then finds it by its soname, so a
//! `libnvrtc.so` elsewhere on the loader path would still come first). This compile runs in CI too, on no GPU, so the
//! exact code path the GPU device uses to get its kernels is tested.

use super::{Source, COMMON_HEADER};
use cudarc::nvrtc::sys;
use std::ffi::{c_char, c_int, CString};
use std::sync::OnceLock;

/// Why the kernels could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum NvrtcError {
    #[error("NVRTC (libnvrtc.so) not found: put its directory on LD_LIBRARY_PATH or set AERIE_NVRTC_LIB to its path{0}")]
    Missing(String),
    #[error("{file} for sm_{arch}: NVRTC {step} failed ({code:?}){log}")]
    Compile { file: &'static str, arch: u32, step: &'static str, code: sys::nvrtcResult, log: String },
}

/// Loads NVRTC once: `AERIE_NVRTC_LIB` first (kept loaded for the process,
/// so cudarc's lookup by name finds the same library), then the usual
/// names. `Ok` when NVRTC can be called.
pub fn ensure_loaded() -> Result<(), NvrtcError> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let mut note = String::new();
            if let Ok(path) = std::env::var("AERIE_NVRTC_LIB") {
                // SAFETY: loading a shared library runs its initializers;
                // NVRTC's are the vendor's and have no preconditions.
                match unsafe { libloading::Library::new(&path) } {
                    Ok(lib) => std::mem::forget(lib),
                    Err(e) => note = format!(" (AERIE_NVRTC_LIB={path}: {e})"),
                }
            }
            // SAFETY: only tries to open the library by its candidate names.
            if unsafe { sys::is_culib_present() } {
                Ok(())
            } else {
                Err(note)
            }
        })
        .clone()
        .map_err(NvrtcError::Missing)
}

/// NVRTC's (major, minor) version.
pub fn version() -> Result<(i32, i32), NvrtcError> {
    ensure_loaded()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-parameters.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    Ok((major, minor))
}

/// A compiled program, destroyed on drop.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram and destroyed once.
        unsafe { sys::nvrtcDestroyProgram(&mut self.0) };
    }
}

/// Compiles one kernel source to a cubin for `sm_<arch>` (80, 90, …),
/// with `common.cuh` handed over in memory.
pub fn compile_cubin(src: &Source, arch: u32) -> Result<Vec<u8>, NvrtcError> {
    ensure_loaded()?;
    let fail = |step, code, log: String| NvrtcError::Compile { file: src.file, arch, step, code, log };
    let text = CString::new(src.text).map_err(|_| fail("reading the source", sys::nvrtcResult::NVRTC_ERROR_INVALID_INPUT, String::new()))?;
    let name = CString::new(src.file).unwrap_or_default();
    let header = CString::new(COMMON_HEADER.text).unwrap_or_default();
    let header_name = CString::new(COMMON_HEADER.file).unwrap_or_default();
    let headers = [header.as_ptr()];
    let header_names = [header_name.as_ptr()];
    let mut raw: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: NUL-terminated strings that outlive the call; one header.
    let rc = unsafe { sys::nvrtcCreateProgram(&mut raw, text.as_ptr(), name.as_ptr(), 1, headers.as_ptr(), header_names.as_ptr()) };
    if rc != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(fail("create", rc, String::new()));
    }
    let prog = Program(raw);
    let opts: Vec<CString> = [format!("--gpu-architecture=sm_{arch}"), "--std=c++14".into()].into_iter().map(|o| CString::new(o).unwrap_or_default()).collect();
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: the program is live; the options outlive the call.
    let rc = unsafe { sys::nvrtcCompileProgram(prog.0, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
    if rc != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(fail("compile", rc, format!(":\n{}", program_log(&prog))));
    }
    let mut size = 0usize;
    // SAFETY: the program compiled; size is an out-parameter.
    let rc = unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) };
    if rc != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
        return Err(fail("cubin size", rc, String::new()));
    }
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` holds the size NVRTC reported.
    let rc = unsafe { sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr().cast()) };
    if rc != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(fail("cubin", rc, String::new()));
    }
    Ok(cubin)
}

fn program_log(prog: &Program) -> String {
    let mut size = 0usize;
    // SAFETY: a live program; out-parameter.
    if unsafe { sys::nvrtcGetProgramLogSize(prog.0, &mut size) } != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
        return String::new();
    }
    let mut log = vec![0u8; size];
    // SAFETY: `log` holds the size NVRTC reported.
    unsafe { sys::nvrtcGetProgramLog(prog.0, log.as_mut_ptr().cast()) };
    String::from_utf8_lossy(&log).trim_end_matches('\0').trim_end().to_string()
}

/// [`compile_cubin`] through a disk cache (`AERIE_CUDA_CACHE`, else
/// `$XDG_CACHE_HOME/aerie/cubin` or `~/.cache/aerie/cubin`; `0` turns it
/// off), keyed by the source, the header, the architecture and NVRTC's
/// version, so a process after the first starts without compiling. A cache
/// that cannot be read or written is only a miss.
pub fn compile_cubin_cached(src: &Source, arch: u32) -> Result<Vec<u8>, NvrtcError> {
    compile_cubin_in(cache_dir().as_deref(), src, arch)
}

/// [`compile_cubin`] through the cache in `dir` (none: no cache).
pub fn compile_cubin_in(dir: Option<&std::path::Path>, src: &Source, arch: u32) -> Result<Vec<u8>, NvrtcError> {
    let Some(dir) = dir else { return compile_cubin(src, arch) };
    let (major, minor) = version()?;
    let mut key = Fnv64::default();
    for part in [src.file, src.text, COMMON_HEADER.text] {
        key.write(part.as_bytes());
        key.write(&[0]);
    }
    key.write(&[arch as u8, major as u8, minor as u8]);
    let path = dir.join(format!("{}-sm{arch}-{:016x}.cubin", src.file.trim_end_matches(".cu"), key.0));
    if let Ok(cubin) = std::fs::read(&path) {
        if cubin.starts_with(b"\x7fELF") {
            return Ok(cubin);
        }
    }
    let cubin = compile_cubin(src, arch)?;
    if std::fs::create_dir_all(dir).is_ok() {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
        if std::fs::write(&tmp, &cubin).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(cubin)
}

fn cache_dir() -> Option<std::path::PathBuf> {
    match std::env::var_os("AERIE_CUDA_CACHE") {
        Some(v) if v == "0" || v.is_empty() => None,
        Some(v) => Some(v.into()),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))
            .map(|c| c.join("aerie").join("cubin")),
    }
}

/// FNV-1a, 64 bits: a stable hash for cache file names.
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}
