//! The interpreted CUDA device: kernels from `kernels/cuda/` compiled as host
//! C++ (see `build.rs` and `cuda/interp/cuda_interp.h`) and launched with
//! CUDA's calling convention, an array of pointers to argument values.
//!
//! A launch runs the grid's blocks one after another and each block's threads
//! as fibers that switch at barriers and warp collectives, on the calling
//! thread; launches from several threads are serialized. "Device memory" is
//! host memory: a device pointer is a host pointer. It is for tests, not
//! speed.

use std::ffi::c_void;

/// One interpreted kernel, as `build.rs` generated it.
pub(crate) struct KernelEntry {
    pub name: &'static str,
    pub source: &'static str,
    pub body: unsafe extern "C" fn(*mut *mut c_void),
    pub params: unsafe extern "C" fn(*mut *const u8) -> u32,
}

include!(concat!(env!("OUT_DIR"), "/interp_table.rs"));

unsafe extern "C" {
    fn aerie_interp_twin(name: *const std::ffi::c_char) -> Option<unsafe extern "C" fn(*mut *mut c_void)>;
    fn aerie_interp_launch(
        body: unsafe extern "C" fn(*mut *mut c_void),
        params: *mut *mut c_void,
        grid: *const u32,
        block: *const u32,
        shared_bytes: u32,
    ) -> i32;
}

/// Grid and block sizes of a launch, as CUDA's launch configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    /// Dynamic shared memory per block, in bytes.
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// A one-dimensional grid of `blocks` blocks of `threads` threads.
    pub fn linear(blocks: u32, threads: u32) -> LaunchConfig {
        LaunchConfig { grid: (blocks, 1, 1), block: (threads, 1, 1), shared_bytes: 0 }
    }
}

/// One kernel argument, passed by value as CUDA passes it.
#[derive(Debug, Clone, Copy)]
pub enum KernelArg {
    /// A device pointer (in this interpreter, a host pointer).
    Ptr(*const c_void),
    I32(i32),
    I64(i64),
    F32(f32),
}

impl KernelArg {
    /// A pointer to the first element of a buffer.
    pub fn ptr<T>(p: *const T) -> KernelArg {
        KernelArg::Ptr(p.cast())
    }

    fn size(&self) -> u8 {
        match self {
            KernelArg::Ptr(_) => std::mem::size_of::<*const c_void>() as u8,
            KernelArg::I32(_) | KernelArg::F32(_) => 4,
            KernelArg::I64(_) => 8,
        }
    }

    /// The argument's bytes, little-endian in a 64-bit slot.
    fn word(&self) -> u64 {
        match *self {
            KernelArg::Ptr(p) => p as usize as u64,
            KernelArg::I32(v) => v as u32 as u64,
            KernelArg::I64(v) => v as u64,
            KernelArg::F32(v) => v.to_bits() as u64,
        }
    }
}

/// Why an interpreted launch did not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InterpError {
    #[error("no CUDA kernel named {0:?} in kernels/cuda/")]
    UnknownKernel(String),
    #[error("kernel {kernel} takes {expected} arguments, {given} given")]
    ArgumentCount { kernel: &'static str, expected: usize, given: usize },
    #[error("argument {index} of kernel {kernel} is {expected} bytes wide, {given} given")]
    ArgumentSize { kernel: &'static str, index: usize, expected: u8, given: u8 },
    #[error("invalid launch configuration {0:?} (block of 1 to 1024 threads, non-empty grid)")]
    BadConfig(LaunchConfig),
    #[error("kernel {0} deadlocked: a barrier that some live threads never reach")]
    Deadlock(&'static str),
    #[error("{0} bytes of shared memory per block is more than a GPU has")]
    TooMuchShared(u32),
}

impl InterpError {
    /// A stable name for the kind of error (logs and metrics).
    pub fn error_type(&self) -> &'static str {
        match self {
            InterpError::UnknownKernel(_) => "unknown_kernel",
            InterpError::ArgumentCount { .. } => "argument_count",
            InterpError::ArgumentSize { .. } => "argument_size",
            InterpError::BadConfig(_) => "bad_config",
            InterpError::Deadlock(_) => "deadlock",
            InterpError::TooMuchShared(_) => "too_much_shared",
        }
    }
}

/// Names of every interpreted kernel, with the file each comes from.
pub fn kernels() -> impl Iterator<Item = (&'static str, &'static str)> {
    KERNELS.iter().map(|k| (k.name, k.source))
}

fn find(name: &str) -> Result<&'static KernelEntry, InterpError> {
    KERNELS.iter().find(|k| k.name == name).ok_or_else(|| InterpError::UnknownKernel(name.to_string()))
}

