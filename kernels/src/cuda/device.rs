//! The device seam of the CUDA path: memory, copies and kernel launches.
//!
//! Model code holds an `Arc<dyn Device>` and [`DeviceBuffer`]s and never asks
//! which device it runs on. Two implementations: [`InterpDevice`] (the
//! interpreter: "device memory" is host memory, kernels run as host C++) and
//! the cudarc driver on a real GPU. Both take the same kernel names and the
//! same [`KernelArg`] lists, CUDA's calling convention.

use super::interp::{self, InterpError, KernelArg, LaunchConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Why a device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("out of device memory: {requested} bytes requested, {free} of {total} free")]
    OutOfMemory { requested: usize, free: usize, total: usize },
    #[error("copy of {len} bytes at offset {offset} overruns a buffer of {size} bytes")]
    OutOfRange { offset: usize, len: usize, size: usize },
    #[error(transparent)]
    Launch(#[from] InterpError),
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("bad operands: {0}")]
    BadOperands(String),
}

impl DeviceError {
    pub fn error_type(&self) -> &'static str {
        match self {
            DeviceError::OutOfMemory { .. } => "out_of_memory",
            DeviceError::OutOfRange { .. } => "out_of_range",
            DeviceError::Launch(e) => e.error_type(),
            DeviceError::Driver(_) => "driver",
            DeviceError::Unavailable(_) => "device_unavailable",
            DeviceError::BadOperands(_) => "bad_operands",
        }
    }
}

pub type Result<T> = std::result::Result<T, DeviceError>;

/// A device allocation. Its address is what kernels receive; dropping it
/// frees the memory on its device.
pub struct DeviceBuffer {
    ptr: u64,
    len: usize,
    _owner: Box<dyn std::any::Any + Send + Sync>,
}

impl DeviceBuffer {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer as a kernel argument.
    pub fn arg(&self) -> KernelArg {
        KernelArg::Ptr(self.ptr as usize as *const std::ffi::c_void)
    }

    /// A pointer `offset` bytes into the buffer, as a kernel argument.
    pub fn arg_at(&self, offset: usize) -> KernelArg {
        debug_assert!(offset <= self.len);
        KernelArg::Ptr((self.ptr as usize + offset) as *const std::ffi::c_void)
    }

    /// A buffer at device address `ptr` of `len` bytes; `owner` frees it
    /// when dropped.
    pub(crate) fn from_raw(ptr: u64, len: usize, owner: Box<dyn std::any::Any + Send + Sync>) -> DeviceBuffer {
        DeviceBuffer { ptr, len, _owner: owner }
    }

    /// The device address.
    pub(crate) fn addr(&self) -> u64 {
        self.ptr
    }

    pub(crate) fn check(&self, offset: usize, len: usize) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(DeviceError::OutOfRange { offset, len, size: self.len });
        }
        Ok(())
    }
}

/// Memory, copies and launches on one device. Operations are in order on
/// one stream: a download sees every launch issued before it.
pub trait Device: Send + Sync {
    /// A short description ("interpreted CUDA", "NVIDIA H100 (cuda:0)").
    fn name(&self) -> String;
    /// `bytes` of zeroed device memory.
    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer>;
    fn upload(&self, dst: &DeviceBuffer, offset: usize, src: &[u8]) -> Result<()>;
    fn download(&self, src: &DeviceBuffer, offset: usize, dst: &mut [u8]) -> Result<()>;
    /// Device-to-device copy of `len` bytes.
    fn copy(&self, src: &DeviceBuffer, src_offset: usize, dst: &DeviceBuffer, dst_offset: usize, len: usize) -> Result<()>;
    /// Launches a kernel of `kernels/cuda/` by name.
    ///
    /// # Safety
    /// The pointer arguments must cover what the kernel touches with this
    /// configuration and these arguments.
    unsafe fn launch(&self, kernel: &str, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()>;
    /// (bytes in use, bytes in all).
    fn memory(&self) -> (usize, usize);
    /// Bytes free on the whole device now, whoever holds the rest (other
    /// processes on the same GPU included).
    fn free_memory(&self) -> usize {
        let (used, total) = self.memory();
        total.saturating_sub(used)
    }
    /// The vendor library's GEMM (cuBLAS on a GPU): `y = x · wᵀ` with `x`
    /// `rows × k` bf16, `w` `n × k` bf16 from byte `w_offset` on, `y`
    /// `rows × n` f32, products summed in f32 in an order the library picks
    /// for the shape (so a row's bits may depend on `rows`: this is not the
    /// batch-invariant path). Bounds are checked.
    fn gemm_bf16(&self, x: &DeviceBuffer, w: &DeviceBuffer, w_offset: usize, y: &DeviceBuffer, rows: usize, n: usize, k: usize) -> Result<()>;
    /// Whether [`Self::gemm_bf16`] can run here (on a GPU: libcublas found
    /// and a handle made), asked at start rather than at the first request.
    fn library_gemm_ready(&self) -> Result<()> {
        Ok(())
    }
    /// Waits until every copy and launch issued so far has finished, so
    /// another process reading this device's memory sees them.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// The physical device's identity (the GPU's UUID, `GPU-…`). Two
    /// processes share memory through IPC only on the same one; ordinals
    /// differ with `CUDA_VISIBLE_DEVICES`, UUIDs do not.
    fn uuid(&self) -> String;
    /// `bytes` of zeroed memory that another process on this machine can
    /// map through the returned handle ([`Self::open_ipc`]), for as long as
    /// the buffer lives here.
    fn alloc_exportable(&self, bytes: usize) -> Result<(DeviceBuffer, IpcHandle)>;
    /// Maps memory another process exported. The handle is checked, never
    /// trusted: a malformed or stale one, one from another device, or one
    /// naming less memory than it claims is refused.
    fn open_ipc(&self, handle: &IpcHandle) -> Result<DeviceBuffer>;
}

/// Bytes of an IPC handle: a `CUipcMemHandle`'s size.
pub const IPC_HANDLE_BYTES: usize = 64;

/// What another process needs to map an exported allocation: the 64 bytes of
/// a `CUipcMemHandle` on a GPU (a shared-memory name on the interpreted
/// device) and the length the exporter vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpcHandle {
    pub bytes: Vec<u8>,
    pub len: u64,
}

