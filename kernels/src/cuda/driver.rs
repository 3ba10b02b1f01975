//! The GPU device: the CUDA driver API through cudarc, loaded dynamically.
//!
//! Strategy:
//! - **Loading.** Nothing links against CUDA. `libcuda` is looked for before
//!   the first driver call (cudarc panics on a call into a library it cannot
//!   load), so a machine without a driver gets [`DeviceError::Unavailable`].
//! - **Kernels.** Every source of `kernels/cuda/` is compiled once at open by
//!   NVRTC into a cubin for this GPU's exact `sm_XY` ([`super::nvrtc`]) and
//!   loaded as one module per file. Launches are checked against each
//!   kernel's signature exactly as the interpreter checks them.
//! - **One stream.** Every copy and launch goes to one non-blocking stream,
//!   in issue order, which is the [`Device`] contract; a download waits for
//!   the stream. (A non-default stream is what graph capture needs later.)
//! - **Memory.** `cuMemAlloc`, not the stream-ordered pool, so buffers can
//!   be exported through CUDA IPC. Freed buffers go to a cache keyed by
//!   rounded size and are reused without a synchronization, which is safe
//!   because all work is on one stream: whatever used a buffer before is
//!   ordered before whatever uses it next. A failed allocation empties the
//!   cache and tries once more, then reports free and total memory.
//!   Buffers exported through CUDA IPC (feature rings) keep a pool of their
//!   own and are never freed while the process lives, since a reader in
//!   another process may still map them.
//! - **Threads.** The primary context is made current at the start of every
//!   operation, so any thread may drive the device.
//! - **cuBLAS** (`gemm_bf16`, the non-batch-invariant projections) is loaded
//!   on first use, after checking that `libcublas` can be opened (cudarc
//!   panics otherwise), with one handle bound to the device's stream.

use super::device::{Device, DeviceBuffer, DeviceError, IpcHandle, Result};
use super::interp::{self, KernelArg, LaunchConfig};
use super::nvrtc;
use cudarc::driver::{result, sys};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Launches above this much dynamic shared memory must opt in per function.
const DEFAULT_SHARED_LIMIT: u32 = 48 << 10;

fn driver_err(what: &str) -> impl Fn(result::DriverError) -> DeviceError + '_ {
    move |e| DeviceError::Driver(format!("{what}: {e:?}"))
}

/// Whether libcuda can be loaded. Calling the driver without it panics
/// inside cudarc, so this is asked first.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library by its candidate names.
    unsafe { sys::is_culib_present() }
}

/// The number of CUDA devices, or why there are none.
pub fn device_count() -> Result<usize> {
    if !driver_present() {
        return Err(DeviceError::Unavailable("no NVIDIA driver on this machine (libcuda.so.1 not found)".into()));
    }
    result::init().map_err(driver_err("cuInit"))?;
    Ok(result::device::get_count().map_err(driver_err("cuDeviceGetCount"))? as usize)
}

/// What every allocation and the device share: the context, the stream and
/// the cache of freed buffers. Dropped last, when the device and every
/// buffer are gone.
struct Core {
    ctx: sys::CUcontext,
    cu_device: sys::CUdevice,
    stream: sys::CUstream,
    /// Freed buffers by size class.
    cache: Mutex<HashMap<usize, Vec<sys::CUdeviceptr>>>,
    /// Exported buffers whose rings are gone, by size class. They never go
    /// back to `cache` or to the driver while this process lives: a reader
    /// in another process may still map one (freeing exported memory before
    /// its importers close it is undefined), so one is only ever reused as
    /// another exported ring, whose readers check every block.
    exported: Mutex<HashMap<usize, Vec<sys::CUdeviceptr>>>,
    in_use: AtomicUsize,
    cached: AtomicUsize,
}

// SAFETY: the driver API is thread-safe; the raw handles are only used with
// the context made current, and the cache is behind a mutex.
unsafe impl Send for Core {}
unsafe impl Sync for Core {}

impl Core {
    fn bind(&self) -> Result<()> {
        // SAFETY: a context retained in `open` and released only in drop.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(driver_err("cuCtxSetCurrent"))
    }

