//! How the other ranks of a tensor-parallel group follow rank 0's forward
//! passes.
//!
//! Strategy. Rank 0 owns the scheduler: it chooses which sequences run,
//! builds their trees, samples and commits accepted paths. The other ranks
//! hold a shard of every layer and the matching shard of every sequence's
//! KV cache, and must run the same forward passes in the same order, since
//! their all-reduces pair with rank 0's. So rank 0's model records every
//! structural change to its KV caches (a new cache, a copy, a truncation, an
//! accepted path kept, a cache dropped) in an [`OpLog`], in program order,
//! and each forward call on rank 0 first sends a [`Plan`] to the group: the
//! operations logged since the previous call, then each sequence's cache id,
//! tokens, absolute positions and mask (an lm_head call sends its normed
//! rows instead). A follower ([`follow`]) replays the
//! operations on its shadow caches, which then hold the same rows as rank 0's
//! (its own heads' share of them), and runs the same forward pass without
//! logits; for an lm_head call it computes its vocabulary slice, which the
//! group gathers. Sampling and verification happen on rank 0 alone: the
//! all-reduces leave the whole final hidden state on every rank, so nothing
//! else has to travel back.
//!
//! A plan is a few hundred bytes for a decode step (ids, positions, and a
//! byte per tree-mask cell for verify steps), sent through the group's own
//! broadcast; it is encoded by hand, little-endian, and decoded with every
//! length checked.

use crate::error::{EngineError, Result};
use crate::kv::KvCache;
use crate::model::{AttnMask, ForwardOptions, LogitsRows, Model, SeqInput};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A structural change to one of rank 0's KV caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOp {
    New(u64),
    /// `to` starts as a copy of `from`.
    Fork { from: u64, to: u64 },
    Truncate { id: u64, len: u32 },
    /// [`KvCache::keep_rows`].
    KeepRows { id: u64, start: u32, rows: Vec<u32> },
    Drop(u64),
}

/// Rank 0's record of cache operations not yet sent to the group.
#[derive(Debug, Default)]
pub struct OpLog {
    next_id: AtomicU64,
    ops: Mutex<Vec<CacheOp>>,
}

impl OpLog {
    fn push(&self, op: CacheOp) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    pub(crate) fn drain(&self) -> Vec<CacheOp> {
        std::mem::take(&mut *self.ops.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A new cache's identity, its creation logged.
    pub(crate) fn new_cache(self: &Arc<Self>) -> Mirror {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.push(CacheOp::New(id));
        Mirror { id, log: self.clone() }
    }
}

/// A rank-0 cache's identity in the group; dropping it logs the drop.
#[derive(Debug)]
pub(crate) struct Mirror {
    pub(crate) id: u64,
    log: Arc<OpLog>,
}

impl Mirror {
    pub(crate) fn fork(&self) -> Mirror {
        let to = self.log.next_id.fetch_add(1, Ordering::Relaxed);
        self.log.push(CacheOp::Fork { from: self.id, to });
        Mirror { id: to, log: self.log.clone() }
    }

    pub(crate) fn truncated(&self, len: usize) {
        self.log.push(CacheOp::Truncate { id: self.id, len: len as u32 });
    }

    pub(crate) fn kept(&self, start: usize, rows: &[usize]) {
        self.log.push(CacheOp::KeepRows { id: self.id, start: start as u32, rows: rows.iter().map(|&r| r as u32).collect() });
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.log.push(CacheOp::Drop(self.id));
    }
}

/// One sequence of a forward call, as the followers run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqPlan {
    pub cache: u64,
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    pub mask: AttnMask,
}

/// An lm_head call: the normed hidden rows whose logits (or greedy ids)
/// rank 0 wants; every rank computes its vocabulary slice.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeadPlan {
    pub normed: Vec<f32>,
    pub argmax: bool,
}

/// What rank 0 sends before each forward or lm_head call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub ops: Vec<CacheOp>,
    /// A forward call's sequences (empty for an lm_head call).
    pub seqs: Vec<SeqPlan>,
    pub head: Option<HeadPlan>,
    /// The group is shutting down: followers return after the ops.
    pub stop: bool,
}

