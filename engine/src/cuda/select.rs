//! `--device cpu|cuda[:N]`: which device a command runs its model on.
//!
//! `cuda` with `AERIE_CUDA_INTERPRET=1` is the interpreted device (the CUDA
//! path on the CPU, for tests). Without it, a machine with no NVIDIA driver
//! gets a one-line error, never a panic (cudarc's context constructor panics
//! when libcuda is missing, so the library is looked for first).

use crate::error::{EngineError, Result};
use aerie_kernels::cuda::device::{Device, DeviceError, InterpDevice};
use std::path::Path;
use std::sync::Arc;

/// A parsed `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (expected cpu, cuda or cuda:N)")),
        }
    }
}

/// Whether `AERIE_CUDA_INTERPRET` asks for the interpreted device.
pub fn interpret_requested() -> bool {
    std::env::var("AERIE_CUDA_INTERPRET").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Host memory the interpreted device may hand out as "device memory".
const INTERPRETED_BYTES: usize = 16 << 30;

/// Where the NVIDIA driver library would be: the loader's path plus the
/// usual driver directories (containers mount it into one of these).
fn libcuda_present() -> bool {
    let mut dirs: Vec<String> = std::env::var("LD_LIBRARY_PATH").unwrap_or_default().split(':').filter(|d| !d.is_empty()).map(String::from).collect();
    dirs.extend(
        ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/nvidia/lib64", "/usr/local/cuda/compat", "/run/nvidia/driver/usr/lib/x86_64-linux-gnu"]
            .map(String::from),
    );
    dirs.iter().any(|d| Path::new(d).join("libcuda.so.1").exists())
}

/// The device for `spec`: `None` for the CPU path.
pub fn open_device(spec: DeviceSpec) -> Result<Option<Arc<dyn Device>>> {
    match spec {
        DeviceSpec::Cpu => Ok(None),
        DeviceSpec::Cuda(_) if interpret_requested() => Ok(Some(Arc::new(InterpDevice::new(INTERPRETED_BYTES)))),
        DeviceSpec::Cuda(n) if !libcuda_present() => Err(EngineError::Device(DeviceError::Unavailable(format!(
            "--device cuda:{n}: no NVIDIA driver on this machine (libcuda.so.1 not found); use --device cpu, or AERIE_CUDA_INTERPRET=1 to run the CUDA path on the CPU"
        )))),
        DeviceSpec::Cuda(n) => Err(EngineError::Device(DeviceError::Unavailable(format!(
            "--device cuda:{n}: this build runs the CUDA path only in the interpreter (AERIE_CUDA_INTERPRET=1); the GPU driver backend is not built yet"
        )))),
    }
}
