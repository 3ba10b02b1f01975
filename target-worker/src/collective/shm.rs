//! Collectives between processes on one host through one shared-memory
//! segment: the CPU backend of a tensor-parallel group.
//!
//! Strategy:
//! - **Formation.** Rank 0 creates `aerie-tp-<group>` in the segment
//!   directory (`/dev/shm`), writes the group's identity (world size, model
//!   fingerprint, Aerie version) and marks it ready; each other rank opens it,
//!   compares identities and either joins (writing its pid) or records why it
//!   refuses, which rank 0 reports. Once all have joined, rank 0 unlinks the
//!   name: the mappings stay valid and a group killed after forming leaves
//!   nothing behind (one killed while forming leaves its segment, which the
//!   next formation of that name replaces). A joiner takes only a ready
//!   segment that the name still points at and whose creator lives, and
//!   while it waits for the others it gives up at once on a refusal or on
//!   rank 0's death. Ranks must share a pid namespace (one pod), since
//!   liveness is read from `/proc`.
//! - **Barriers.** Each rank publishes the number of barriers it has reached
//!   in its own word; barrier `e` is complete when every word is at least
//!   `e`. A waiter spins briefly, then yields, then sleeps 50 µs (1 ms once
//!   it has waited 100 ms: an idle group's followers), and every
//!   10 ms checks that its peers' processes live (a zombie counts as gone)
//!   and, when the call has one, its stall timeout; the error names the
//!   ranks it was waiting for.
//! - **Data.** Each rank has a slot of `slot_bytes` in each of two slot
//!   sets, used alternately, so every collective needs one barrier: a rank
//!   can only reuse a set after the next barrier, which every rank reaches
//!   after reading that set. Larger buffers go in slot-sized chunks. Sums
//!   run in rank order on every rank, so results are bit-identical.
//!
//! Parameters: `slot_bytes` (default 4 MiB per rank and set), the stall
//! timeout (default 30 s, 5 s at most for a broadcast's root; a peer found
//! stopped in a bounded wait is a stall after 200 ms; the other ranks of a
//! `broadcast` take their own bound, so followers can wait for the next
//! step as long as rank 0 lives).

use super::{Collective, CollectiveError, GroupIdentity, Result};
use memmap2::MmapMut;
use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Name prefix of group segments.
pub const GROUP_FILE_PREFIX: &str = "aerie-tp-";
/// Most ranks in one group.
pub const MAX_RANKS: usize = 64;
/// Default bytes per rank per slot set.
pub const DEFAULT_SLOT_BYTES: usize = 4 << 20;
/// How long a wait naps 50 µs at a time before it naps 1 ms at a time.
const IDLE_AFTER: Duration = Duration::from_millis(100);
/// Default stall timeout of a collective: long enough for ranks whose
/// shares of a long prefill differ (uneven key/value head splits), since a
/// stopped peer is caught at once (`STOPPED_AFTER`) and a dead one at the
/// next liveness check.
pub const DEFAULT_STALL: Duration = Duration::from_secs(30);
/// How long a broadcast's root waits for the other ranks: they wait for it
/// between steps, so they are there unless something is wrong.
pub const ROOT_STALL: Duration = Duration::from_secs(5);
/// A peer stopped (SIGSTOP, a debugger) this long in a bounded wait is a
/// stall.
const STOPPED_AFTER: Duration = Duration::from_millis(200);

const MAGIC: u64 = 0x3150_5445_4952_4541; // "AERIETP1"
const HEADER: usize = 8192;
// Header offsets.
const H_MAGIC: usize = 0;
const H_WORLD: usize = 8;
const H_SLOT: usize = 16;
const H_JOINED: usize = 24;
const H_REFUSED: usize = 32;
const H_PIDS: usize = 64;
const H_ARRIVE: usize = H_PIDS + 8 * MAX_RANKS;
/// Text fields: a length word and up to `TEXT` bytes each.
const TEXT: usize = 248;
const H_MODEL: usize = H_ARRIVE + 8 * MAX_RANKS;
const H_VERSION: usize = H_MODEL + 8 + TEXT;
const H_REASON: usize = H_VERSION + 8 + TEXT;
const _: () = assert!(H_REASON + 8 + TEXT <= HEADER);