fn put_u32(out: &mut Vec<u8>, x: u32) {
    out.extend_from_slice(&x.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, x: u64) {
    out.extend_from_slice(&x.to_le_bytes());
}

fn put_u32s(out: &mut Vec<u8>, xs: impl ExactSizeIterator<Item = u32>) {
    put_u32(out, xs.len() as u32);
    for x in xs {
        put_u32(out, x);
    }
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.b.len() < n {
            return Err(EngineError::TensorParallel(format!("a step plan ends early ({} bytes left, {n} wanted)", self.b.len())));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// A count of items at least `min_bytes` each, checked against what is left.
    fn count(&mut self, min_bytes: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_bytes) > self.b.len() {
            return Err(EngineError::TensorParallel(format!("a step plan claims {n} items in {} bytes", self.b.len())));
        }
        Ok(n)
    }

    fn u32s(&mut self) -> Result<Vec<u32>> {
        let n = self.count(4)?;
        (0..n).map(|_| self.u32()).collect()
    }

    fn bools(&mut self) -> Result<Vec<bool>> {
        let n = self.count(1)?;
        Ok(self.take(n)?.iter().map(|&b| b != 0).collect())
    }
}

impl Plan {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.seqs.iter().map(|s| 16 + 8 * s.tokens.len()).sum::<usize>());
        out.push(u8::from(self.stop) | (u8::from(self.head.is_some()) << 1));
        put_u32(&mut out, self.ops.len() as u32);
        for op in &self.ops {
            match op {
                CacheOp::New(id) => {
                    out.push(0);
                    put_u64(&mut out, *id);
                }
                CacheOp::Fork { from, to } => {
                    out.push(1);
                    put_u64(&mut out, *from);
                    put_u64(&mut out, *to);
                }
                CacheOp::Truncate { id, len } => {
                    out.push(2);
                    put_u64(&mut out, *id);
                    put_u32(&mut out, *len);
                }
                CacheOp::KeepRows { id, start, rows } => {
                    out.push(3);
                    put_u64(&mut out, *id);
                    put_u32(&mut out, *start);
                    put_u32s(&mut out, rows.iter().copied());
                }
                CacheOp::Drop(id) => {
                    out.push(4);
                    put_u64(&mut out, *id);
                }
            }
        }
        put_u32(&mut out, self.seqs.len() as u32);
        for s in &self.seqs {
            put_u64(&mut out, s.cache);
            put_u32s(&mut out, s.tokens.iter().copied());
            put_u32s(&mut out, s.positions.iter().copied());
            let (tag, cells) = match &s.mask {
                AttnMask::Causal => (0, None),
                AttnMask::Tree(m) => (1, Some(m)),
                AttnMask::Full(m) => (2, Some(m)),
            };
            out.push(tag);
            if let Some(m) = cells {
                put_u32(&mut out, m.len() as u32);
                out.extend(m.iter().map(|&b| u8::from(b)));
            }
        }
        if let Some(h) = &self.head {
            out.push(u8::from(h.argmax));
            put_u32s(&mut out, h.normed.iter().map(|x| x.to_bits()));
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Plan> {
        let mut r = Reader { b };
        let flags = r.u8()?;
        if flags > 3 {
            return Err(EngineError::TensorParallel(format!("a step plan starts with unknown flags {flags:#x}")));
        }
        let stop = flags & 1 != 0;
        let n_ops = r.count(9)?;
        let mut ops = Vec::with_capacity(n_ops);
        for _ in 0..n_ops {
            ops.push(match r.u8()? {
                0 => CacheOp::New(r.u64()?),
                1 => CacheOp::Fork { from: r.u64()?, to: r.u64()? },
                2 => CacheOp::Truncate { id: r.u64()?, len: r.u32()? },
                3 => CacheOp::KeepRows { id: r.u64()?, start: r.u32()?, rows: r.u32s()? },
                4 => CacheOp::Drop(r.u64()?),
                t => return Err(EngineError::TensorParallel(format!("a step plan holds an unknown cache operation {t}"))),
            });
        }
        let n_seqs = r.count(17)?;
        let mut seqs = Vec::with_capacity(n_seqs);
        for _ in 0..n_seqs {
            let cache = r.u64()?;
            let tokens = r.u32s()?;
            let positions = r.u32s()?;
            let mask = match r.u8()? {
                0 => AttnMask::Causal,
                1 => AttnMask::Tree(r.bools()?),
                2 => AttnMask::Full(r.bools()?),
                t => return Err(EngineError::TensorParallel(format!("a step plan holds an unknown mask kind {t}"))),
            };
            seqs.push(SeqPlan { cache, tokens, positions, mask });
        }
        let head = if flags & 2 != 0 {
            let argmax = r.u8()? != 0;
            Some(HeadPlan { argmax, normed: r.u32s()?.into_iter().map(f32::from_bits).collect() })
        } else {
            None
        };
        if !r.b.is_empty() {
            return Err(EngineError::TensorParallel(format!("a step plan has {} bytes after its end", r.b.len())));
        }
        Ok(Plan { ops, seqs, head, stop })
    }
}

/// Rank 0: the plan of a forward call over `batch`, with the cache
/// operations logged since the last one.
pub(crate) fn plan_of(log: &OpLog, batch: &[SeqInput]) -> Result<Plan> {
    let mut seqs = Vec::with_capacity(batch.len());
    for s in batch {
        let id = s.cache.mirror.as_ref().map(|m| m.id).ok_or_else(|| EngineError::InvalidInput("a KV cache not made by this tensor-parallel model".into()))?;
        let base = s.cache.len() as u32;
        let positions = match s.positions {
            Some(p) => p.to_vec(),
            None => (0..s.tokens.len() as u32).map(|i| base + i).collect(),
        };
        seqs.push(SeqPlan { cache: id, tokens: s.tokens.to_vec(), positions, mask: s.mask.clone() });
    }
    Ok(Plan { ops: log.drain(), seqs, ..Default::default() })
}

/// Rank 0: tells the other ranks that the group is done, so their
/// [`follow`] returns. Without it they return an error once rank 0's
/// process is gone.
pub fn stop(model: &Model) -> Result<()> {
    // After any call in flight on another thread, never within one.
    let _turn = model.group_turn();
    match (&model.tp, &model.tp_log) {
        (Some(tp), Some(log)) => tp.lead(&Plan { ops: log.drain(), stop: true, ..Default::default() }.encode()),
        _ => Err(EngineError::TensorParallel("only rank 0 of a tensor-parallel group stops it".into())),
    }
}

/// What a follower did before the group stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FollowStats {
    pub forwards: u64,
    /// lm_head calls (logits or greedy ids).
    pub heads: u64,
    pub tokens: u64,
    /// Shadow caches still held when the group stopped (0 when rank 0
    /// dropped all of its caches first).
    pub caches_left: usize,
}

