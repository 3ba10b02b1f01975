//! `--speculative-token-map` (FR-Spec): a hot-vocabulary id list. The draft
//! lm_head keeps only those rows, so each draft step scores a few thousand
//! tokens instead of the whole vocabulary; draft ids map back to target ids.
//!
//! Accepted files: a JSON array of ids; a NumPy `.npy` 1-D integer array;
//! a `.safetensors` file holding one integer tensor. SGLang's published maps
//! are PyTorch `.pt` files; convert one with
//! `python -c "import torch,numpy; numpy.save('hot.npy', torch.load('hot.pt').numpy())"`.

use crate::error::{DraftError, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct TokenMap {
    pub path: PathBuf,
    /// Target ids, in draft-row order.
    pub ids: Vec<u32>,
}

impl TokenMap {
    pub fn load(path: &Path) -> Result<TokenMap> {
        let bad = |msg: String| DraftError::BadTokenMap { path: path.to_path_buf(), msg };
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let raw: Vec<i64> = match ext {
            "json" => serde_json::from_slice::<Vec<i64>>(&bytes).map_err(|e| bad(format!("expected a JSON array of integer ids: {e}")))?,
            "npy" => parse_npy(&bytes).map_err(bad)?,
            "safetensors" => {
                let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
                let names = st.names();
                if names.len() != 1 {
                    return Err(bad(format!("expected exactly one tensor, found {}", names.len())));
                }
                let t = st.tensor(names[0]).map_err(|e| bad(e.to_string()))?;
                match t.dtype() {
                    safetensors::Dtype::I64 => t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8"))).collect(),
                    safetensors::Dtype::I32 => t.data().chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64).collect(),
                    other => return Err(bad(format!("tensor dtype {other:?} is not I64/I32"))),
                }
            }
            "pt" => return Err(bad("PyTorch .pt files are not read directly; convert to .npy (see `aerie generate --help`)".into())),
            other => return Err(bad(format!("unknown extension `{other}` (json, npy, safetensors)"))),
        };
        let ids = raw
            .iter()
            .map(|&x| u32::try_from(x).map_err(|_| bad(format!("id {x} is negative or too large"))))
            .collect::<Result<Vec<u32>>>()?;
        Ok(TokenMap { path: path.to_path_buf(), ids })
    }

    /// Refuses empty maps, duplicates and ids outside the vocabulary.
    pub fn check(&self, vocab: usize) -> Result<()> {
        let bad = |msg: String| Err(DraftError::BadTokenMap { path: self.path.clone(), msg });
        if self.ids.is_empty() {
            return bad("the map is empty".into());
        }
        if let Some(&x) = self.ids.iter().find(|&&x| x as usize >= vocab) {
            return bad(format!("id {x} is outside the target vocabulary of {vocab}"));
        }
        let mut seen = vec![false; vocab];
        for &x in &self.ids {
            if std::mem::replace(&mut seen[x as usize], true) {
                return bad(format!("id {x} appears twice"));
            }
        }
        Ok(())
    }
}

/// A 1-D little-endian integer `.npy` array (format 1.0–3.0).
fn parse_npy(b: &[u8]) -> std::result::Result<Vec<i64>, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a .npy file".into());
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = std::str::from_utf8(b.get(start..start + hlen).ok_or("truncated header")?).map_err(|e| e.to_string())?;
    let descr = header.split("'descr':").nth(1).and_then(|s| s.split('\'').nth(1)).ok_or("no descr in header")?;
    if header.contains("'fortran_order': True") {
        return Err("fortran-ordered arrays are not supported".into());
    }
    let data = &b[start + hlen..];
    match descr {
        "<i8" => Ok(data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8"))).collect()),
        "<i4" => Ok(data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64).collect()),
        "<u4" => Ok(data.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4")) as i64).collect()),
        other => Err(format!("dtype {other} is not an integer type (<i8, <i4, <u4)")),
    }
}
