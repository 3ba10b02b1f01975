//! The paged KV cache of the CUDA path: one static pool of pages per layer,
//! allocated once (SGLang's `--max-total-tokens`), and sequences that own a
//! list of pages. A sequence's position `p` lives in slot
//! `pages[p / page_size] * page_size + p % page_size` of every layer.

use crate::error::{EngineError, Result};
use aerie_kernels::cuda::device::{Device, DeviceBuffer, DeviceExt};
use aerie_kernels::cuda::interp::{KernelArg as A, LaunchConfig};
use std::sync::{Arc, Mutex};

/// Tokens per page.
pub const PAGE_SIZE: usize = 16;

/// The pool: keys and values of every layer, `[slots, kv_width]` bf16.
pub struct KvPool {
    pub(crate) dev: Arc<dyn Device>,
    pub(crate) k: Vec<DeviceBuffer>,
    pub(crate) v: Vec<DeviceBuffer>,
    pub(crate) kv_width: usize,
    pub num_pages: usize,
    free: Mutex<Vec<i32>>,
}

impl KvPool {
    /// A pool of `max_total_tokens` (rounded up to whole pages) for `layers`
    /// layers of `kv_width` = kv heads × head_dim values per token.
    pub fn new(dev: Arc<dyn Device>, layers: usize, kv_width: usize, max_total_tokens: usize) -> Result<Arc<KvPool>> {
        let num_pages = max_total_tokens.div_ceil(PAGE_SIZE).max(1);
        let bytes = num_pages * PAGE_SIZE * kv_width * 2;
        let mut k = Vec::with_capacity(layers);
        let mut v = Vec::with_capacity(layers);
        for _ in 0..layers {
            k.push(dev.alloc(bytes)?);
            v.push(dev.alloc(bytes)?);
        }
        // Pages are handed out from the end of the list: page 0 first.
        let free = (0..num_pages as i32).rev().collect();
        Ok(Arc::new(KvPool { dev, k, v, kv_width, num_pages, free: Mutex::new(free) }))
    }

    pub fn free_pages(&self) -> usize {
        self.free.lock().unwrap().len()
    }

    pub fn slots(&self) -> usize {
        self.num_pages * PAGE_SIZE
    }

    /// Copies slot `src` to slot `dst` in every layer, pair after pair.
    fn move_slots(&self, moves: &[(i32, i32)]) -> Result<()> {
        if moves.is_empty() {
            return Ok(());
        }
        let src = self.dev.upload_slice(&moves.iter().map(|m| m.0).collect::<Vec<i32>>())?;
        let dst = self.dev.upload_slice(&moves.iter().map(|m| m.1).collect::<Vec<i32>>())?;
        for (k, v) in self.k.iter().zip(&self.v) {
            // SAFETY: kv_move skips slots outside the pool; both lists hold
            // moves.len() entries.
            unsafe {
                self.dev.launch(
                    "kv_move",
                    LaunchConfig::linear(1, 128),
                    &[k.arg(), v.arg(), src.arg(), dst.arg(), A::I32(moves.len() as i32), A::I32(self.kv_width as i32), A::I32(self.slots() as i32)],
                )?;
            }
        }
        Ok(())
    }
}

/// One sequence's pages and length. Dropping it returns its pages.
pub struct CudaSeq {
    pool: Arc<KvPool>,
    pub(crate) pages: Vec<i32>,
    len: usize,
}

impl CudaSeq {
    pub fn new(pool: &Arc<KvPool>) -> CudaSeq {
        CudaSeq { pool: pool.clone(), pages: Vec::new(), len: 0 }
    }

    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slot of position `pos` (which must lie on an owned page).
    pub(crate) fn slot(&self, pos: usize) -> i32 {
        self.pages[pos / PAGE_SIZE] * PAGE_SIZE as i32 + (pos % PAGE_SIZE) as i32
    }

    /// Takes pages so that `len + n` positions fit; all or nothing.
    pub(crate) fn reserve(&mut self, n: usize) -> Result<()> {
        let need = (self.len + n).div_ceil(PAGE_SIZE).saturating_sub(self.pages.len());
        if need == 0 {
            return Ok(());
        }
        let mut free = self.pool.free.lock().unwrap();
        if free.len() < need {
            return Err(EngineError::KvCacheFull { needed: need, free: free.len() });
        }
        let at = free.len() - need;
        self.pages.extend(free.drain(at..).rev());
        Ok(())
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.pages.len() * PAGE_SIZE);
        self.len = len;
    }

    /// A second sequence holding a copy of this one's tokens, on pages of
    /// its own.
    pub fn fork(&self) -> Result<CudaSeq> {
        let mut other = CudaSeq::new(&self.pool);
        other.reserve(self.len)?;
        let moves: Vec<(i32, i32)> = (0..self.len).map(|p| (self.slot(p), other.slot(p))).collect();
        self.pool.move_slots(&moves)?;
        other.len = self.len;
        Ok(other)
    }

    /// Keeps the first `n` tokens and returns the pages past them.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
        let keep = self.len.div_ceil(PAGE_SIZE);
        let mut free = self.pool.free.lock().unwrap();
        free.extend(self.pages.drain(keep..));
    }

    /// Keeps rows `rows` (ascending, relative to `start`) of the tokens from
    /// `start` on, moving them to `start, start + 1, ...` in every layer (an
    /// accepted path of a verified tree), and drops the rest: the twin of
    /// [`crate::KvCache::keep_rows`].
    pub fn keep_rows(&mut self, start: usize, rows: &[usize]) -> Result<()> {
        if rows.windows(2).any(|w| w[0] >= w[1]) || rows.iter().any(|&r| start + r >= self.len) {
            return Err(EngineError::InvalidInput(format!("keep_rows({start}, {rows:?}) on {} cached tokens", self.len)));
        }
        let moves: Vec<(i32, i32)> = rows
            .iter()
            .enumerate()
            .filter(|&(j, &r)| r != j)
            .map(|(j, &r)| (self.slot(start + r), self.slot(start + j)))
            .collect();
        self.pool.move_slots(&moves)?;
        self.truncate(start + rows.len());
        Ok(())
    }
}

impl Drop for CudaSeq {
    fn drop(&mut self) {
        self.truncate(0);
    }
}
