//! The on-disk feature cache: the target's features over the training data,
//! computed once and read back (memory-mapped) by every training epoch.
//!
//! A cache directory holds flat little-endian files, one row per token:
//!
//! | file         | row                                                     |
//! |--------------|---------------------------------------------------------|
//! | `tokens.u32` | the token id                                            |
//! | `mask.u8`    | 1 for assistant tokens (trained on), 0 for the rest    |
//! | `hidden.f16` | the target's final normed hidden state (H halves)      |
//! | `aux.f16`    | EAGLE-3: the aux-layer outputs concatenated (3H), optional |
//! | `index.u64`  | one (start, len) pair per finished sequence             |
//!
//! plus `meta.json` naming the target and the shapes. A sequence's rows are
//! appended first and its index entry last, so after a crash the index says
//! exactly what is complete: reopening truncates the row files to the last
//! indexed sequence and carries on from there (resume). The soft labels the
//! EAGLE-1/2 loss needs (the target's next-token distribution) are the
//! frozen lm_head applied to `hidden`, recomputed at training time rather
//! than stored.

use super::{io, read_json, read_json_if_exists};
use crate::error::{DraftError, Result};
use half::f16;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a cache was built from; a resumed or reused cache must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMeta {
    /// Fingerprint of the target model file.
    pub target: String,
    pub hidden_size: usize,
    /// Target layers stored in `aux.f16` (empty: none).
    pub aux_layers: Vec<usize>,
    /// How the data was made (source, regeneration, limits), for the record.
    pub recipe: String,
}

impl CacheMeta {
    /// The meta of the cache in `dir`, if one was started there.
    pub fn read(dir: &Path) -> Result<Option<CacheMeta>> {
        read_json_if_exists(&dir.join("meta.json"))
    }
}

/// The (start, len) entries of `index.u64`; a torn last entry is ignored.
fn parse_index(bytes: &[u8]) -> Vec<(u64, u64)> {
    bytes.chunks_exact(16).map(|c| (u64::from_le_bytes(c[..8].try_into().unwrap()), u64::from_le_bytes(c[8..].try_into().unwrap()))).collect()
}

const FILES: [&str; 4] = ["tokens.u32", "mask.u8", "hidden.f16", "aux.f16"];

/// Appends sequences to a cache directory, resuming a partial one.
pub struct FeatureCacheWriter {
    dir: PathBuf,
    meta: CacheMeta,
    files: Vec<File>,
    index: File,
    sequences: usize,
    rows: u64,
}

impl FeatureCacheWriter {
    /// Opens `dir` for appending. An existing cache must have the same
    /// `meta`; rows past its last indexed sequence are dropped.
    pub fn open(dir: &Path, meta: &CacheMeta) -> Result<FeatureCacheWriter> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let meta_path = dir.join("meta.json");
        if let Some(old) = CacheMeta::read(dir)? {
            if &old != meta {
                return Err(DraftError::Train(format!(
                    "{} was built for another target or recipe ({:?}); use a new --cache directory",
                    dir.display(),
                    old
                )));
            }
        } else {
            std::fs::write(&meta_path, serde_json::to_string_pretty(meta).expect("json")).map_err(io(&meta_path))?;
        }
        let index_path = dir.join("index.u64");
        let index_bytes = std::fs::read(&index_path).unwrap_or_default();
        let whole = index_bytes.len() / 16 * 16;
        let entries = parse_index(&index_bytes);
        let rows = entries.last().map_or(0, |&(s, l)| s + l);
        let h = meta.hidden_size as u64;
        let row_bytes = [4, 1, 2 * h, 2 * h * meta.aux_layers.len() as u64];
        let mut files = Vec::new();
        for (name, rb) in FILES.iter().zip(row_bytes) {
            let p = dir.join(name);
            let f = OpenOptions::new().create(true).read(true).write(true).truncate(false).open(&p).map_err(io(&p))?;
            f.set_len(rows * rb).map_err(io(&p))?;
            files.push(f);
        }
        let index = OpenOptions::new().create(true).write(true).truncate(false).open(&index_path).map_err(io(&index_path))?;
        index.set_len(whole as u64).map_err(io(&index_path))?;
        let mut w = FeatureCacheWriter { dir: dir.to_path_buf(), meta: meta.clone(), files, index, sequences: entries.len(), rows };
        for f in w.files.iter_mut().chain(std::iter::once(&mut w.index)) {
            use std::io::Seek;
            f.seek(std::io::SeekFrom::End(0)).map_err(io(dir))?;
        }
        Ok(w)
    }

    /// Sequences already in the cache.
    pub fn sequences(&self) -> usize {
        self.sequences
    }

    /// Rows (tokens) already in the cache.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends one sequence: `n` tokens, their mask, `n × H` hidden rows and,
    /// when the cache stores aux layers, `n × 3H` aux rows.
    pub fn push(&mut self, tokens: &[u32], mask: &[u8], hidden: &[f32], aux: Option<&[f32]>) -> Result<()> {
        let n = tokens.len();
        let h = self.meta.hidden_size;
        let aux_w = h * self.meta.aux_layers.len();
        if mask.len() != n || hidden.len() != n * h || aux.map_or(0, |a| a.len()) != n * aux_w {
            return Err(DraftError::Train(format!("feature cache: a {n}-token sequence came with {} mask, {} hidden, {} aux values", mask.len(), hidden.len(), aux.map_or(0, |a| a.len()))));
        }
        let halves = |v: &[f32]| v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect::<Vec<u8>>();
        let parts: [Vec<u8>; 4] = [tokens.iter().flat_map(|t| t.to_le_bytes()).collect(), mask.to_vec(), halves(hidden), aux.map(halves).unwrap_or_default()];
        for ((f, bytes), name) in self.files.iter_mut().zip(&parts).zip(FILES) {
            f.write_all(bytes).map_err(io(&self.dir.join(name)))?;
        }
        for f in &self.files {
            f.sync_data().map_err(io(&self.dir))?;
        }
        let mut entry = self.rows.to_le_bytes().to_vec();
        entry.extend_from_slice(&(n as u64).to_le_bytes());
        self.index.write_all(&entry).map_err(io(&self.dir.join("index.u64")))?;
        self.index.sync_data().map_err(io(&self.dir))?;
        self.rows += n as u64;
        self.sequences += 1;
        Ok(())
    }
}