/// The byte size of each parameter of kernel `name`.
pub fn param_sizes(name: &str) -> Result<Vec<u8>, InterpError> {
    let k = find(name)?;
    let mut sizes: *const u8 = std::ptr::null();
    // SAFETY: the shim stores a pointer to a static array of `n` sizes.
    let n = unsafe { (k.params)(&mut sizes) } as usize;
    Ok(unsafe { std::slice::from_raw_parts(sizes, n) }.to_vec())
}

/// The arguments of a launch of kernel `name` as CUDA's kernelParams
/// values (one little-endian 64-bit slot each), after checking their number
/// and widths against the kernel's signature. The GPU device checks its
/// launches through this too, so a wrong argument list fails the same way on
/// both devices instead of corrupting a GPU launch.
pub fn checked_words(name: &str, args: &[KernelArg]) -> Result<Vec<u64>, InterpError> {
    let k = find(name)?;
    let sizes = param_sizes(name)?;
    if sizes.len() != args.len() {
        return Err(InterpError::ArgumentCount { kernel: k.name, expected: sizes.len(), given: args.len() });
    }
    for (index, (a, &s)) in args.iter().zip(&sizes).enumerate() {
        if a.size() != s {
            return Err(InterpError::ArgumentSize { kernel: k.name, index, expected: s, given: a.size() });
        }
    }
    Ok(args.iter().map(KernelArg::word).collect())
}

/// Launches kernel `name` on the interpreted device and waits for it.
///
/// The number and width of the arguments are checked against the kernel's
/// signature; that each pointer covers what the kernel reads and writes is
/// not (as on a GPU).
///
/// # Safety
/// Every `Ptr` argument must point to memory valid for the accesses the
/// kernel makes with this configuration and these arguments, with no other
/// live reference to what it writes.
pub unsafe fn launch(name: &str, cfg: LaunchConfig, args: &[KernelArg]) -> Result<(), InterpError> {
    // SAFETY: forwarded.
    unsafe { launch_as(name, cfg, args, twins_enabled()) }
}

/// Whether launches of kernels that have a host twin (`interp/twins.cpp`:
/// linear_bf16, linear_f16, attention_paged) run the twin, which gives the kernel's bits
/// without its fiber switches. On unless `AERIE_CUDA_INTERPRET_TWINS=0`.
pub fn twins_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("AERIE_CUDA_INTERPRET_TWINS").map_or(true, |v| v != "0"))
}

/// Whether kernel `name` has a host twin.
pub fn has_twin(name: &str) -> bool {
    let c = std::ffi::CString::new(name).unwrap_or_default();
    // SAFETY: a NUL-terminated name; the lookup only compares strings.
    unsafe { aerie_interp_twin(c.as_ptr()) }.is_some()
}

/// [`launch`], choosing explicitly between the interpreted kernel
/// (`twin = false`) and its host twin where it has one.
///
/// # Safety
/// As [`launch`].
pub unsafe fn launch_as(name: &str, cfg: LaunchConfig, args: &[KernelArg], twin: bool) -> Result<(), InterpError> {
    let k = find(name)?;
    let mut words = checked_words(name, args)?;
    let mut params: Vec<*mut c_void> = words.iter_mut().map(|w| (w as *mut u64).cast()).collect();
    let grid = [cfg.grid.0, cfg.grid.1, cfg.grid.2];
    let block = [cfg.block.0, cfg.block.1, cfg.block.2];
    // A twin computes the whole problem its arguments describe, as a
    // covering grid of the kernel would; invalid configurations still go to
    // the launcher below, which refuses them.
    let threads = cfg.block.0 as u64 * cfg.block.1 as u64 * cfg.block.2 as u64;
    let cfg_ok = (1..=1024).contains(&threads) && cfg.grid.0 > 0 && cfg.grid.1 > 0 && cfg.grid.2 > 0;
    if twin && cfg_ok {
        let c = std::ffi::CString::new(name).unwrap_or_default();
        // SAFETY: as below; a twin reads the same parameters as its kernel.
        if let Some(body) = unsafe { aerie_interp_twin(c.as_ptr()) } {
            unsafe { body(params.as_mut_ptr()) };
            return Ok(());
        }
    }
    // SAFETY: `params` holds one pointer per parameter to a value of the
    // checked width; the caller vouches for the pointers inside them.
    let rc = unsafe { aerie_interp_launch(k.body, params.as_mut_ptr(), grid.as_ptr(), block.as_ptr(), cfg.shared_bytes) };
    match rc {
        0 => Ok(()),
        1 => Err(InterpError::BadConfig(cfg)),
        2 => Err(InterpError::Deadlock(k.name)),
        _ => Err(InterpError::TooMuchShared(cfg.shared_bytes)),
    }
}