    fn sync(&self) -> Result<()> {
        // SAFETY: the stream lives as long as the core.
        unsafe { result::stream::synchronize(self.stream) }.map_err(driver_err("cuStreamSynchronize"))
    }

    /// Frees every cached buffer (after the stream has finished with them).
    fn release_cache(&self) -> Result<()> {
        self.sync()?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        for (class, ptrs) in cache.drain() {
            for p in ptrs {
                // SAFETY: allocated by cuMemAlloc, not in use (it is cached),
                // and the stream is idle.
                unsafe { result::free_sync(p) }.map_err(driver_err("cuMemFree"))?;
                self.cached.fetch_sub(class, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        if self.bind().is_ok() {
            let _ = self.release_cache();
            for p in self.exported.lock().unwrap_or_else(|p| p.into_inner()).drain().flat_map(|(_, v)| v) {
                // SAFETY: allocated by cuMemAlloc; the process is done with it.
                let _ = unsafe { result::free_sync(p) };
            }
            // SAFETY: created in `open`; nothing uses it any more.
            let _ = unsafe { result::stream::destroy(self.stream) };
            // SAFETY: the retain of `open`.
            let _ = unsafe { result::primary_ctx::release(self.cu_device) };
        }
    }
}

/// The size class of an allocation: powers of two from 512 bytes up to
/// 1 MiB, then whole 2 MiB units, so buffers of one step's shapes are reused
/// by the next step and a weight wastes at most 2 MiB.
fn size_class(bytes: usize) -> usize {
    if bytes <= 1 << 20 {
        bytes.max(512).next_power_of_two()
    } else {
        bytes.div_ceil(2 << 20) * (2 << 20)
    }
}

/// A UUID as nvidia-smi and `CUDA_VISIBLE_DEVICES` write it.
fn format_uuid(b: &[u8; 16]) -> String {
    let hex = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("GPU-{}-{}-{}-{}-{}", hex(0..4), hex(4..6), hex(6..8), hex(8..10), hex(10..16))
}

/// An exported allocation: back to the exported pool (never the general
/// cache) when its ring is dropped.
struct ExportedAlloc {
    ptr: sys::CUdeviceptr,
    class: usize,
    core: Arc<Core>,
}

impl Drop for ExportedAlloc {
    fn drop(&mut self) {
        self.core.in_use.fetch_sub(self.class, Ordering::Relaxed);
        self.core.exported.lock().unwrap_or_else(|p| p.into_inner()).entry(self.class).or_default().push(self.ptr);
    }
}

/// Memory another process exported, mapped here; unmapped on drop.
struct IpcMapping {
    ptr: sys::CUdeviceptr,
    core: Arc<Core>,
}

impl Drop for IpcMapping {
    fn drop(&mut self) {
        if self.core.bind().is_ok() && self.core.sync().is_ok() {
            // SAFETY: opened by cuIpcOpenMemHandle; nothing on the stream uses it any more.
            let _ = unsafe { sys::cuIpcCloseMemHandle(self.ptr) };
        }
    }
}

/// An allocation: back to the cache when its buffer is dropped.
struct DriverAlloc {
    ptr: sys::CUdeviceptr,
    class: usize,
    core: Arc<Core>,
}

impl Drop for DriverAlloc {
    fn drop(&mut self) {
        self.core.in_use.fetch_sub(self.class, Ordering::Relaxed);
        self.core.cached.fetch_add(self.class, Ordering::Relaxed);
        self.core.cache.lock().unwrap_or_else(|p| p.into_inner()).entry(self.class).or_default().push(self.ptr);
    }
}

/// A CUDA GPU.
pub struct DriverDevice {
    core: Arc<Core>,
    ordinal: usize,
    name: String,
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as nvidia-smi prints it.
    uuid: String,
    arch: u32,
    total: usize,
    functions: HashMap<&'static str, sys::CUfunction>,
    modules: Vec<sys::CUmodule>,
    /// The cuBLAS handle, made on the first `gemm_bf16` (or why it cannot
    /// be), behind a lock: a handle takes one call at a time.
    blas: std::sync::OnceLock<std::result::Result<Mutex<Blas>, String>>,
}

/// A cuBLAS handle on the device's stream.
struct Blas(cudarc::cublas::sys::cublasHandle_t);

// SAFETY: the handle is used under the device's operations, which bind the
// context first; cuBLAS handles may be used from any thread one at a time,
// which the device's mutex around it ensures.
unsafe impl Send for Blas {}

// SAFETY: as for `Core`; function handles are immutable once loaded.
unsafe impl Send for DriverDevice {}
unsafe impl Sync for DriverDevice {}

impl DriverDevice {
    /// Opens GPU `ordinal`, compiles and loads every kernel.
    pub fn open(ordinal: usize) -> Result<DriverDevice> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(DeviceError::Unavailable(format!("cuda:{ordinal} does not exist: this machine has {count} CUDA device(s)")));
        }
        let cu_device = result::device::get(ordinal as i32).map_err(driver_err("cuDeviceGet"))?;
        // SAFETY: a device returned by cuDeviceGet.
        let attr = |a| unsafe { result::device::get_attribute(cu_device, a) }.map_err(driver_err("cuDeviceGetAttribute"));
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let arch = (major * 10 + minor) as u32;
        if arch < 80 {
            return Err(DeviceError::Unavailable(format!("cuda:{ordinal} is sm_{arch}; Aerie's kernels need sm_80 or newer (bf16)")));
        }
        // A cubin from a newer CUDA major than the driver's does not load;
        // say so before compiling anything.
        let (nvrtc_major, nvrtc_minor) = nvrtc::version().map_err(|e| DeviceError::Unavailable(e.to_string()))?;
        let mut driver_version = 0;
        // SAFETY: an out-parameter; the driver library is loaded.
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }.result().map_err(driver_err("cuDriverGetVersion"))?;
        if nvrtc_major > driver_version / 1000 {
            return Err(DeviceError::Unavailable(format!(
                "NVRTC {nvrtc_major}.{nvrtc_minor} is newer than the driver's CUDA {}.{}: use an NVRTC of CUDA {} or older (AERIE_NVRTC_LIB)",
                driver_version / 1000,
                driver_version % 1000 / 10,
                driver_version / 1000
            )));
        }
        let gpu = result::device::get_name(cu_device).map_err(driver_err("cuDeviceGetName"))?;
        // SAFETY: as above.
        let total = unsafe { result::device::total_mem(cu_device) }.map_err(driver_err("cuDeviceTotalMem"))?;
        // SAFETY: as above; released in Core's drop.
        let ctx = unsafe { result::primary_ctx::retain(cu_device) }.map_err(driver_err("cuDevicePrimaryCtxRetain"))?;
        // SAFETY: the context just retained.
        unsafe { result::ctx::set_current(ctx) }.map_err(driver_err("cuCtxSetCurrent"))?;
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking).map_err(driver_err("cuStreamCreate"))?;
        let core = Arc::new(Core { ctx, cu_device, stream, cache: Mutex::default(), exported: Mutex::default(), in_use: AtomicUsize::new(0), cached: AtomicUsize::new(0) });