/// Checks the buffers of a [`Device::gemm_bf16`] call: sizes without
/// overflow, each range inside its buffer, the weights 2-byte aligned, and
/// the output apart from both inputs.
pub(crate) fn check_gemm(x: &DeviceBuffer, w: &DeviceBuffer, w_offset: usize, y: &DeviceBuffer, rows: usize, n: usize, k: usize) -> Result<()> {
    let bytes = |a: usize, b: usize, e: usize| a.checked_mul(b).and_then(|v| v.checked_mul(e)).ok_or_else(|| DeviceError::BadOperands(format!("a {a} x {b} GEMM operand overflows")));
    let (xb, wb, yb) = (bytes(rows, k, 2)?, bytes(n, k, 2)?, bytes(rows, n, 4)?);
    x.check(0, xb)?;
    w.check(w_offset, wb)?;
    y.check(0, yb)?;
    if w_offset % 2 != 0 {
        return Err(DeviceError::BadOperands(format!("GEMM weights at odd byte offset {w_offset}")));
    }
    let apart = |a: u64, al: usize, b: u64, bl: usize| a + al as u64 <= b || b + bl as u64 <= a;
    if !apart(y.ptr, yb, x.ptr, xb) || !apart(y.ptr, yb, w.ptr + w_offset as u64, wb) {
        return Err(DeviceError::BadOperands("GEMM output overlaps an input".into()));
    }
    Ok(())
}

/// Typed helpers over the byte-level trait.
pub trait DeviceExt: Device {
    fn upload_slice<T: pod::Pod>(&self, data: &[T]) -> Result<DeviceBuffer> {
        let buf = self.alloc(std::mem::size_of_val(data))?;
        self.upload(&buf, 0, pod::bytes(data))?;
        Ok(buf)
    }

    fn download_vec<T: pod::Pod + Default + Clone>(&self, src: &DeviceBuffer, offset: usize, n: usize) -> Result<Vec<T>> {
        let mut out = vec![T::default(); n];
        self.download(src, offset, pod::bytes_mut(&mut out))?;
        Ok(out)
    }
}

impl<D: Device + ?Sized> DeviceExt for D {}

/// Plain-old-data views without a dependency: the element types the CUDA
/// path moves (f32, i32, u64, u16/bf16, u8) have no padding and any bit
/// pattern is valid.
pub mod pod {
    /// # Safety
    /// Implemented only for types without padding for which every bit
    /// pattern is a valid value.
    pub unsafe trait Pod: Copy + 'static {}
    unsafe impl Pod for f32 {}
    unsafe impl Pod for i32 {}
    unsafe impl Pod for u32 {}
    unsafe impl Pod for u64 {}
    unsafe impl Pod for u16 {}
    unsafe impl Pod for u8 {}
    unsafe impl Pod for half::bf16 {}

    pub fn bytes<T: Pod>(s: &[T]) -> &[u8] {
        // SAFETY: Pod types have no padding.
        unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), std::mem::size_of_val(s)) }
    }

    pub fn bytes_mut<T: Pod>(s: &mut [T]) -> &mut [u8] {
        // SAFETY: Pod types have no padding and accept any bytes.
        unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), std::mem::size_of_val(s)) }
    }
}

