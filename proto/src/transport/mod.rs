//! Feature transport: how hidden features get from a target worker to its
//! draft worker. One seam, three implementations, one file each:
//!
//! - **inline** (here, [`InlineSender`]): the bytes ride in the gRPC
//!   message. Works across hosts.
//! - **shm** ([`shm`]): a shared-memory ring that the target creates per
//!   session and the draft maps read-only; the message carries only
//!   `(offset, len, crc32)`. Used when both workers share a host.
//! - **cuda-ipc** ([`cuda_ipc`]): the same ring protocol over device memory
//!   exported through a CUDA IPC handle. Used when both workers share a GPU
//!   (matched by UUID, never by ordinal).
//!
//! The ring protocol ([`RingCursor`]): the ring is written strictly ahead of
//! what the draft has read. The draft handles a session's messages in order,
//! and every `Proposal` reports the logical offset it has consumed up to, so
//! space below that offset is free again. A block that does not fit, or that
//! is larger than the ring, goes inline instead: nothing ever waits for ring
//! space. A block never wraps; if it would cross the end, the writer skips to
//! the start.
//!
//! The reader trusts nothing: the slice must lie inside the ring, its length
//! must be `rows × width × 4`, and its CRC-32 must match, or the block is
//! rejected with a [`TransportError`].
//!
//! Parameters: the ring size (the target's `--shm-ring-bytes`, default
//! [`DEFAULT_RING_BYTES`], for either ring).

use crate::v1::{feature_payload::Data, FeaturePayload, ShmSlice};

pub mod cuda_ipc;
pub mod shm;

pub use cuda_ipc::{CudaIpcSender, DeviceRingOffer};
pub use shm::{sweep_stale_files, sweep_stale_rings, ShmRingSender, RING_FILE_PREFIX};

/// 64 MiB: about 29,000 SmolLM2 feature rows, far more than one step moves.
pub const DEFAULT_RING_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("shared-memory ring {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("feature payload: {0}")]
    Malformed(String),
    #[error("feature payload names the shared-memory ring, but this session has none")]
    NoRing,
    #[error("feature payload names the device ring, but this session has none")]
    NoDeviceRing,
    #[error("feature slice {offset}+{len} is outside the {capacity}-byte ring")]
    OutOfBounds { offset: u64, len: u64, capacity: u64 },
    #[error("feature slice at {offset} fails its checksum (corrupt or overwritten)")]
    Checksum { offset: u64 },
    #[error("the device ring is on GPU {theirs}, this drafter on {ours}: CUDA IPC needs one GPU")]
    OtherDevice { ours: String, theirs: String },
    #[error("device ring: {0}")]
    Device(String),
}

impl TransportError {
    /// A stable label for metrics and logs.
    pub fn error_type(&self) -> &'static str {
        match self {
            TransportError::Io { .. } => "shm_io",
            TransportError::Malformed(_) => "bad_features",
            TransportError::NoRing => "no_ring",
            TransportError::NoDeviceRing => "no_device_ring",
            TransportError::OutOfBounds { .. } => "features_out_of_bounds",
            TransportError::Checksum { .. } => "features_checksum",
            TransportError::OtherDevice { .. } => "other_device",
            TransportError::Device(_) => "device_ring",
        }
    }
}