        let mut functions = HashMap::new();
        let mut modules = Vec::new();
        for src in super::SOURCES {
            let cubin = nvrtc::compile_cubin_cached(src, arch).map_err(|e| DeviceError::Unavailable(e.to_string()))?;
            // SAFETY: a cubin NVRTC produced for this architecture.
            let module = unsafe { result::module::load_data(cubin.as_ptr().cast()) }.map_err(driver_err(src.file))?;
            modules.push(module);
            for (name, file) in interp::kernels() {
                if file == src.file {
                    let cname = CString::new(name).unwrap_or_default();
                    // SAFETY: a module loaded above.
                    let f = unsafe { result::module::get_function(module, cname) }.map_err(driver_err(name))?;
                    functions.insert(name, f);
                }
            }
        }
        let name = format!("{gpu} (cuda:{ordinal}, sm_{arch})");
        let mut raw = sys::CUuuid { bytes: [0; 16] };
        // SAFETY: an out-parameter and a device from cuDeviceGet.
        unsafe { sys::cuDeviceGetUuid_v2(&mut raw, cu_device) }.result().map_err(driver_err("cuDeviceGetUuid"))?;
        let uuid = format_uuid(&raw.bytes.map(|b| b as u8));
        Ok(DriverDevice { core, ordinal, name, uuid, arch, total, functions, modules, blas: std::sync::OnceLock::new() })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The compute capability as `major * 10 + minor`.
    pub fn arch(&self) -> u32 {
        self.arch
    }