/// The interpreted device: host memory, kernels run by [`interp`]. Its
/// capacity is a budget, so out-of-memory paths can be tested.
pub struct InterpDevice {
    capacity: usize,
    used: Arc<AtomicUsize>,
}

/// Frees its share of the interpreted device's budget when dropped.
struct InterpAlloc {
    _mem: Vec<u128>,
    bytes: usize,
    used: Arc<AtomicUsize>,
}

impl Drop for InterpAlloc {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl InterpDevice {
    pub fn new(capacity: usize) -> InterpDevice {
        InterpDevice { capacity, used: Arc::new(AtomicUsize::new(0)) }
    }

    /// Takes `bytes` of the budget, or says how much is left.
    fn reserve(&self, bytes: usize) -> Result<()> {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed);
        if used + bytes > self.capacity {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return Err(DeviceError::OutOfMemory { requested: bytes, free: self.capacity.saturating_sub(used), total: self.capacity });
        }
        Ok(())
    }
}

impl Device for InterpDevice {
    fn name(&self) -> String {
        "interpreted CUDA (AERIE_CUDA_INTERPRET)".into()
    }

    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        self.reserve(bytes)?;
        // u128 words: 16-byte alignment, as cudaMalloc's (at least 256) covers
        // every vector load a kernel may make.
        let mem = vec![0u128; bytes.div_ceil(16).max(1)];
        let ptr = mem.as_ptr() as usize as u64;
        Ok(DeviceBuffer { ptr, len: bytes, _owner: Box::new(InterpAlloc { _mem: mem, bytes, used: self.used.clone() }) })
    }

    fn upload(&self, dst: &DeviceBuffer, offset: usize, src: &[u8]) -> Result<()> {
        dst.check(offset, src.len())?;
        // SAFETY: checked to lie inside the allocation, which `dst` keeps alive.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), (dst.ptr as usize + offset) as *mut u8, src.len()) };
        Ok(())
    }

    fn download(&self, src: &DeviceBuffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        src.check(offset, dst.len())?;
        // SAFETY: as in upload.
        unsafe { std::ptr::copy_nonoverlapping((src.ptr as usize + offset) as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn copy(&self, src: &DeviceBuffer, src_offset: usize, dst: &DeviceBuffer, dst_offset: usize, len: usize) -> Result<()> {
        src.check(src_offset, len)?;
        dst.check(dst_offset, len)?;
        // SAFETY: both ranges checked; `copy` allows overlap.
        unsafe { std::ptr::copy((src.ptr as usize + src_offset) as *const u8, (dst.ptr as usize + dst_offset) as *mut u8, len) };
        Ok(())
    }

    unsafe fn launch(&self, kernel: &str, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        // SAFETY: forwarded from the caller.
        Ok(unsafe { interp::launch(kernel, cfg, args) }?)
    }

    fn memory(&self) -> (usize, usize) {
        (self.used.load(Ordering::Relaxed), self.capacity)
    }

    fn uuid(&self) -> String {
        super::interp_ipc::uuid()
    }

    fn alloc_exportable(&self, bytes: usize) -> Result<(DeviceBuffer, IpcHandle)> {
        self.reserve(bytes)?;
        super::interp_ipc::export(bytes, self.used.clone()).inspect_err(|_| {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
        })
    }

    fn open_ipc(&self, handle: &IpcHandle) -> Result<DeviceBuffer> {
        super::interp_ipc::open(handle)
    }

    /// The interpreter's stand-in for cuBLAS: the reference GEMM
    /// ([`crate::cuda::reference::gemm_bf16`]), same inputs, same outputs.
    fn gemm_bf16(&self, x: &DeviceBuffer, w: &DeviceBuffer, w_offset: usize, y: &DeviceBuffer, rows: usize, n: usize, k: usize) -> Result<()> {
        check_gemm(x, w, w_offset, y, rows, n, k)?;
        // SAFETY: check_gemm found the three ranges inside their
        // allocations (which the buffers keep alive), the weights 2-byte
        // aligned and y apart from x and w.
        unsafe {
            let xs = std::slice::from_raw_parts(x.ptr as usize as *const u16, rows * k);
            let ws = std::slice::from_raw_parts((w.ptr as usize + w_offset) as *const u16, n * k);
            let ys = std::slice::from_raw_parts_mut(y.ptr as usize as *mut f32, rows * n);
            crate::cuda::reference::gemm_bf16(xs, ws, ys, rows, n, k);
        }
        Ok(())
    }
}