/// One rank's end of a shared-memory group.
pub struct ShmCollective {
    rank: usize,
    world: usize,
    slot_bytes: usize,
    map: MmapMut,
    path: PathBuf,
    unlinked: bool,
    /// Barriers this rank has reached.
    epoch: u64,
    pids: Vec<u32>,
    stall: Option<Duration>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CollectiveError + '_ {
    move |source| CollectiveError::Io { path: path.to_path_buf(), source }
}

/// Whether process `pid` runs (not gone, not a zombie).
/// A process's state letter (`R`, `S`, `T`, `Z`, …), `None` when it is gone.
fn state(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the parenthesized command name.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
}

fn alive(pid: u32) -> bool {
    state(pid).is_some_and(|s| s != "Z" && s != "X")
}

impl ShmCollective {
    /// The segment of group `group` in `dir`.
    pub fn segment_path(dir: &Path, group: &str) -> PathBuf {
        dir.join(format!("{GROUP_FILE_PREFIX}{group}"))
    }

    /// Rank 0: creates the group and waits (up to `join_timeout`) until
    /// every other rank has joined, then unlinks the segment's name.
    pub fn create(dir: &Path, group: &str, id: &GroupIdentity, slot_bytes: usize, join_timeout: Duration) -> Result<ShmCollective> {
        Self::create_watching(dir, group, id, slot_bytes, join_timeout, || None)
    }

