//! The CUDA IPC feature ring: the shared-memory ring's protocol over device
//! memory, for a draft worker on the same GPU as its target.
//!
//! Strategy. The target allocates the ring with `cuMemAlloc` (the
//! stream-ordered pool's memory cannot be exported) through
//! [`Device::alloc_exportable`] and announces its `CUipcMemHandle`, its size
//! and the GPU's UUID in `SessionOpen`. A draft on a GPU with the same UUID
//! opens it ([`FeatureReceiver::open_device`]); any other answer (another
//! GPU, no GPU, a handle the driver refuses, an allocation smaller than
//! announced) is an error at open, and the target then falls back to
//! shared memory or inline bytes for the whole session. Blocks are placed
//! by the same [`RingCursor`] and carry the same `(offset, len, crc32)`, so
//! the reader checks bounds and the checksum before using a byte, exactly as
//! for the shared-memory ring.
//!
//! Ordering. The sender synchronizes its device after writing a block and
//! before the message leaves, so the draft's stream, ordered after the
//! message, sees the block.
//!
//! Not yet: the features still pass through host memory on both sides (the
//! engine hands host rows to the proposer seam, and the draft head reads host
//! rows), so the hand-off is staged `host → ring → host`; the ring is the
//! place where device-resident features will meet without a copy.
//!
//! On the interpreted device (`AERIE_CUDA_INTERPRET=1`) the exported memory
//! is a shared-memory file, so two real processes exercise this path in CI.

use super::{inline_payload, FeatureReceiver, FeatureSender, Ring, RingCursor, TransportError};
use crate::v1::{feature_payload::Data, FeaturePayload, ShmSlice};
use aerie_kernels::cuda::device::{Device, DeviceBuffer, IpcHandle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What `SessionOpen` announces of a device ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRingOffer {
    /// The `CUipcMemHandle`'s 64 bytes.
    pub handle: Vec<u8>,
    pub capacity: u64,
    /// The GPU's UUID.
    pub uuid: String,
}

/// A ring in exported device memory that this process allocated.
pub struct CudaIpcSender {
    device: Arc<dyn Device>,
    buf: DeviceBuffer,
    offer: DeviceRingOffer,
    cursor: Mutex<RingCursor>,
    consumed: AtomicU64,
}

impl CudaIpcSender {
    /// Allocates and exports a ring of `capacity` bytes on `device`.
    pub fn create(device: Arc<dyn Device>, capacity: u64) -> Result<Arc<Self>, TransportError> {
        if capacity == 0 {
            return Err(TransportError::Malformed("a device ring of 0 bytes".into()));
        }
        let (buf, handle) = device.alloc_exportable(capacity as usize).map_err(|e| TransportError::Device(format!("export: {e}")))?;
        let offer = DeviceRingOffer { handle: handle.bytes, capacity, uuid: device.uuid() };
        Ok(Arc::new(CudaIpcSender { device, buf, offer, cursor: Mutex::new(RingCursor::new(capacity)), consumed: AtomicU64::new(0) }))
    }
}

impl FeatureSender for CudaIpcSender {
    fn name(&self) -> &'static str {
        "cuda-ipc"
    }

    fn encode(&self, width: usize, data: &[f32]) -> (FeaturePayload, &'static str) {
        let bytes = super::f32_bytes(data);
        let len = bytes.len() as u64;
        let mut cursor = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let Some(start) = cursor.reserve(len, self.consumed.load(Ordering::Acquire)) else {
            return (inline_payload(width, data), "inline");
        };
        let at = cursor.position(start);
        if let Err(e) = self.device.upload(&self.buf, at, &bytes).and_then(|_| self.device.synchronize()) {
            // The reserved space stays unused; the reader never names it.
            tracing::warn!("cuda-ipc feature ring: a write failed ({e}); this block goes inline");
            return (inline_payload(width, data), "inline");
        }
        let crc32 = crc32fast::hash(&bytes);
        let rows = data.len().checked_div(width).unwrap_or(0);
        (FeaturePayload { rows: rows as u32, width: width as u32, data: Some(Data::Device(ShmSlice { offset: start, len, crc32 })) }, "cuda-ipc")
    }

    fn consumed(&self, upto: u64) {
        self.consumed.fetch_max(upto, Ordering::AcqRel);
    }

    fn device_ring(&self) -> Option<DeviceRingOffer> {
        Some(self.offer.clone())
    }
}

