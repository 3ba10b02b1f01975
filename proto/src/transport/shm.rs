//! The shared-memory feature ring: one `/dev/shm` file per session, written
//! by the target and mapped read-only by a draft worker on the same host.
//!
//! Lifetime. The ring's name exists only until the draft says it has mapped
//! it ([`ShmRingSender::unlink`] on the session's `ready`); from then on the
//! two mappings are all there is, and the kernel frees the memory when the
//! last process holding one exits, however it exits. The creator holds a
//! shared `flock` on the file for as long as it lives, so a name left behind
//! by a process killed in that short window is recognised by anyone as stale
//! (the lock is gone) and removed by [`sweep_stale_rings`] at a worker's start.

use super::{inline_payload, FeatureReceiver, FeatureSender, Ring, RingCursor, TransportError};
use crate::v1::{feature_payload::Data, FeaturePayload, ShmSlice};
use memmap2::{Mmap, MmapMut};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    cursor: RingCursor,
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
            state: std::sync::Mutex::new(RingState { map, cursor: RingCursor::new(capacity) }),
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
    sweep_stale_files(dir, RING_FILE_PREFIX, min_age)
}

/// [`sweep_stale_rings`] for any files named `prefix…` whose creator holds a
/// shared lock for as long as it lives (the interpreted device's CUDA IPC
/// allocations too).
pub fn sweep_stale_files(dir: &Path, prefix: &str, min_age: std::time::Duration) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return removed };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
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
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(start) = st.cursor.reserve(len, self.consumed.load(Ordering::Acquire)) else {
            return (inline_payload(width, data), "inline");
        };
        let at = st.cursor.position(start);
        let dst = &mut st.map[at..at + len as usize];
        for (chunk, v) in dst.chunks_exact_mut(4).zip(data) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        let crc32 = crc32fast::hash(dst);
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

impl FeatureReceiver {
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
        Ok(FeatureReceiver { ring: Some((Ring::Host(map), capacity)), consumed: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tests::rows;

    /// A ring of `capacity` bytes in a fresh directory and a receiver mapping it.
    fn ring_pair(capacity: u64) -> (tempfile::TempDir, Arc<ShmRingSender>, String, FeatureReceiver) {
        let dir = tempfile::tempdir().unwrap();
        let ring = ShmRingSender::create(dir.path(), capacity).unwrap();
        let (path, cap) = ring.ring().unwrap();
        let r = FeatureReceiver::open(Path::new(&path), cap).unwrap();
        (dir, ring, path, r)
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