fn missing(id: u64) -> EngineError {
    EngineError::TensorParallel(format!("the step plan names KV cache {id}, which this rank does not hold"))
}

/// A rank other than 0: runs rank 0's forward passes on this shard until
/// rank 0 stops the group. Any error (rank 0 gone, a malformed plan, a
/// failed collective) ends the loop, and the rank should exit.
pub fn follow(model: &Model) -> Result<FollowStats> {
    let tp = model.tp.as_ref().filter(|t| t.rank() != 0).ok_or_else(|| EngineError::TensorParallel("follow runs on ranks other than 0 of a tensor-parallel group".into()))?;
    let mut caches: HashMap<u64, KvCache> = HashMap::new();
    let mut stats = FollowStats::default();
    loop {
        let plan = Plan::decode(&tp.follow()?)?;
        for op in plan.ops {
            match op {
                CacheOp::New(id) => {
                    caches.insert(id, model.new_cache());
                }
                CacheOp::Fork { from, to } => {
                    let copy = caches.get(&from).ok_or_else(|| missing(from))?.try_clone()?;
                    caches.insert(to, copy);
                }
                CacheOp::Truncate { id, len } => caches.get_mut(&id).ok_or_else(|| missing(id))?.truncate(len as usize),
                CacheOp::KeepRows { id, start, rows } => {
                    let rows: Vec<usize> = rows.iter().map(|&r| r as usize).collect();
                    caches.get_mut(&id).ok_or_else(|| missing(id))?.keep_rows(start as usize, &rows)?;
                }
                CacheOp::Drop(id) => {
                    caches.remove(&id);
                }
            }
        }
        if plan.stop {
            stats.caches_left = caches.len();
            return Ok(stats);
        }
        if let Some(h) = plan.head {
            // This rank's vocabulary slice, gathered with the others'.
            if h.argmax {
                model.lm_head_argmax(&h.normed)?;
            } else {
                model.lm_head(&h.normed)?;
            }
            stats.heads += 1;
            continue;
        }
        if plan.seqs.is_empty() {
            continue;
        }
        let mut taken = Vec::with_capacity(plan.seqs.len());
        for s in &plan.seqs {
            taken.push(caches.remove(&s.cache).ok_or_else(|| missing(s.cache))?);
        }
        let mut batch: Vec<SeqInput> = taken
            .iter_mut()
            .zip(&plan.seqs)
            .map(|(cache, s)| SeqInput { cache, tokens: &s.tokens, positions: Some(&s.positions), mask: s.mask.clone(), logits: LogitsRows::None })
            .collect();
        let result = model.forward(&mut batch, &ForwardOptions::default());
        drop(batch);
        for (c, s) in taken.into_iter().zip(&plan.seqs) {
            caches.insert(s.cache, c);
        }
        result?;
        stats.forwards += 1;
        stats.tokens += plan.seqs.iter().map(|s| s.tokens.len() as u64).sum::<u64>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Plan {
        Plan {
            ops: vec![
                CacheOp::New(3),
                CacheOp::Fork { from: 3, to: 4 },
                CacheOp::Truncate { id: 4, len: 17 },
                CacheOp::KeepRows { id: 3, start: 12, rows: vec![0, 2, 5] },
                CacheOp::Drop(1),
            ],
            seqs: vec![
                SeqPlan { cache: 3, tokens: vec![1, 2], positions: vec![15, 16], mask: AttnMask::Causal },
                SeqPlan { cache: 4, tokens: vec![9, 8, 7], positions: vec![17, 18, 18], mask: AttnMask::from_parents(&[None, Some(0), Some(0)]).unwrap() },
                SeqPlan { cache: 5, tokens: vec![4], positions: vec![0], mask: AttnMask::Full(vec![true]) },
            ],
            head: None,
            stop: false,
        }
    }

    #[test]
    fn plans_round_trip() {
        let p = sample();
        assert_eq!(Plan::decode(&p.encode()).unwrap(), p);
        let s = Plan { stop: true, ..Plan::default() };
        assert_eq!(Plan::decode(&s.encode()).unwrap(), s);
        let h = Plan { ops: vec![CacheOp::Drop(7)], head: Some(HeadPlan { normed: vec![1.5, -0.0, f32::MIN_POSITIVE], argmax: true }), ..Plan::default() };
        assert_eq!(Plan::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn a_damaged_plan_is_an_error_not_a_panic() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(Plan::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Plan::decode(&extra).is_err());
        let mut bad_op = bytes.clone();
        bad_op[5] = 9;
        assert!(Plan::decode(&bad_op).unwrap_err().to_string().contains("unknown cache operation"));
        // A huge count is refused before anything is allocated for it.
        let mut huge = vec![0u8];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Plan::decode(&huge).unwrap_err().to_string().contains("claims"));
    }

    #[test]
    fn the_log_records_a_caches_life_in_order() {
        let log = Arc::new(OpLog::default());
        let a = log.new_cache();
        let b = a.fork();
        b.truncated(5);
        a.kept(3, &[0, 2]);
        drop(b);
        assert_eq!(
            log.drain(),
            vec![CacheOp::New(0), CacheOp::Fork { from: 0, to: 1 }, CacheOp::Truncate { id: 1, len: 5 }, CacheOp::KeepRows { id: 0, start: 3, rows: vec![0, 2] }, CacheOp::Drop(1)]
        );
        assert!(log.drain().is_empty());
        drop(a);
        assert_eq!(log.drain(), vec![CacheOp::Drop(0)]);
    }
}
