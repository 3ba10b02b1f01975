//! Shared helpers for tests that run the real SmolLM2 model.
#![allow(dead_code)]

use aerie_engine::{DType, Engine};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The default model, fetched into the model cache on first use.
pub fn smollm2() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::load("smollm2", DType::Auto).expect("load smollm2"))
}

pub fn smollm2_f32() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::load("smollm2", DType::F32).expect("load smollm2 f32"))
}

pub fn oracle(name: &str) -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/oracle").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The device the CUDA-path tests run on: the interpreter (`interp_bytes`
/// of budget), or GPU N when `AERIE_TEST_DEVICE=cuda[:N]`, which is how
/// `scripts/gpu_check.sh` runs these same tests on a real GPU. One GPU device
/// per process: opening one compiles and loads every kernel.
pub fn test_device(interp_bytes: usize) -> std::sync::Arc<dyn aerie_kernels::cuda::device::Device> {
    use aerie_engine::cuda::select::DeviceSpec;
    use aerie_kernels::cuda::{device::InterpDevice, driver::DriverDevice};
    static GPU: OnceLock<std::sync::Arc<DriverDevice>> = OnceLock::new();
    match std::env::var("AERIE_TEST_DEVICE").ok().map(|v| v.parse::<DeviceSpec>()) {
        Some(Ok(DeviceSpec::Cuda(n))) => GPU.get_or_init(|| std::sync::Arc::new(DriverDevice::open(n).unwrap_or_else(|e| panic!("AERIE_TEST_DEVICE: {e}")))).clone(),
        Some(Err(e)) => panic!("AERIE_TEST_DEVICE: {e}"),
        _ => std::sync::Arc::new(InterpDevice::new(interp_bytes)),
    }
}