/// The target side: turns feature rows into a payload.
pub trait FeatureSender: Send + Sync {
    /// `inline`, `shm` or `cuda-ipc`, for metric labels.
    fn name(&self) -> &'static str;
    /// Encodes `data` (rows × `width` floats). Returns the payload and the
    /// transport that actually carried it (a full ring falls back to inline).
    fn encode(&self, width: usize, data: &[f32]) -> (FeaturePayload, &'static str);
    /// The draft has read everything below this logical offset.
    fn consumed(&self, _upto: u64) {}
    /// What the session's `SessionOpen` should announce: ring path and size.
    fn ring(&self) -> Option<(String, u64)> {
        None
    }
    /// What the session's `SessionOpen` should announce of a device ring.
    fn device_ring(&self) -> Option<DeviceRingOffer> {
        None
    }
    /// The draft has mapped the ring (or will never): its name can go.
    fn peer_mapped(&self) {}
}

fn f32_bytes(data: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 4);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn inline_payload(width: usize, data: &[f32]) -> FeaturePayload {
    let rows = data.len().checked_div(width).unwrap_or(0);
    FeaturePayload { rows: rows as u32, width: width as u32, data: Some(Data::Inline(f32_bytes(data))) }
}

/// Features as bytes inside the message: works across hosts.
#[derive(Debug, Default)]
pub struct InlineSender;

impl FeatureSender for InlineSender {
    fn name(&self) -> &'static str {
        "inline"
    }
    fn encode(&self, width: usize, data: &[f32]) -> (FeaturePayload, &'static str) {
        (inline_payload(width, data), "inline")
    }
}

/// The writer's side of the ring protocol, shared by both rings: where the
/// next block goes, or that it does not fit.
#[derive(Debug)]
pub(crate) struct RingCursor {
    capacity: u64,
    /// Logical offset of the next write.
    head: u64,
}

impl RingCursor {
    pub(crate) fn new(capacity: u64) -> RingCursor {
        RingCursor { capacity, head: 0 }
    }

    /// The logical offset for a block of `len` bytes when it fits ahead of
    /// what the reader has `consumed`; the block is then taken.
    pub(crate) fn reserve(&mut self, len: u64, consumed: u64) -> Option<u64> {
        if len == 0 || len > self.capacity {
            return None;
        }
        let mut start = self.head;
        let pos = start % self.capacity;
        if pos + len > self.capacity {
            start += self.capacity - pos; // skip the tail: blocks never wrap
        }
        let end = start + len;
        // saturating: a peer reporting progress beyond `head` gains nothing.
        if end.saturating_sub(consumed) > self.capacity {
            return None;
        }
        self.head = end;
        Some(start)
    }

    /// The byte position of a logical offset.
    pub(crate) fn position(&self, logical: u64) -> usize {
        (logical % self.capacity) as usize
    }
}

/// A mapped ring the reader reads slices from.
enum Ring {
    Host(memmap2::Mmap),
    Device(cuda_ipc::DeviceRing),
}

/// The draft side: reads payloads, from the message or from a ring.
pub struct FeatureReceiver {
    ring: Option<(Ring, u64)>,
    consumed: u64,
}

impl FeatureReceiver {
    /// A receiver for inline payloads only.
    pub fn inline_only() -> Self {
        FeatureReceiver { ring: None, consumed: 0 }
    }

    /// Whether a shared-memory ring is mapped.
    pub fn has_ring(&self) -> bool {
        matches!(self.ring, Some((Ring::Host(_), _)))
    }

    /// Whether a device ring is open.
    pub fn has_device_ring(&self) -> bool {
        matches!(self.ring, Some((Ring::Device(_), _)))
    }

    /// Bytes of shared memory mapped (0 without a shared-memory ring).
    pub fn ring_bytes(&self) -> u64 {
        match &self.ring {
            Some((Ring::Host(_), c)) => *c,
            _ => 0,
        }
    }