/// A finished cache, memory-mapped for reading.
pub struct FeatureCache {
    pub meta: CacheMeta,
    index: Vec<(usize, usize)>,
    tokens: Mmap,
    mask: Mmap,
    hidden: Mmap,
    aux: Option<Mmap>,
}

impl FeatureCache {
    pub fn open(dir: &Path) -> Result<FeatureCache> {
        let meta: CacheMeta = read_json(&dir.join("meta.json"))?;
        let index_path = dir.join("index.u64");
        let bytes = std::fs::read(&index_path).map_err(io(&index_path))?;
        let index: Vec<(usize, usize)> = parse_index(&bytes).into_iter().map(|(s, l)| (s as usize, l as usize)).collect();
        let rows = index.last().map_or(0, |&(s, l)| s + l);
        let map = |name: &str, row_bytes: usize| -> Result<Mmap> {
            let p = dir.join(name);
            let f = File::open(&p).map_err(io(&p))?;
            // SAFETY: the cache is written once and then only read; a file
            // changed underneath would give wrong numbers, not unsafety in
            // the slices we hand out (they are copied into owned vectors).
            let m = unsafe { Mmap::map(&f) }.map_err(io(&p))?;
            if m.len() < rows * row_bytes {
                return Err(DraftError::Train(format!("{}: {} bytes, the index needs {}", p.display(), m.len(), rows * row_bytes)));
            }
            Ok(m)
        };
        let h = meta.hidden_size;
        let aux = if meta.aux_layers.is_empty() { None } else { Some(map("aux.f16", 2 * h * meta.aux_layers.len())?) };
        Ok(FeatureCache { tokens: map("tokens.u32", 4)?, mask: map("mask.u8", 1)?, hidden: map("hidden.f16", 2 * h)?, aux, index, meta })
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Keeps only the first `n` sequences (a run that trains on part of a
    /// larger cache); the files are not touched.
    pub fn truncate(&mut self, n: usize) {
        self.index.truncate(n);
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Tokens in sequence `i`.
    pub fn seq_len(&self, i: usize) -> usize {
        self.index[i].1
    }

    pub fn tokens(&self, i: usize) -> Vec<u32> {
        let (s, l) = self.index[i];
        self.tokens[4 * s..4 * (s + l)].chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    pub fn mask(&self, i: usize) -> &[u8] {
        let (s, l) = self.index[i];
        &self.mask[s..s + l]
    }

    /// `len × H` hidden rows of sequence `i`, as f32.
    pub fn hidden(&self, i: usize) -> Vec<f32> {
        let (s, l) = self.index[i];
        let h = self.meta.hidden_size;
        halves_to_f32(&self.hidden[2 * h * s..2 * h * (s + l)])
    }

    /// `len × 3H` aux rows of sequence `i`, if stored.
    pub fn aux(&self, i: usize) -> Option<Vec<f32>> {
        let (s, l) = self.index[i];
        let w = self.meta.hidden_size * self.meta.aux_layers.len();
        self.aux.as_ref().map(|m| halves_to_f32(&m[2 * w * s..2 * w * (s + l)]))
    }
}

fn halves_to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_after_a_partial_write_and_refuses_another_recipe() {
        let d = tempfile::tempdir().unwrap();
        let meta = CacheMeta { target: "t".into(), hidden_size: 2, aux_layers: vec![], recipe: "r".into() };
        let mut w = FeatureCacheWriter::open(d.path(), &meta).unwrap();
        w.push(&[1, 2, 3], &[0, 1, 1], &[0.5, -1.0, 1.5, 2.0, 3.0, 4.0], None).unwrap();
        assert!(w.push(&[1], &[0, 1], &[0.0, 0.0], None).is_err());
        drop(w);
        // A crash mid-sequence: rows written, no index entry.
        std::fs::OpenOptions::new().append(true).open(d.path().join("tokens.u32")).unwrap().write_all(&[9, 9, 9, 9]).unwrap();
        let mut w = FeatureCacheWriter::open(d.path(), &meta).unwrap();
        assert_eq!((w.sequences(), w.rows()), (1, 3));
        w.push(&[7], &[1], &[0.25, 0.75], None).unwrap();
        drop(w);
        let c = FeatureCache::open(d.path()).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.tokens(0), vec![1, 2, 3]);
        assert_eq!(c.tokens(1), vec![7]);
        assert_eq!(c.mask(0), &[0, 1, 1]);
        assert_eq!(c.hidden(1), vec![0.25, 0.75]);
        assert_eq!(c.hidden(0)[2], 1.5);
        let other = CacheMeta { recipe: "other".into(), ..meta };
        assert!(FeatureCacheWriter::open(d.path(), &other).is_err());
    }
}
