//! CUDA IPC on the interpreted device: "device memory" is host memory, so an
//! exported allocation is a shared-memory file, and its handle names it.
//!
//! Strategy. [`export`] creates `/dev/shm/aerie-cuda-ipc-<pid>-<n>`, sizes
//! and maps it, and holds a shared `flock` on it for as long as the buffer
//! lives (so a file left by a killed exporter is known stale by anyone:
//! [`IPC_FILE_PREFIX`] names are swept like the feature rings). The handle's
//! 64 bytes are a magic word and the file's name; [`open`] checks both, the
//! file's size against the length the handle claims, maps it and removes
//! the name: from then on the two mappings are all there is, and the kernel
//! frees the memory when the last holder exits, however it exits. So a handle
//! opens once, as a `CUipcMemHandle` does in one process.
//!
//! The device's UUID is `GPU-interp-<boot id>`: every process on one host
//! shares the one interpreted "GPU", as processes on a GPU node share a GPU.

use super::device::{DeviceBuffer, DeviceError, IpcHandle, Result, IPC_HANDLE_BYTES};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Prefix of every exported allocation's file name in [`IPC_DIR`].
pub const IPC_FILE_PREFIX: &str = "aerie-cuda-ipc-";

/// Where exported allocations live.
pub const IPC_DIR: &str = "/dev/shm";

const MAGIC: &[u8; 8] = b"AERIEIPC";

/// This host's interpreted device.
pub fn uuid() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!("GPU-interp-{}", boot.trim())
}

/// An exported allocation, as its exporter holds it.
struct Exported {
    _map: memmap2::MmapMut,
    path: PathBuf,
    /// Holds the shared lock that marks the file as owned by a live process.
    _file: File,
    bytes: usize,
    used: Arc<AtomicUsize>,
}

impl Drop for Exported {
    fn drop(&mut self) {
        // The importer usually removed the name already.
        let _ = std::fs::remove_file(&self.path);
        self.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> DeviceError + '_ {
    move |e| DeviceError::Driver(format!("interpreted CUDA IPC, {}: {e}", path.display()))
}

/// `bytes` of zeroed shared memory and its handle; `used` is the device's
/// budget, already charged by the caller and given back on drop.
pub(crate) fn export(bytes: usize, used: Arc<AtomicUsize>) -> Result<(DeviceBuffer, IpcHandle)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!("{IPC_FILE_PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let path = Path::new(IPC_DIR).join(&name);
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(io(&path))?;
    let setup = || -> std::io::Result<memmap2::MmapMut> {
        file.lock_shared().map_err(|e| std::io::Error::other(format!("lock: {e}")))?;
        file.set_len(bytes.max(1) as u64)?;
        // SAFETY: the file is ours and sized above; both processes access it
        // only through device copies, ordered by the transport's protocol.
        unsafe { memmap2::MmapMut::map_mut(&file) }
    };
    let map = match setup() {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(io(&path)(e));
        }
    };
    let ptr = map.as_ptr() as usize as u64;
    let mut handle = vec![0u8; IPC_HANDLE_BYTES];
    handle[..8].copy_from_slice(MAGIC);
    handle[8..8 + name.len()].copy_from_slice(name.as_bytes());
    let owner = Exported { _map: map, path, _file: file, bytes, used };
    Ok((DeviceBuffer::from_raw(ptr, bytes, Box::new(owner)), IpcHandle { bytes: handle, len: bytes as u64 }))
}

/// The file name a handle carries, when it is well formed.
fn name_of(handle: &IpcHandle) -> Result<String> {
    let bad = |why: &str| DeviceError::BadOperands(format!("IPC handle refused: {why}"));
    if handle.bytes.len() != IPC_HANDLE_BYTES {
        return Err(bad(&format!("{} bytes, a handle has {IPC_HANDLE_BYTES}", handle.bytes.len())));
    }
    if &handle.bytes[..8] != MAGIC {
        return Err(bad("not an interpreted-device handle (wrong magic)"));
    }
    let raw = &handle.bytes[8..];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    if raw[end..].iter().any(|&b| b != 0) {
        return Err(bad("bytes after the name"));
    }
    let name = std::str::from_utf8(&raw[..end]).map_err(|_| bad("a name that is not UTF-8"))?;
    let rest = name.strip_prefix(IPC_FILE_PREFIX).ok_or_else(|| bad("a name outside the IPC namespace"))?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return Err(bad("a malformed name"));
    }
    Ok(name.to_string())
}

/// An imported allocation: the mapping, unmapped on drop.
struct Imported {
    _map: memmap2::MmapMut,
}

/// Maps the allocation `handle` names and removes its name.
pub(crate) fn open(handle: &IpcHandle) -> Result<DeviceBuffer> {
    let name = name_of(handle)?;
    let path = Path::new(IPC_DIR).join(name);
    let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io(&path))?;
    let actual = file.metadata().map_err(io(&path))?.len();
    if handle.len == 0 || actual < handle.len {
        return Err(DeviceError::BadOperands(format!("IPC handle refused: it claims {} bytes, the allocation holds {actual}", handle.len)));
    }
    // SAFETY: a shared mapping of a file sized above; accessed only through
    // device copies with checked ranges.
    let map = unsafe { memmap2::MmapMut::map_mut(&file) }.map_err(io(&path))?;
    let _ = std::fs::remove_file(&path);
    let ptr = map.as_ptr() as usize as u64;
    Ok(DeviceBuffer::from_raw(ptr, handle.len as usize, Box::new(Imported { _map: map })))
}