    /// Logical ring offset read so far (reported back in every proposal).
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The payload's `(width, floats)`, after every bounds and integrity check.
    /// Returns which transport carried it as well.
    pub fn decode(&mut self, p: &FeaturePayload) -> Result<(usize, Vec<f32>, &'static str), TransportError> {
        let (rows, width) = (p.rows as u64, p.width as u64);
        let want = rows.checked_mul(width).and_then(|n| n.checked_mul(4)).ok_or_else(|| TransportError::Malformed("rows × width overflows".into()))?;
        let floats = |bytes: &[u8]| bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<f32>>();
        match &p.data {
            None if want == 0 => Ok((width as usize, Vec::new(), "inline")),
            None => Err(TransportError::Malformed(format!("{rows} rows of width {width} announced but no data"))),
            Some(Data::Inline(bytes)) => {
                if bytes.len() as u64 != want {
                    return Err(TransportError::Malformed(format!("{} bytes inline, {rows} × {width} × 4 = {want} expected", bytes.len())));
                }
                Ok((width as usize, floats(bytes), "inline"))
            }
            Some(Data::Shm(s)) => {
                let Some((Ring::Host(map), capacity)) = &self.ring else { return Err(TransportError::NoRing) };
                let at = check_slice(s, want, *capacity, map.len() as u64, rows, width)?;
                let bytes = &map[at..at + s.len as usize];
                verify(bytes, s)?;
                let out = floats(bytes);
                self.consumed = self.consumed.max(s.offset.saturating_add(s.len));
                Ok((width as usize, out, "shm"))
            }
            Some(Data::Device(s)) => {
                let Some((Ring::Device(ring), capacity)) = &self.ring else { return Err(TransportError::NoDeviceRing) };
                let at = check_slice(s, want, *capacity, ring.len(), rows, width)?;
                let bytes = ring.read(at, s.len as usize)?;
                verify(&bytes, s)?;
                let out = floats(&bytes);
                self.consumed = self.consumed.max(s.offset.saturating_add(s.len));
                Ok((width as usize, out, "cuda-ipc"))
            }
        }
    }
}

/// The byte position of a ring slice, once its length and bounds hold.
fn check_slice(s: &ShmSlice, want: u64, capacity: u64, mapped: u64, rows: u64, width: u64) -> Result<usize, TransportError> {
    if s.len != want {
        return Err(TransportError::Malformed(format!("ring slice of {} bytes, {rows} × {width} × 4 = {want} expected", s.len)));
    }
    let at = s.offset % capacity;
    if s.len > capacity || at + s.len > capacity || at + s.len > mapped {
        return Err(TransportError::OutOfBounds { offset: s.offset, len: s.len, capacity });
    }
    Ok(at as usize)
}

fn verify(bytes: &[u8], s: &ShmSlice) -> Result<(), TransportError> {
    if crc32fast::hash(bytes) != s.crc32 {
        return Err(TransportError::Checksum { offset: s.offset });
    }
    Ok(())
}

/// This host's identity: the hostname plus the kernel's boot id, so two
/// containers with the same hostname on different machines differ.
pub fn host_id() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!("{}/{}", hostname(), boot.trim())
}

/// This machine's hostname (empty when it cannot be read).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string()
}


#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn rows(n: usize, width: usize, seed: f32) -> Vec<f32> {
        (0..n * width).map(|i| seed + i as f32 * 0.5).collect()
    }

    #[test]
    fn inline_round_trip_and_length_check() {
        let data = rows(3, 4, 1.0);
        let (p, via) = InlineSender.encode(4, &data);
        assert_eq!(via, "inline");
        let mut r = FeatureReceiver::inline_only();
        let (w, got, _) = r.decode(&p).unwrap();
        assert_eq!((w, got), (4, data));
        let mut bad = p.clone();
        bad.rows = 4;
        assert!(matches!(r.decode(&bad), Err(TransportError::Malformed(_))));
        let mut huge = p;
        huge.rows = u32::MAX;
        huge.width = u32::MAX;
        assert!(r.decode(&huge).is_err());
    }

    #[test]
    fn the_cursor_skips_the_tail_and_never_overruns_the_reader() {
        let mut c = RingCursor::new(1000);
        assert_eq!(c.reserve(320, 0), Some(0));
        assert_eq!(c.reserve(320, 0), Some(320));
        assert_eq!(c.reserve(320, 0), Some(640));
        assert_eq!(c.reserve(320, 0), None, "the 4th block would overrun unread data");
        assert_eq!(c.reserve(320, 960), Some(1000), "skips the 40-byte tail");
        assert_eq!(c.position(1000), 0);
        assert_eq!(c.reserve(1001, u64::MAX), None, "larger than the ring");
        assert_eq!(c.reserve(0, 0), None);
    }
}
