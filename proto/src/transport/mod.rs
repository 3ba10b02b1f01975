//! Feature transport: how hidden features get from a target worker to its
//! draft worker.
//!
//! Strategy. gRPC carries control; features (one row of `width` f32 per
//! token, 2.3 KB per token for SmolLM2's EAGLE head) either ride inline in
//! the message, or, when both workers share a host, go through a
//! shared-memory ring that the target creates per session and the draft maps
//! read-only. Then the message carries only `(offset, len, crc32)`.
//!
//! The ring is written strictly ahead of what the draft has read. The draft
//! handles a session's messages in order, and every `Proposal` reports the
//! logical offset it has consumed up to, so space below that offset is free
//! again. A block that does not fit, or that is larger than the ring, goes
//! inline instead: nothing ever waits for ring space. A block never wraps; if
//! it would cross the end, the writer skips to the start.
//!
//! The reader trusts nothing: the slice must lie inside the ring, its length
//! must be `rows × width × 4`, and its CRC-32 must match, or the block is
//! rejected with a [`TransportError`].
//!
//! Lifetime. The ring's name exists only until the draft says it has mapped
//! it ([`ShmRingSender::unlink`] on the session's `ready`); from then on the
//! two mappings are all there is, and the kernel frees the memory when the
//! last process holding one exits, however it exits. The creator holds a
//! shared `flock` on the file for as long as it lives, so a name left behind
//! by a process killed in that short window is recognised by anyone as stale
//! (the lock is gone) and removed by [`sweep_stale_rings`] at a worker's start.
//!
//! Parameters: the ring size (the target's `--shm-ring-bytes`, default
//! [`DEFAULT_RING_BYTES`]). A CUDA IPC transport would implement the same two
//! traits with device buffers.

use crate::v1::{feature_payload::Data, FeaturePayload, ShmSlice};
use memmap2::{Mmap, MmapMut};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// 64 MiB: about 29,000 SmolLM2 feature rows, far more than one step moves.
pub const DEFAULT_RING_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("shared-memory ring {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("feature payload: {0}")]
    Malformed(String),
    #[error("feature payload names the shared-memory ring, but this session has none")]
    NoRing,
    #[error("feature slice {offset}+{len} is outside the {capacity}-byte ring")]
    OutOfBounds { offset: u64, len: u64, capacity: u64 },
    #[error("feature slice at {offset} fails its checksum (corrupt or overwritten)")]
    Checksum { offset: u64 },
}

impl TransportError {
    /// A stable label for metrics and logs.
    pub fn error_type(&self) -> &'static str {
        match self {
            TransportError::Io { .. } => "shm_io",
            TransportError::Malformed(_) => "bad_features",
            TransportError::NoRing => "no_ring",
            TransportError::OutOfBounds { .. } => "features_out_of_bounds",
            TransportError::Checksum { .. } => "features_checksum",
        }
    }
}