    /// Waits until everything issued so far has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.core.bind()?;
        self.core.sync()
    }

    fn raw_alloc(&self, class: usize) -> Result<sys::CUdeviceptr> {
        if let Some(p) = self.core.cache.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&class).and_then(Vec::pop) {
            self.core.cached.fetch_sub(class, Ordering::Relaxed);
            return Ok(p);
        }
        // SAFETY: plain allocation; zeroed by the caller before use.
        match unsafe { result::malloc_sync(class) } {
            Ok(p) => Ok(p),
            Err(_) => {
                self.core.release_cache()?;
                // SAFETY: as above.
                unsafe { result::malloc_sync(class) }.map_err(|_| {
                    let (free, total) = result::mem_get_info().unwrap_or((0, self.total));
                    DeviceError::OutOfMemory { requested: class, free, total }
                })
            }
        }
    }
}

impl DriverDevice {
    fn blas(&self) -> Result<&Mutex<Blas>> {
        let b = self.blas.get_or_init(|| {
            use cudarc::cublas::{result as blas, sys as bsys};
            // SAFETY: only tries to open the library by its candidate names.
            if !unsafe { bsys::is_culib_present() } {
                return Err("libcublas not found (install the CUDA runtime's cuBLAS, or run batch-invariant: --enable-deterministic-inference)".to_string());
            }
            self.core.bind().map_err(|e| e.to_string())?;
            let h = blas::create_handle().map_err(|e| format!("cublasCreate: {e:?}"))?;
            // SAFETY: a live handle and the device's own stream.
            unsafe { blas::set_stream(h, self.core.stream as bsys::cudaStream_t) }.map_err(|e| format!("cublasSetStream: {e:?}"))?;
            Ok(Mutex::new(Blas(h)))
        });
        b.as_ref().map_err(|e| DeviceError::Unavailable(e.clone()))
    }
}

impl Drop for DriverDevice {
    fn drop(&mut self) {
        if let Some(Ok(b)) = self.blas.take() {
            let b = b.into_inner().unwrap_or_else(|p| p.into_inner());
            if self.core.bind().is_ok() {
                // SAFETY: made in `blas`; no call is in flight (we own self).
                let _ = unsafe { cudarc::cublas::result::destroy_handle(b.0) };
            }
        }
        if self.core.bind().is_ok() && self.core.sync().is_ok() {
            for m in self.modules.drain(..) {
                // SAFETY: loaded in `open`; no launch is pending (synced).
                let _ = unsafe { result::module::unload(m) };
            }
        }
    }
}

