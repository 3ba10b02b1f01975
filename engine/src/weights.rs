//! The weights of a Llama-family decoder, independent of the file they came from.

use aerie_kernels::cpu::Matrix;

/// How weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DType {
    /// Keep Q4_0/Q4_1/Q8_0 blocks as stored; other formats become f32.
    #[default]
    Auto,
    /// Dequantize everything to f32 at load (the reference path).
    F32,
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DType::Auto),
            "f32" => Ok(DType::F32),
            other => Err(format!("unknown dtype `{other}` (expected auto or f32)")),
        }
    }
}

pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub wo: Matrix,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Matrix,
    pub w_up: Matrix,
    pub w_down: Matrix,
}

pub struct ModelWeights {
    /// Token embeddings, `vocab × hidden`.
    pub embed: Matrix,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>,
    /// Output projection; `None` when tied to `embed`.
    pub lm_head: Option<Matrix>,
}

impl ModelWeights {
    pub fn lm_head(&self) -> &Matrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of weight storage, for memory reports.
    pub fn storage_bytes(&self) -> usize {
        let mats = |l: &LayerWeights| {
            [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].iter().map(|m| m.storage_bytes()).sum::<usize>()
        };
        self.embed.storage_bytes()
            + self.lm_head.as_ref().map_or(0, |m| m.storage_bytes())
            + self.layers.iter().map(mats).sum::<usize>()
    }
}