/// The reader's view of a device ring: the mapping and the device that reads it.
pub(super) struct DeviceRing {
    device: Arc<dyn Device>,
    buf: DeviceBuffer,
}

impl DeviceRing {
    pub(super) fn len(&self) -> u64 {
        self.buf.len() as u64
    }

    /// `len` bytes from byte `at` (checked against the ring by the caller,
    /// and by the device against the mapping).
    pub(super) fn read(&self, at: usize, len: usize) -> Result<Vec<u8>, TransportError> {
        let mut out = vec![0u8; len];
        self.device.download(&self.buf, at, &mut out).map_err(|e| TransportError::Device(format!("read: {e}")))?;
        Ok(out)
    }
}

impl FeatureReceiver {
    /// Opens the device ring a target announced, on this drafter's `device`.
    pub fn open_device(device: Arc<dyn Device>, offer: &DeviceRingOffer) -> Result<Self, TransportError> {
        let ours = device.uuid();
        if offer.uuid != ours {
            return Err(TransportError::OtherDevice { ours, theirs: offer.uuid.clone() });
        }
        if offer.capacity == 0 {
            return Err(TransportError::Malformed("device ring announced with capacity 0".into()));
        }
        let handle = IpcHandle { bytes: offer.handle.clone(), len: offer.capacity };
        let buf = device.open_ipc(&handle).map_err(|e| TransportError::Device(format!("open: {e}")))?;
        Ok(FeatureReceiver { ring: Some((Ring::Device(DeviceRing { device, buf }), offer.capacity)), consumed: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tests::rows;
    use aerie_kernels::cuda::device::InterpDevice;

    fn device() -> Arc<dyn Device> {
        Arc::new(InterpDevice::new(1 << 30))
    }

    /// A ring and a receiver that opened it (in one process; the launcher's
    /// tests run the two ends in two).
    fn pair(capacity: u64) -> (Arc<CudaIpcSender>, FeatureReceiver) {
        let ring = CudaIpcSender::create(device(), capacity).unwrap();
        let r = FeatureReceiver::open_device(device(), &ring.device_ring().unwrap()).unwrap();
        (ring, r)
    }

    #[test]
    fn device_ring_round_trip_wraps_and_falls_back_when_full() {
        let (ring, mut r) = pair(1000);
        assert!(r.has_device_ring() && !r.has_ring());
        let mut sent = Vec::new();
        for i in 0..3 {
            let d = rows(10, 8, i as f32);
            let (p, via) = ring.encode(8, &d);
            assert_eq!(via, "cuda-ipc");
            sent.push((p, d));
        }
        let (_, via) = ring.encode(8, &rows(10, 8, 9.0));
        assert_eq!(via, "inline", "no space until the draft reports progress");
        for (p, d) in &sent {
            let (w, got, via) = r.decode(p).unwrap();
            assert_eq!((w, &got, via), (8, d, "cuda-ipc"));
        }
        ring.consumed(r.consumed());
        let d = rows(10, 8, 5.0);
        let (p, via) = ring.encode(8, &d);
        assert_eq!(via, "cuda-ipc");
        let Some(Data::Device(s)) = &p.data else { panic!("{p:?}") };
        assert_eq!(s.offset % 1000, 0, "the block skipped the tail");
        assert_eq!(r.decode(&p).unwrap().1, d);
    }

    #[test]
    fn device_ring_rejects_corrupt_and_out_of_bounds_slices() {
        let (ring, mut r) = pair(1024);
        let (p, _) = ring.encode(4, &rows(2, 4, 0.0));
        let Some(Data::Device(s)) = p.data.clone() else { panic!() };
        let with = |s: ShmSlice, rows: u32| FeaturePayload { rows, width: 4, data: Some(Data::Device(s)) };
        assert!(matches!(r.decode(&with(ShmSlice { crc32: s.crc32 ^ 1, ..s }, 2)), Err(TransportError::Checksum { .. })));
        assert!(matches!(r.decode(&with(ShmSlice { offset: 1000, ..s }, 2)), Err(TransportError::OutOfBounds { .. })));
        assert!(matches!(r.decode(&with(ShmSlice { len: 64 * 1024, ..s }, 4096)), Err(TransportError::OutOfBounds { .. })));
        assert!(matches!(r.decode(&with(ShmSlice { len: 16, ..s }, 2)), Err(TransportError::Malformed(_))));
        // A slice that names the other kind of ring is refused.
        let shm = FeaturePayload { rows: 2, width: 4, data: Some(Data::Shm(s)) };
        assert!(matches!(r.decode(&shm), Err(TransportError::NoRing)));
        assert!(matches!(FeatureReceiver::inline_only().decode(&p), Err(TransportError::NoDeviceRing)));
        // Bytes overwritten behind the reader's back fail the checksum.
        ring.device.upload(&ring.buf, 0, &[0xff; 4]).unwrap();
        assert!(matches!(r.decode(&p), Err(TransportError::Checksum { .. })));
    }

    #[test]
    fn a_bad_handle_another_gpu_or_an_oversized_claim_is_refused_at_open() {
        let ring = CudaIpcSender::create(device(), 4096).unwrap();
        let good = ring.device_ring().unwrap();
        let open = |o: &DeviceRingOffer| FeatureReceiver::open_device(device(), o).err().map(|e| e.error_type());
        assert_eq!(open(&DeviceRingOffer { uuid: "GPU-00000000-0000-0000-0000-000000000000".into(), ..good.clone() }), Some("other_device"));
        assert_eq!(open(&DeviceRingOffer { capacity: 0, ..good.clone() }), Some("bad_features"));
        assert_eq!(open(&DeviceRingOffer { capacity: 1 << 20, ..good.clone() }), Some("device_ring"), "claims more than the allocation holds");
        let mut garbled = good.clone();
        garbled.handle[3] ^= 0x40;
        assert_eq!(open(&garbled), Some("device_ring"), "a corrupt handle");
        let mut escape = good.clone();
        let name = b"aerie-cuda-ipc-../../etc/passwd";
        escape.handle[8..8 + name.len()].copy_from_slice(name);
        assert_eq!(open(&escape), Some("device_ring"), "a handle naming a path outside the namespace");
        assert_eq!(open(&DeviceRingOffer { handle: vec![0; 12], ..good.clone() }), Some("device_ring"), "a short handle");
        // The genuine handle still opens, once.
        assert!(open(&good).is_none());
        assert_eq!(open(&good), Some("device_ring"), "a handle opens once");
    }

    #[test]
    fn the_exported_name_goes_with_its_ring_or_its_first_reader() {
        let path_of = |ring: &CudaIpcSender| {
            let h = ring.device_ring().unwrap().handle;
            let end = h[8..].iter().position(|&b| b == 0).unwrap() + 8;
            std::path::Path::new(aerie_kernels::cuda::interp_ipc::IPC_DIR).join(std::str::from_utf8(&h[8..end]).unwrap())
        };
        let ring = CudaIpcSender::create(device(), 4096).unwrap();
        let path = path_of(&ring);
        assert!(path.exists());
        drop(ring);
        assert!(!path.exists(), "removed with its ring");
        let (ring, mut r) = pair(4096);
        assert!(!path_of(&ring).exists(), "removed once the reader mapped it");
        let d = rows(3, 4, 1.0);
        let (p, _) = ring.encode(4, &d);
        assert_eq!(r.decode(&p).unwrap().1, d, "the mappings outlive the name");
    }
}