impl Device for DriverDevice {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        self.core.bind()?;
        let class = size_class(bytes);
        let ptr = self.raw_alloc(class)?;
        self.core.in_use.fetch_add(class, Ordering::Relaxed);
        let owner = DriverAlloc { ptr, class, core: self.core.clone() };
        if bytes > 0 {
            // SAFETY: `class >= bytes` bytes at `ptr`, ordered on the stream.
            unsafe { result::memset_d8_async(ptr, 0, bytes, self.core.stream) }.map_err(driver_err("cuMemsetD8Async"))?;
        }
        Ok(DeviceBuffer::from_raw(ptr, bytes, Box::new(owner)))
    }

    fn synchronize(&self) -> Result<()> {
        DriverDevice::synchronize(self)
    }

    fn uuid(&self) -> String {
        self.uuid.clone()
    }

    /// A `cuMemAlloc` buffer (exportable, unlike the stream-ordered pool's)
    /// and its `cuIpcGetMemHandle`. Exported buffers live in a pool of their
    /// own for the rest of the process (see `Core::exported`).
    fn alloc_exportable(&self, bytes: usize) -> Result<(DeviceBuffer, IpcHandle)> {
        self.core.bind()?;
        let class = size_class(bytes);
        let reused = self.core.exported.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&class).and_then(Vec::pop);
        let ptr = match reused {
            Some(p) => p,
            // SAFETY: plain allocation, zeroed below.
            None => unsafe { result::malloc_sync(class) }.map_err(|_| {
                let (free, total) = result::mem_get_info().unwrap_or((0, self.total));
                DeviceError::OutOfMemory { requested: class, free, total }
            })?,
        };
        self.core.in_use.fetch_add(class, Ordering::Relaxed);
        let buf = DeviceBuffer::from_raw(ptr, bytes, Box::new(ExportedAlloc { ptr, class, core: self.core.clone() }));
        if bytes > 0 {
            // SAFETY: `class >= bytes` bytes at `ptr`, ordered on the stream.
            unsafe { result::memset_d8_async(ptr, 0, bytes, self.core.stream) }.map_err(driver_err("cuMemsetD8Async"))?;
        }
        let mut h = std::mem::MaybeUninit::<sys::CUipcMemHandle>::zeroed();
        // SAFETY: an out-parameter; `ptr` is the base of a cuMemAlloc
        // allocation (never a suballocation: the pool hands out whole ones).
        unsafe { sys::cuIpcGetMemHandle(h.as_mut_ptr(), buf.addr()) }.result().map_err(driver_err("cuIpcGetMemHandle"))?;
        // SAFETY: initialized by the call above.
        let h = unsafe { h.assume_init() };
        let bytes_of = h.reserved.iter().map(|&c| c as u8).collect();
        Ok((buf, IpcHandle { bytes: bytes_of, len: bytes as u64 }))
    }

    /// `cuIpcOpenMemHandle`, then `cuMemGetAddressRange` to check that the
    /// allocation holds what the handle claims.
    fn open_ipc(&self, handle: &IpcHandle) -> Result<DeviceBuffer> {
        if handle.bytes.len() != super::device::IPC_HANDLE_BYTES {
            return Err(DeviceError::BadOperands(format!("IPC handle refused: {} bytes, a handle has {}", handle.bytes.len(), super::device::IPC_HANDLE_BYTES)));
        }
        let mut h = sys::CUipcMemHandle { reserved: [0; 64] };
        for (d, &b) in h.reserved.iter_mut().zip(&handle.bytes) {
            *d = b as std::ffi::c_char;
        }
        self.core.bind()?;
        let mut ptr: sys::CUdeviceptr = 0;
        let lazy = sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32;
        // SAFETY: an out-parameter; the driver validates the handle.
        unsafe { sys::cuIpcOpenMemHandle_v2(&mut ptr, h, lazy) }.result().map_err(|e| DeviceError::BadOperands(format!("IPC handle refused by the driver: {e:?}")))?;
        let mapping = IpcMapping { ptr, core: self.core.clone() };
        let (mut base, mut size) = (0, 0usize);
        // SAFETY: out-parameters; `ptr` was just mapped.
        unsafe { sys::cuMemGetAddressRange_v2(&mut base, &mut size, ptr) }.result().map_err(driver_err("cuMemGetAddressRange"))?;
        if handle.len == 0 || base != ptr || (size as u64) < handle.len {
            return Err(DeviceError::BadOperands(format!("IPC handle refused: it claims {} bytes, the allocation holds {size}", handle.len)));
        }
        Ok(DeviceBuffer::from_raw(ptr, handle.len as usize, Box::new(mapping)))
    }

    fn upload(&self, dst: &DeviceBuffer, offset: usize, src: &[u8]) -> Result<()> {
        dst.check(offset, src.len())?;
        self.core.bind()?;
        // SAFETY: the range lies in `dst`. From pageable memory the call
        // returns once `src` has been staged, so `src` may go after it.
        unsafe { result::memcpy_htod_async(dst.addr() + offset as u64, src, self.core.stream) }.map_err(driver_err("cuMemcpyHtoDAsync"))
    }

    fn download(&self, src: &DeviceBuffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        src.check(offset, dst.len())?;
        self.core.bind()?;
        // SAFETY: the range lies in `src`; the stream is synchronized before
        // `dst` is used.
        unsafe { result::memcpy_dtoh_async(dst, src.addr() + offset as u64, self.core.stream) }.map_err(driver_err("cuMemcpyDtoHAsync"))?;
        self.core.sync()
    }

    fn copy(&self, src: &DeviceBuffer, src_offset: usize, dst: &DeviceBuffer, dst_offset: usize, len: usize) -> Result<()> {
        src.check(src_offset, len)?;
        dst.check(dst_offset, len)?;
        self.core.bind()?;
        // SAFETY: both ranges checked; stream ordered.
        unsafe { result::memcpy_dtod_async(dst.addr() + dst_offset as u64, src.addr() + src_offset as u64, len, self.core.stream) }
            .map_err(driver_err("cuMemcpyDtoDAsync"))
    }

    unsafe fn launch(&self, kernel: &str, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        let mut words = interp::checked_words(kernel, args)?;
        let f = *self.functions.get(kernel).ok_or_else(|| interp::InterpError::UnknownKernel(kernel.to_string()))?;
        self.core.bind()?;
        if cfg.shared_bytes > DEFAULT_SHARED_LIMIT {
            // SAFETY: a function of a loaded module.
            unsafe {
                result::function::set_function_attribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    cfg.shared_bytes as i32,
                )
            }
            .map_err(driver_err(kernel))?;
        }
        let mut params: Vec<*mut c_void> = words.iter_mut().map(|w| (w as *mut u64).cast()).collect();
        // SAFETY: one pointer per parameter to a value of the checked width;
        // the caller vouches for the device pointers inside them.
        unsafe { result::launch_kernel(f, cfg.grid, cfg.block, cfg.shared_bytes, self.core.stream, &mut params) }.map_err(driver_err(kernel))
    }

    /// Held from the driver: buffers in use and those cached for reuse.
    fn memory(&self) -> (usize, usize) {
        (self.core.in_use.load(Ordering::Relaxed) + self.core.cached.load(Ordering::Relaxed), self.total)
    }

    fn free_memory(&self) -> usize {
        // The device-wide figure (cuMemGetInfo), so that a process sharing
        // the GPU (a colocated draft worker) is counted.
        if self.core.bind().is_err() {
            return 0;
        }
        result::mem_get_info().map_or(0, |(free, _)| free)
    }

    fn library_gemm_ready(&self) -> Result<()> {
        self.blas().map(|_| ())
    }

    fn gemm_bf16(&self, x: &DeviceBuffer, w: &DeviceBuffer, w_offset: usize, y: &DeviceBuffer, rows: usize, n: usize, k: usize) -> Result<()> {
        use cudarc::cublas::{result as blas, sys as bsys};
        super::device::check_gemm(x, w, w_offset, y, rows, n, k)?;
        let blas = self.blas()?.lock().unwrap_or_else(|p| p.into_inner());
        let h = blas.0;
        self.core.bind()?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Row-major y (rows × n) is column-major yᵀ (n × rows) = w (row-major
        // n × k, i.e. column-major k × n, transposed) times xᵀ (column-major
        // k × rows).
        // SAFETY: the three ranges were checked; the handle is on our stream.
        unsafe {
            blas::gemm_ex(
                h,
                bsys::cublasOperation_t::CUBLAS_OP_T,
                bsys::cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                rows as i32,
                k as i32,
                (&alpha as *const f32).cast(),
                (w.addr() + w_offset as u64) as *const c_void,
                bsys::cudaDataType::CUDA_R_16BF,
                k as i32,
                x.addr() as *const c_void,
                bsys::cudaDataType::CUDA_R_16BF,
                k as i32,
                (&beta as *const f32).cast(),
                y.addr() as *mut c_void,
                bsys::cudaDataType::CUDA_R_32F,
                n as i32,
                bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| DeviceError::Driver(format!("cublasGemmEx: {e:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_cover_the_request_and_round_coarsely() {
        for b in [0, 1, 511, 512, 513, 4096, 1 << 20, (1 << 20) + 1, 3 << 20, 1 << 30] {
            let c = size_class(b);
            assert!(c >= b && c >= 512, "{b} -> {c}");
            if b > 1 << 20 {
                assert_eq!(c % (2 << 20), 0);
                assert!(c - b < 2 << 20);
            } else {
                assert!(c.is_power_of_two());
            }
        }
    }

    #[test]
    fn no_driver_is_an_error_not_a_panic() {
        if driver_present() {
            return; // a GPU host: scripts/gpu_check.sh covers it
        }
        let err = DriverDevice::open(0).err().expect("no driver here");
        assert_eq!(err.error_type(), "device_unavailable");
        assert!(err.to_string().contains("libcuda"), "{err}");
    }
}
