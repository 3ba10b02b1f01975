//! `--device cpu|cuda[:N]`: which device a command runs its model on.
//!
//! `cuda` with `AERIE_CUDA_INTERPRET=1` is the interpreted device (the CUDA
//! path on the CPU, for tests). Without it, a machine with no NVIDIA driver
//! gets a one-line error, never a panic (cudarc panics on a call into a
//! library it cannot load, so the library is looked for first); with one, the
//! GPU through the driver API ([`DriverDevice`]).

use crate::error::{EngineError, Result};
use aerie_kernels::cuda::device::{Device, DeviceError, InterpDevice};
use aerie_kernels::cuda::driver::{driver_present, DriverDevice};
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

/// The device for `spec`: `None` for the CPU path.
pub fn open_device(spec: DeviceSpec) -> Result<Option<Arc<dyn Device>>> {
    match spec {
        DeviceSpec::Cpu => Ok(None),
        DeviceSpec::Cuda(_) if interpret_requested() => Ok(Some(Arc::new(InterpDevice::new(INTERPRETED_BYTES)))),
        DeviceSpec::Cuda(n) if !driver_present() => Err(EngineError::Device(DeviceError::Unavailable(format!(
            "--device cuda:{n}: no NVIDIA driver on this machine (libcuda.so.1 not found); use --device cpu, or AERIE_CUDA_INTERPRET=1 to run the CUDA path on the CPU"
        )))),
        DeviceSpec::Cuda(n) => match DriverDevice::open(n) {
            Ok(dev) => Ok(Some(Arc::new(dev))),
            Err(e) => Err(EngineError::Device(DeviceError::Unavailable(format!("--device cuda:{n}: {e}")))),
        },
    }
}