/// The target side: turns feature rows into a payload.
pub trait FeatureSender: Send + Sync {
    /// `inline` or `shm`, for metric labels.
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

/// Prefix of every ring file's name (then the creator's pid and a counter).
pub const RING_FILE_PREFIX: &str = "aerie-features-";

/// A ring in a `/dev/shm` file that this process created; its name is
/// removed once the draft has mapped it, or on drop.
pub struct ShmRingSender {
    path: PathBuf,
    capacity: u64,
    state: std::sync::Mutex<RingState>,
    consumed: AtomicU64,
    /// Holds the shared lock that marks the ring as owned by a live process.
    _file: File,
    unlinked: std::sync::atomic::AtomicBool,
}

struct RingState {
    map: MmapMut,
    /// Logical offset of the next write.
    head: u64,
}

impl ShmRingSender {
    /// Creates a ring of `capacity` bytes in `dir` (`/dev/shm` normally).
    pub fn create(dir: &Path, capacity: u64) -> Result<Arc<Self>, TransportError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{RING_FILE_PREFIX}{}-{n}", std::process::id()));
        let io = |source| TransportError::Io { path: path.clone(), source };
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(io)?;
        let setup = || -> std::io::Result<MmapMut> {
            file.lock_shared().map_err(|e| std::io::Error::other(format!("lock: {e}")))?;
            file.set_len(capacity)?;
            // SAFETY: the file is ours, sized above, and only this mapping writes it.
            unsafe { MmapMut::map_mut(&file) }
        };
        let map = match setup() {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(io(e));
            }
        };
        Ok(Arc::new(ShmRingSender {
            path,
            capacity,
            state: std::sync::Mutex::new(RingState { map, head: 0 }),
            consumed: AtomicU64::new(0),
            _file: file,
            unlinked: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of shared memory this ring holds.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Removes the ring's name; the mappings stay valid. Idempotent.
    pub fn unlink(&self) {
        if !self.unlinked.swap(true, Ordering::AcqRel) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ShmRingSender {
    fn drop(&mut self) {
        self.unlink();
    }
}

/// Removes ring files in `dir` whose creator is gone: no process holds the
/// creator's lock, and the file is older than `min_age` (so a ring being
/// created right now, before its lock is taken, is left alone). Returns the
/// names removed. Safe across containers sharing `dir`: the lock, not a
/// pid, says whether the owner lives.
pub fn sweep_stale_rings(dir: &Path, min_age: std::time::Duration) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return removed };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(RING_FILE_PREFIX) {
            continue;
        }
        let path = e.path();
        let old = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).is_some_and(|a| a >= min_age);
        if !old {
            continue;
        }
        let Ok(f) = File::open(&path) else { continue };
        if f.try_lock().is_ok() && std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

impl FeatureSender for ShmRingSender {
    fn name(&self) -> &'static str {
        "shm"
    }

    fn encode(&self, width: usize, data: &[f32]) -> (FeaturePayload, &'static str) {
        let len = (data.len() * 4) as u64;
        if len == 0 || len > self.capacity {
            return (inline_payload(width, data), "inline");
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut start = st.head;
        let pos = start % self.capacity;
        if pos + len > self.capacity {
            start += self.capacity - pos; // skip the tail: blocks never wrap
        }
        let end = start + len;
        // saturating: a peer reporting progress beyond `head` gains nothing.
        if end.saturating_sub(self.consumed.load(Ordering::Acquire)) > self.capacity {
            return (inline_payload(width, data), "inline");
        }
        let at = (start % self.capacity) as usize;
        let dst = &mut st.map[at..at + len as usize];
        for (chunk, v) in dst.chunks_exact_mut(4).zip(data) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        let crc32 = crc32fast::hash(dst);
        st.head = end;
        let rows = data.len().checked_div(width).unwrap_or(0);
        (FeaturePayload { rows: rows as u32, width: width as u32, data: Some(Data::Shm(ShmSlice { offset: start, len, crc32 })) }, "shm")
    }

    fn consumed(&self, upto: u64) {
        self.consumed.fetch_max(upto, Ordering::AcqRel);
    }

    fn ring(&self) -> Option<(String, u64)> {
        Some((self.path.to_string_lossy().into_owned(), self.capacity))
    }

    fn peer_mapped(&self) {
        self.unlink();
    }
}

/// The draft side: reads payloads, from the message or from the ring.
pub struct FeatureReceiver {
    ring: Option<(Mmap, u64)>,
    consumed: u64,
}

impl FeatureReceiver {
    /// A receiver for inline payloads only.
    pub fn inline_only() -> Self {
        FeatureReceiver { ring: None, consumed: 0 }
    }

    /// Maps the ring the target announced, read-only.
    pub fn open(path: &Path, capacity: u64) -> Result<Self, TransportError> {
        let io = |source| TransportError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        if capacity == 0 {
            return Err(TransportError::Malformed(format!("ring {} announced with capacity 0", path.display())));
        }
        let actual = file.metadata().map_err(io)?.len();
        if actual < capacity {
            return Err(TransportError::Malformed(format!("ring {} holds {actual} bytes, announced {capacity}", path.display())));
        }
        // SAFETY: mapped read-only; the writer never touches unconsumed
        // slices, and every slice is checksummed before use.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Ok(FeatureReceiver { ring: Some((map, capacity)), consumed: 0 })
    }

    /// Whether a ring is mapped.
    pub fn has_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// Bytes of shared memory mapped (0 without a ring).
    pub fn ring_bytes(&self) -> u64 {
        self.ring.as_ref().map_or(0, |r| r.1)
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
                let (map, capacity) = self.ring.as_ref().ok_or(TransportError::NoRing)?;
                let capacity = *capacity;
                if s.len != want {
                    return Err(TransportError::Malformed(format!("ring slice of {} bytes, {rows} × {width} × 4 = {want} expected", s.len)));
                }
                let at = s.offset % capacity;
                if s.len > capacity || at + s.len > capacity || (at + s.len) as usize > map.len() {
                    return Err(TransportError::OutOfBounds { offset: s.offset, len: s.len, capacity });
                }
                let bytes = &map[at as usize..(at + s.len) as usize];
                if crc32fast::hash(bytes) != s.crc32 {
                    return Err(TransportError::Checksum { offset: s.offset });
                }
                let out = floats(bytes);
                self.consumed = self.consumed.max(s.offset + s.len);
                Ok((width as usize, out, "shm"))
            }
        }
    }
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

    /// A ring of `capacity` bytes in a fresh directory and a receiver mapping it.
    fn ring_pair(capacity: u64) -> (tempfile::TempDir, Arc<ShmRingSender>, String, FeatureReceiver) {
        let dir = tempfile::tempdir().unwrap();
        let ring = ShmRingSender::create(dir.path(), capacity).unwrap();
        let (path, cap) = ring.ring().unwrap();
        let r = FeatureReceiver::open(Path::new(&path), cap).unwrap();
        (dir, ring, path, r)
    }

    fn rows(n: usize, width: usize, seed: f32) -> Vec<f32> {
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
    fn ring_round_trip_wraps_and_falls_back_when_full() {
        let (_dir, ring, _, mut r) = ring_pair(1000);
        // 3 blocks of 320 bytes fit; the 4th would overrun unread data.
        let mut sent = Vec::new();
        for i in 0..3 {
            let d = rows(10, 8, i as f32);
            let (p, via) = ring.encode(8, &d);
            assert_eq!(via, "shm");
            sent.push((p, d));
        }
        let (_, via) = ring.encode(8, &rows(10, 8, 9.0));
        assert_eq!(via, "inline", "no space until the draft reports progress");
        for (p, d) in &sent {
            assert_eq!(&r.decode(p).unwrap().1, d);
        }
        ring.consumed(r.consumed());
        // Now the next block skips the 40-byte tail and lands at offset 0.
        let d = rows(10, 8, 5.0);
        let (p, via) = ring.encode(8, &d);
        assert_eq!(via, "shm");
        match &p.data {
            Some(Data::Shm(s)) => assert_eq!(s.offset % 1000, 0),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.decode(&p).unwrap().1, d);
    }

    #[test]
    fn ring_rejects_corrupt_and_out_of_bounds_slices() {
        let (_dir, ring, path, mut r) = ring_pair(1024);
        let (p, _) = ring.encode(4, &rows(2, 4, 0.0));
        let Some(Data::Shm(s)) = p.data.clone() else { panic!() };
        let with = |s: ShmSlice, rows: u32| FeaturePayload { rows, width: 4, data: Some(Data::Shm(s)) };
        assert!(matches!(r.decode(&with(ShmSlice { crc32: s.crc32 ^ 1, ..s }, 2)), Err(TransportError::Checksum { .. })));
        assert!(matches!(r.decode(&with(ShmSlice { offset: 1000, ..s }, 2)), Err(TransportError::OutOfBounds { .. })));
        assert!(matches!(r.decode(&with(ShmSlice { len: 64 * 1024, ..s }, 4096)), Err(TransportError::OutOfBounds { .. })));
        assert!(matches!(r.decode(&with(ShmSlice { len: 16, ..s }, 2)), Err(TransportError::Malformed(_))));
        // An inline-only receiver refuses ring slices.
        assert!(matches!(FeatureReceiver::inline_only().decode(&p), Err(TransportError::NoRing)));
        // The genuine one still reads.
        assert_eq!(r.decode(&p).unwrap().1, rows(2, 4, 0.0));
        drop(ring);
        assert!(!Path::new(&path).exists(), "the ring file is removed with its sender");
    }

    #[test]
    fn an_unlinked_ring_still_carries_features() {
        let (_dir, ring, path, mut r) = ring_pair(4096);
        ring.unlink();
        assert!(!Path::new(&path).exists());
        let d = rows(4, 8, 2.0);
        let (p, via) = ring.encode(8, &d);
        assert_eq!(via, "shm");
        assert_eq!(r.decode(&p).unwrap().1, d);
        ring.unlink(); // idempotent
    }

    #[test]
    fn the_sweep_removes_rings_whose_owner_is_gone_and_keeps_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let live = ShmRingSender::create(dir.path(), 1024).unwrap();
        // A ring left by a killed process: the file without anyone's lock.
        let dead = dir.path().join(format!("{RING_FILE_PREFIX}999999-0"));
        std::fs::write(&dead, [0u8; 64]).unwrap();
        let other = dir.path().join("not-ours");
        std::fs::write(&other, b"x").unwrap();
        // Too young: left alone, it may be a ring being created.
        assert!(sweep_stale_rings(dir.path(), std::time::Duration::from_secs(3600)).is_empty());
        let removed = sweep_stale_rings(dir.path(), std::time::Duration::ZERO);
        assert_eq!(removed, vec![dead.clone()]);
        assert!(live.path().exists(), "a live owner's ring is kept");
        assert!(other.exists());
    }
}
