//! Per-sequence KV cache: post-RoPE keys and values of every processed token,
//! one row of `kv_heads × head_dim` floats per token per layer.
//!
//! Speculative verification appends a whole token tree, then keeps only the
//! accepted path (`keep_rows`) or cuts back to a length (`truncate`).

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};

#[derive(Clone)]
pub struct KvCache {
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    pub(crate) row: usize,
    len: usize,
}

impl KvCache {
    pub fn new(cfg: &ModelConfig) -> Self {
        KvCache {
            k: vec![Vec::new(); cfg.num_layers],
            v: vec![Vec::new(); cfg.num_layers],
            row: cfg.num_kv_heads * cfg.head_dim,
            len: 0,
        }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys and values of one layer, `len × kv_heads × head_dim` each.
    pub fn layer(&self, l: usize) -> (&[f32], &[f32]) {
        (&self.k[l][..self.len * self.row], &self.v[l][..self.len * self.row])
    }

    /// Bytes held by keys and values.
    pub fn bytes(&self) -> usize {
        self.len * self.row * 4 * 2 * self.k.len()
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
        self.truncate(start + rows.len());
        Ok(())
    }
}