    /// [`create`](Self::create), giving up as soon as `gone` names a reason
    /// (rank 0 watching the rank processes it started: one that exits
    /// before joining ends the formation at once rather than at the timeout).
    pub fn create_watching(dir: &Path, group: &str, id: &GroupIdentity, slot_bytes: usize, join_timeout: Duration, mut gone: impl FnMut() -> Option<String>) -> Result<ShmCollective> {
        if id.world == 0 || id.world > MAX_RANKS {
            return Err(CollectiveError::Misuse(format!("a group of {} ranks (1 to {MAX_RANKS})", id.world)));
        }
        let slot_bytes = slot_bytes.max(64).next_multiple_of(64);
        let path = Self::segment_path(dir, group);
        let _ = std::fs::remove_file(&path);
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(io(&path))?;
        let len = HEADER + 2 * id.world * slot_bytes;
        let setup = || -> std::io::Result<MmapMut> {
            file.set_len(len as u64)?;
            // SAFETY: a new file of `len` bytes; the group's ranks map it and
            // share it only through the protocol in this module.
            unsafe { MmapMut::map_mut(&file) }
        };
        let map = setup().map_err(|e| {
            let _ = std::fs::remove_file(&path);
            io(&path)(e)
        })?;
        let mut c = ShmCollective { rank: 0, world: id.world, slot_bytes, map, path, unlinked: false, epoch: 0, pids: vec![0; id.world], stall: Some(DEFAULT_STALL) };
        c.word(H_WORLD).store(id.world as u64, Ordering::Relaxed);
        c.word(H_SLOT).store(slot_bytes as u64, Ordering::Relaxed);
        c.write_text(H_MODEL, &id.model);
        c.write_text(H_VERSION, &id.version);
        c.word(H_PIDS).store(std::process::id() as u64, Ordering::Relaxed);
        c.word(H_MAGIC).store(MAGIC, Ordering::Release);
        let t = Instant::now();
        loop {
            let refused = c.word(H_REFUSED).load(Ordering::Acquire);
            if refused != 0 {
                return Err(CollectiveError::Refused { rank: refused as usize - 1, reason: c.read_text(H_REASON) });
            }
            let joined = c.word(H_JOINED).load(Ordering::Acquire) as usize;
            if joined + 1 >= id.world {
                break;
            }
            if let Some(why) = gone() {
                return Err(CollectiveError::FormationFailed(why));
            }
            if t.elapsed() > join_timeout {
                let missing: Vec<usize> = (1..id.world).filter(|&r| c.word(H_PIDS + 8 * r).load(Ordering::Acquire) == 0).collect();
                return Err(CollectiveError::FormationTimeout { after: join_timeout, detail: format!("rank(s) {missing:?} never joined") });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        c.unlink();
        c.load_pids();
        c.barrier()?;
        Ok(c)
    }

    /// Rank `rank` > 0: joins group `group`, waiting up to `timeout` for rank
    /// 0 to create it. A different world size, model or version is refused
    /// here and reported to rank 0.
    pub fn join(dir: &Path, group: &str, rank: usize, id: &GroupIdentity, timeout: Duration) -> Result<ShmCollective> {
        if rank == 0 || rank >= id.world.min(MAX_RANKS) {
            return Err(CollectiveError::Misuse(format!("rank {rank} of a group of {} ranks cannot join (rank 0 creates it)", id.world)));
        }
        let path = Self::segment_path(dir, group);
        let t = Instant::now();
        // A segment counts once it is ready, still the one the name points
        // at (rank 0 replaces a stale one by unlinking and re-creating), and
        // its creator lives: a dead formation's file is waited past.
        let map = loop {
            let opened = OpenOptions::new().read(true).write(true).open(&path).and_then(|f| {
                // SAFETY: the group's segment, shared only through this module's protocol.
                let m = unsafe { MmapMut::map_mut(&f) }?;
                Ok((m, f.metadata()?.ino()))
            });
            if let Ok((m, ino)) = opened {
                let word = |off: usize| {
                    // SAFETY: an aligned word of the header, read atomically.
                    unsafe { &*(m.as_ptr().add(off) as *const AtomicU64) }.load(Ordering::Acquire)
                };
                let current = std::fs::metadata(&path).is_ok_and(|md| md.ino() == ino);
                if m.len() >= HEADER && word(H_MAGIC) == MAGIC && current && alive(word(H_PIDS) as u32) {
                    break m;
                }
            }
            if t.elapsed() > timeout {
                return Err(CollectiveError::FormationTimeout { after: timeout, detail: format!("no group segment at {}", path.display()) });
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // SAFETY: aligned header words, written before the magic this
        // rank has seen (Acquire).
        let world = unsafe { &*(map.as_ptr().add(H_WORLD) as *const AtomicU64) }.load(Ordering::Relaxed) as usize;
        // SAFETY: as above.
        let slot_bytes = unsafe { &*(map.as_ptr().add(H_SLOT) as *const AtomicU64) }.load(Ordering::Relaxed) as usize;
        if world == 0 || world > MAX_RANKS {
            return Err(CollectiveError::Misuse(format!("group segment {} holds a world of {world}", path.display())));
        }
        let mut c = ShmCollective { rank, world, slot_bytes, map, path, unlinked: true, epoch: 0, pids: vec![0; world], stall: Some(DEFAULT_STALL) };
        if c.map.len() < HEADER + 2 * world * slot_bytes {
            return Err(CollectiveError::Misuse(format!("group segment {} is truncated", c.path.display())));
        }
        let (model, version) = (c.read_text(H_MODEL), c.read_text(H_VERSION));
        let mut diffs = Vec::new();
        if world != id.world {
            diffs.push(format!("tp size {} here, {world} in the group", id.world));
        }
        if model != truncate(&id.model) {
            diffs.push(format!("model {} here, {model} in the group", id.model));
        }
        if version != truncate(&id.version) {
            diffs.push(format!("Aerie {} here, {version} in the group", id.version));
        }
        if !diffs.is_empty() {
            let reason = diffs.join("; ");
            c.write_text(H_REASON, &reason);
            c.word(H_REFUSED).store(rank as u64 + 1, Ordering::Release);
            return Err(CollectiveError::Refused { rank, reason });
        }
        if let Err(other) = c.word(H_PIDS + 8 * rank).compare_exchange(0, std::process::id() as u64, Ordering::AcqRel, Ordering::Acquire) {
            let reason = format!("rank {rank} has already joined (pid {other})");
            c.write_text(H_REASON, &reason);
            c.word(H_REFUSED).store(rank as u64 + 1, Ordering::Release);
            return Err(CollectiveError::Refused { rank, reason });
        }
        c.word(H_JOINED).fetch_add(1, Ordering::AcqRel);
        // Every pid is written once all have joined; the formation barrier
        // below orders this rank after that.
        let wait_all = Instant::now();
        while (0..world).any(|r| c.word(H_PIDS + 8 * r).load(Ordering::Acquire) == 0) {
            let refused = c.word(H_REFUSED).load(Ordering::Acquire);
            if refused != 0 {
                return Err(CollectiveError::Refused { rank: refused as usize - 1, reason: c.read_text(H_REASON) });
            }
            let leader = c.word(H_PIDS).load(Ordering::Acquire) as u32;
            if !alive(leader) {
                return Err(CollectiveError::PeerGone { rank: 0, pid: leader });
            }
            if wait_all.elapsed() > timeout {
                return Err(CollectiveError::FormationTimeout { after: timeout, detail: "the other ranks never all joined".into() });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        c.load_pids();
        c.barrier()?;
        Ok(c)
    }

    /// How long a collective may wait for its peers (`None`: as long as they
    /// live). `broadcast` takes its own bound.
    pub fn set_stall_timeout(&mut self, stall: Option<Duration>) {
        self.stall = stall;
    }

    fn load_pids(&mut self) {
        for r in 0..self.world {
            self.pids[r] = self.word(H_PIDS + 8 * r).load(Ordering::Acquire) as u32;
        }
    }

    fn unlink(&mut self) {
        if !self.unlinked {
            let _ = std::fs::remove_file(&self.path);
            self.unlinked = true;
        }
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset % 8 == 0 && offset + 8 <= HEADER);
        // SAFETY: an aligned 8-byte word inside the header, which lives as
        // long as the mapping; other processes touch it only atomically.
        unsafe { &*(self.map.as_ptr().add(offset) as *const AtomicU64) }
    }

    fn write_text(&mut self, offset: usize, s: &str) {
        let b = truncate(s).into_bytes();
        self.map[offset..offset + 8].copy_from_slice(&(b.len() as u64).to_le_bytes());
        self.map[offset + 8..offset + 8 + b.len()].copy_from_slice(&b);
    }

    fn read_text(&self, offset: usize) -> String {
        let n = (u64::from_le_bytes(self.map[offset..offset + 8].try_into().unwrap_or_default()) as usize).min(TEXT);
        String::from_utf8_lossy(&self.map[offset + 8..offset + 8 + n]).into_owned()
    }

    fn slot(&self, set: usize, rank: usize) -> usize {
        HEADER + (set * self.world + rank) * self.slot_bytes
    }

    /// Waits until every rank has reached barrier `epoch`.
    fn wait_epoch(&self, epoch: u64, timeout: Option<Duration>) -> Result<()> {
        let arrived = |r: usize| self.word(H_ARRIVE + 8 * r).load(Ordering::Acquire) >= epoch;
        let t = Instant::now();
        let mut spins = 0u32;
        let mut next_check = Duration::from_millis(10);
        loop {
            if (0..self.world).all(arrived) {
                return Ok(());
            }
            spins = spins.saturating_add(1);
            if spins < 2_000 {
                std::hint::spin_loop();
            } else if spins < 4_000 {
                std::thread::yield_now();
            } else if t.elapsed() < IDLE_AFTER {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                // An idle group (followers waiting for the next step): 1 ms
                // naps cost ~1% of a core where 50 µs ones cost ~7%.
                std::thread::sleep(Duration::from_millis(1));
            }
            let waited = t.elapsed();
            if waited >= next_check {
                next_check = waited + Duration::from_millis(10);
                for r in (0..self.world).filter(|&r| !arrived(r)) {
                    match state(self.pids[r]).as_deref() {
                        None | Some("Z") | Some("X") => return Err(CollectiveError::PeerGone { rank: r, pid: self.pids[r] }),
                        Some("T") | Some("t") if timeout.is_some() && waited > STOPPED_AFTER => {
                            return Err(CollectiveError::Stalled { waiting_for: vec![r], after: waited });
                        }
                        _ => {}
                    }
                }
                if let Some(limit) = timeout {
                    if waited > limit {
                        return Err(CollectiveError::Stalled { waiting_for: (0..self.world).filter(|&r| !arrived(r)).collect(), after: limit });
                    }
                }
            }
        }
    }

    /// Arrives at the next barrier and waits for it.
    fn sync(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.epoch += 1;
        self.word(H_ARRIVE + 8 * self.rank).store(self.epoch, Ordering::Release);
        self.wait_epoch(self.epoch, timeout)
    }

    /// The slot set the next collective uses.
    fn set(&self) -> usize {
        (self.epoch % 2) as usize
    }

    fn put(&mut self, bytes: &[u8]) {
        let at = self.slot(self.set(), self.rank);
        self.map[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn f32s(&self, set: usize, rank: usize, n: usize) -> &[f32] {
        let at = self.slot(set, rank);
        // SAFETY: slots start 64-byte aligned inside the mapping and hold
        // `slot_bytes >= 4 n` bytes, written by their rank before the barrier
        // this read follows.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(at) as *const f32, n) }
    }
}

fn truncate(s: &str) -> String {
    let mut end = s.len().min(TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding; any byte view of it is valid.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

impl Collective for ShmCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        let cap = self.slot_bytes / 4;
        for chunk in buf.chunks_mut(cap) {
            let set = self.set();
            self.put(f32_bytes(chunk));
            self.sync(self.stall)?;
            let n = chunk.len();
            chunk.copy_from_slice(self.f32s(set, 0, n));
            for r in 1..self.world {
                for (x, y) in chunk.iter_mut().zip(self.f32s(set, r, n)) {
                    *x += y;
                }
            }
        }
        Ok(())
    }

    fn all_gather(&mut self, mine: &[f32], out: &mut [f32]) -> Result<()> {
        let n = mine.len();
        if out.len() != n * self.world {
            return Err(CollectiveError::Misuse(format!("all_gather of {n} floats from {} ranks into {}", self.world, out.len())));
        }
        let cap = self.slot_bytes / 4;
        let mut off = 0;
        while off < n {
            let len = (n - off).min(cap);
            let set = self.set();
            self.put(f32_bytes(&mine[off..off + len]));
            self.sync(self.stall)?;
            for r in 0..self.world {
                out[r * n + off..r * n + off + len].copy_from_slice(self.f32s(set, r, len));
            }
            off += len;
        }
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [u8], root: usize, wait: Option<Duration>) -> Result<()> {
        if root >= self.world {
            return Err(CollectiveError::Misuse(format!("broadcast from rank {root} of {}", self.world)));
        }
        let timeout = if self.rank == root { self.stall.map(|s| s.min(ROOT_STALL)) } else { wait };
        for chunk in buf.chunks_mut(self.slot_bytes) {
            let set = self.set();
            if self.rank == root {
                self.put(chunk);
            }
            self.sync(timeout)?;
            if self.rank != root {
                let at = self.slot(set, root);
                chunk.copy_from_slice(&self.map[at..at + chunk.len()]);
            }
        }
        Ok(())
    }

    fn barrier(&mut self) -> Result<()> {
        self.sync(self.stall)
    }
}

impl Drop for ShmCollective {
    fn drop(&mut self) {
        self.unlink();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(world: usize) -> GroupIdentity {
        GroupIdentity { world, model: "sha256:abc".into(), version: env!("CARGO_PKG_VERSION").into() }
    }

    fn group_name(tag: &str) -> String {
        format!("test-{tag}-{}", std::process::id())
    }

    /// Runs `f(rank, collective)` on `world` threads, one rank each.
    fn run_group<T: Send + 'static>(tag: &str, world: usize, slot: usize, f: impl Fn(usize, &mut ShmCollective) -> T + Send + Sync + 'static) -> Vec<T> {
        let dir = std::env::temp_dir();
        let g = group_name(tag);
        let f = std::sync::Arc::new(f);
        let handles: Vec<_> = (0..world)
            .map(|r| {
                let (dir, g, f) = (dir.clone(), g.clone(), f.clone());
                std::thread::spawn(move || {
                    let mut c = if r == 0 {
                        ShmCollective::create(&dir, &g, &id(world), slot, Duration::from_secs(10)).unwrap()
                    } else {
                        ShmCollective::join(&dir, &g, r, &id(world), Duration::from_secs(10)).unwrap()
                    };
                    f(r, &mut c)
                })
            })
            .collect();
        let out = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(!ShmCollective::segment_path(&dir, &g).exists(), "the segment is unlinked once formed");
        out
    }

    fn data(rank: usize, n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7 + rank * 13) % 101) as f32 * 0.37 - 11.0 + rank as f32 * 1e-3).collect()
    }

    #[test]
    fn collectives_give_every_rank_the_same_bits_across_chunks() {
        for world in [2, 3] {
            // 256-byte slots: a 1,000-float buffer crosses 16 chunks.
            let outs = run_group(&format!("ops{world}"), world, 256, move |r, c| {
                assert_eq!((c.rank(), c.world()), (r, world));
                let mut sum = data(r, 1000);
                c.all_reduce_sum(&mut sum).unwrap();
                let mut gathered = vec![0.0; 37 * world];
                c.all_gather(&data(r, 37), &mut gathered).unwrap();
                let mut plan = if r == 1 { (0..600u32).flat_map(|i| i.to_le_bytes()).collect() } else { vec![0u8; 2400] };
                c.broadcast(&mut plan, 1, None).unwrap();
                c.barrier().unwrap();
                (sum, gathered, plan)
            });
            let want_sum: Vec<f32> = (0..1000).map(|i| (0..world).map(|r| data(r, 1000)[i]).fold(None, |a: Option<f32>, x| Some(a.map_or(x, |a| a + x))).unwrap()).collect();
            let want_gather: Vec<f32> = (0..world).flat_map(|r| data(r, 37)).collect();
            let want_plan: Vec<u8> = (0..600u32).flat_map(|i| i.to_le_bytes()).collect();
            for (r, (sum, gathered, plan)) in outs.iter().enumerate() {
                assert_eq!(sum.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want_sum.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "world {world} rank {r}: sum in rank order");
                assert_eq!(gathered, &want_gather, "world {world} rank {r}: gather");
                assert_eq!(plan, &want_plan, "world {world} rank {r}: broadcast");
            }
        }
    }

    #[test]
    fn a_rank_with_another_model_or_size_is_refused_with_the_difference() {
        let dir = std::env::temp_dir();
        let g = group_name("refuse");
        let (d, g2) = (dir.clone(), g.clone());
        let leader = std::thread::spawn(move || ShmCollective::create(&d, &g2, &id(2), 4096, Duration::from_secs(10)).err().unwrap());
        let mut other = id(2);
        other.model = "sha256:def".into();
        other.version = "9.9.9".into();
        let err = ShmCollective::join(&dir, &g, 1, &other, Duration::from_secs(10)).err().unwrap();
        let msg = err.to_string();
        assert!(msg.contains("sha256:def") && msg.contains("sha256:abc") && msg.contains("9.9.9"), "{msg}");
        let lead = leader.join().unwrap();
        assert_eq!(lead.error_type(), "refused");
        assert!(lead.to_string().contains("rank 1") && lead.to_string().contains("sha256:def"), "{lead}");
        assert!(!ShmCollective::segment_path(&dir, &g).exists(), "a failed formation leaves no segment");
    }

    #[test]
    fn a_rank_that_never_arrives_is_a_stall_naming_it() {
        let outs = run_group("stall", 3, 4096, |r, c| {
            c.set_stall_timeout(Some(Duration::from_millis(300)));
            if r == 2 {
                std::thread::sleep(Duration::from_millis(1500));
                return None;
            }
            let t = Instant::now();
            let e = c.all_reduce_sum(&mut [1.0]).err().unwrap();
            Some((e.error_type(), e.to_string(), t.elapsed()))
        });
        for (kind, msg, took) in outs.into_iter().flatten() {
            assert_eq!(kind, "stalled");
            assert!(msg.contains("[2]"), "{msg}");
            assert!(took < Duration::from_millis(1000), "{took:?}");
        }
    }

    #[test]
    fn a_joiner_waits_past_a_dead_formations_segment() {
        let dir = std::env::temp_dir();
        let g = group_name("stale");
        // A segment a dead rank 0 left: ready, but its creator is gone.
        let path = ShmCollective::segment_path(&dir, &g);
        let mut stale = vec![0u8; HEADER + 2 * 2 * 4096];
        stale[H_MAGIC..H_MAGIC + 8].copy_from_slice(&MAGIC.to_le_bytes());
        stale[H_WORLD..H_WORLD + 8].copy_from_slice(&2u64.to_le_bytes());
        stale[H_SLOT..H_SLOT + 8].copy_from_slice(&4096u64.to_le_bytes());
        stale[H_PIDS..H_PIDS + 8].copy_from_slice(&(i32::MAX as u64).to_le_bytes());
        std::fs::write(&path, &stale).unwrap();
        let (d, g2) = (dir.clone(), g.clone());
        let joiner = std::thread::spawn(move || ShmCollective::join(&d, &g2, 1, &id(2), Duration::from_secs(10)).map(|mut c| c.barrier().is_ok()));
        std::thread::sleep(Duration::from_millis(300));
        let mut leader = ShmCollective::create(&dir, &g, &id(2), 4096, Duration::from_secs(10)).unwrap();
        leader.barrier().unwrap();
        assert!(joiner.join().unwrap().unwrap(), "the joiner formed the new group");
    }

    #[test]
    fn a_rank_taken_twice_is_refused() {
        let dir = std::env::temp_dir();
        let g = group_name("twice");
        let (d, g2) = (dir.clone(), g.clone());
        let leader = std::thread::spawn(move || ShmCollective::create(&d, &g2, &id(3), 4096, Duration::from_secs(10)).err());
        let (d, g3) = (dir.clone(), g.clone());
        let first = std::thread::spawn(move || ShmCollective::join(&d, &g3, 1, &id(3), Duration::from_secs(10)).err());
        std::thread::sleep(Duration::from_millis(300));
        let second = ShmCollective::join(&dir, &g, 1, &id(3), Duration::from_secs(10)).err().expect("a second rank 1 is refused");
        assert!(second.to_string().contains("already joined"), "{second}");
        let lead = leader.join().unwrap().expect("formation fails");
        assert!(lead.to_string().contains("already joined"), "{lead}");
        assert!(first.join().unwrap().is_some_and(|e| e.error_type() == "refused"), "the first joiner learns of the refusal too");
    }

    /// The other rank of `a_killed_rank_ends_the_collective_at_once`, run as
    /// its own process.
    #[test]
    #[ignore = "a child process of a_killed_rank_ends_the_collective_at_once"]
    fn child_rank() {
        let g = std::env::var("AERIE_TP_TEST_GROUP").expect("run by the parent test");
        let mut c = ShmCollective::join(&std::env::temp_dir(), &g, 1, &id(2), Duration::from_secs(10)).unwrap();
        let mut x = [2.0f32];
        c.all_reduce_sum(&mut x).unwrap();
        println!("CHILD SUM {}", x[0]);
        // Then wait to be killed in the middle of the next collective's wait
        // on the parent's side.
        std::thread::sleep(Duration::from_secs(60));
    }

    #[test]
    fn a_killed_rank_ends_the_collective_at_once() {
        let dir = std::env::temp_dir();
        let g = group_name("kill");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "collective::shm::tests::child_rank", "--nocapture"])
            .env("AERIE_TP_TEST_GROUP", &g)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut c = ShmCollective::create(&dir, &g, &id(2), 4096, Duration::from_secs(20)).unwrap();
        assert!(!ShmCollective::segment_path(&dir, &g).exists());
        let mut x = [1.0f32];
        c.all_reduce_sum(&mut x).unwrap();
        assert_eq!(x[0], 3.0);
        c.set_stall_timeout(None); // only the death ends this wait
        let pid = child.id();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            // SAFETY: signals a child of this process.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        });
        let t = Instant::now();
        let e = c.all_reduce_sum(&mut x).err().unwrap();
        let took = t.elapsed();
        assert!(matches!(e, CollectiveError::PeerGone { rank: 1, pid: p } if p == pid), "{e}");
        assert!(took < Duration::from_secs(2), "noticed after {took:?}");
        let _ = child.wait();
    }
}
