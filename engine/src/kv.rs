//! Per-sequence KV cache: post-RoPE keys and values of every processed token,
//! one row of `kv_heads × head_dim` floats per token per layer.
//!
//! Speculative verification appends a whole token tree, then keeps only the
//! accepted path (`keep_rows`) or cuts back to a length (`truncate`).

use crate::config::ModelConfig;
use crate::cuda::kv::CudaSeq;
use crate::error::{EngineError, Result};
use crate::tp::mirror::Mirror;

pub struct KvCache {
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    pub(crate) row: usize,
    len: usize,
    /// On a model that runs on a CUDA device, the sequence's pages in the
    /// device's KV pool; the host vectors then stay empty.
    pub(crate) device: Option<CudaSeq>,
    /// Rounds keys and values to f16 as they are stored (llama.cpp's default
    /// KV cache type, kept on the CPU path); off, the cache holds f32.
    pub(crate) f16: bool,
    /// On rank 0 of a tensor-parallel group, this cache's identity there:
    /// its changes are logged for the other ranks (see [`crate::tp::mirror`]).
    pub(crate) mirror: Option<Mirror>,
}

impl KvCache {
    pub fn new(cfg: &ModelConfig) -> Self {
        KvCache {
            k: vec![Vec::new(); cfg.num_layers],
            v: vec![Vec::new(); cfg.num_layers],
            row: cfg.num_kv_heads * cfg.head_dim,
            len: 0,
            device: None,
            f16: true,
            mirror: None,
        }
    }

    /// A cache whose tokens live in a device's KV pool.
    pub(crate) fn on_device(cfg: &ModelConfig, seq: CudaSeq) -> Self {
        KvCache { device: Some(seq), ..KvCache::new(cfg) }
    }

    /// An independent copy of the cache (on a device: on pages of its own,
    /// which may not be available).
    pub fn try_clone(&self) -> Result<KvCache> {
        Ok(KvCache {
            k: self.k.clone(),
            v: self.v.clone(),
            row: self.row,
            len: self.len,
            device: self.device.as_ref().map(CudaSeq::fork).transpose()?,
            f16: self.f16,
            mirror: self.mirror.as_ref().map(Mirror::fork),
        })
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.device.as_ref().map_or(self.len, CudaSeq::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys and values of one layer, `len × kv_heads × head_dim` each.
    pub fn layer(&self, l: usize) -> (&[f32], &[f32]) {
        (&self.k[l][..self.len * self.row], &self.v[l][..self.len * self.row])
    }

    /// Bytes held by keys and values.
    pub fn bytes(&self) -> usize {
        // bf16 on a device, f32 on the host.
        let width = if self.device.is_some() { 2 } else { 4 };
        self.len() * self.row * width * 2 * self.k.len()
    }

    /// Makes room for `n` more tokens and counts them as held; the forward
    /// pass fills their rows layer by layer.
    pub fn grow(&mut self, n: usize) {
        self.len += n;
        let want = self.len * self.row;
        for l in 0..self.k.len() {
            self.k[l].resize(want, 0.0);
            self.v[l].resize(want, 0.0);
        }
    }

    /// Drops every token at index `n` and beyond.
    pub fn truncate(&mut self, n: usize) {
        if let Some(m) = &self.mirror {
            m.truncated(n);
        }
        self.cut(n);
    }

    fn cut(&mut self, n: usize) {
        if let Some(d) = &mut self.device {
            d.truncate(n);
            return;
        }
        if n >= self.len {
            return;
        }
        self.len = n;
        for l in 0..self.k.len() {
            self.k[l].truncate(n * self.row);
            self.v[l].truncate(n * self.row);
        }
    }

    /// Keeps, of the tokens from `start` on, only those at offsets `rows`
    /// (strictly increasing), moved to `start, start+1, …`. This commits the
    /// accepted path of a verified tree.
    pub fn keep_rows(&mut self, start: usize, rows: &[usize]) -> Result<()> {
        if let Some(d) = &mut self.device {
            return d.keep_rows(start, rows);
        }
        let tail = self.len.saturating_sub(start);
        if start > self.len {
            return Err(EngineError::InvalidInput(format!("keep_rows start {start} beyond cache length {}", self.len)));
        }
        for (i, &r) in rows.iter().enumerate() {
            if r >= tail || (i > 0 && r <= rows[i - 1]) {
                return Err(EngineError::InvalidInput(format!(
                    "keep_rows: rows must be strictly increasing offsets below {tail}, got {rows:?}"
                )));
            }
        }
        if let Some(m) = &self.mirror {
            m.kept(start, rows);
        }
        let row = self.row;
        for l in 0..self.k.len() {
            for (i, &r) in rows.iter().enumerate() {
                if r != i {
                    let (src, dst) = ((start + r) * row, (start + i) * row);
                    self.k[l].copy_within(src..src + row, dst);
                    self.v[l].copy_within(src..src + row, dst);
                }
            }
        }
        self.cut(start + rows.len());
        Ok(())
    }
}
