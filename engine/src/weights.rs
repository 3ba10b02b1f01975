//! The weights of a Llama-family decoder, independent of the file they came from.

use aerie_kernels::cpu::Matrix;

/// How weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DType {
    /// Keep Q4_0/Q4_1/Q8_0 blocks as stored; other formats become f32. On a
    /// CUDA device, bf16.
    #[default]
    Auto,
    /// Dequantize everything to f32 at load (the reference path; CPU only).
    F32,
    /// bf16 weights on a CUDA device (what `auto` gives there).
    BFloat16,
    /// f16 weights on a CUDA device: SGLang's `float16`.
    Float16,
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DType::Auto),
            "f32" | "float32" | "float" => Ok(DType::F32),
            "bfloat16" | "bf16" => Ok(DType::BFloat16),
            "float16" | "half" | "fp16" | "f16" => Ok(DType::Float16),
            other => Err(format!("unknown dtype `{other}` (expected auto, bfloat16, float16 or float32)")),
        }
    }
}

impl DType {
    /// The precision to load a checkpoint in for the CPU (`on_device`
    /// false) or a CUDA device, or why this one cannot be used there.
    pub fn for_device(self, on_device: bool) -> Result<DType, String> {
        match (self, on_device) {
            (DType::Auto | DType::F32, false) => Ok(self),
            (DType::BFloat16 | DType::Float16, false) => {
                Err("--dtype bfloat16 and float16 are for --device cuda; the CPU path runs the checkpoint's own quantization (auto) or float32".into())
            }
            (DType::Auto | DType::BFloat16, true) => Ok(DType::Auto),
            (DType::Float16, true) => Ok(DType::Float16),
            (DType::F32, true) => Err("the CUDA path holds weights in bfloat16 or float16 (--dtype auto, bfloat16 or float16); float32 runs on --device cpu".into()),
        }
    }
}

/// Several projections of the same input computed as one: their weight rows
/// are stacked when formats allow (one matmul, one activation quantization),
/// else run part by part. Outputs are the parts' outputs side by side.
pub struct Linear {
    parts: Vec<Matrix>,
    /// Output features of each part, in order.
    pub widths: Vec<usize>,
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    pub fn fuse(parts: Vec<Matrix>, biases: Vec<Option<Vec<f32>>>) -> Linear {
        let widths: Vec<usize> = parts.iter().map(|m| m.rows).collect();
        let bias = if biases.iter().any(|b| b.is_some()) {
            Some(biases.into_iter().zip(&widths).flat_map(|(b, &w)| b.unwrap_or_else(|| vec![0.0; w])).collect())
        } else {
            None
        };
        let parts = match Matrix::concat_rows(parts) {
            Ok(m) => vec![m],
            Err(p) => p,
        };
        Linear { parts, widths, bias }
    }

    /// The same layer with its f32 weights stored as `fmt` blocks (see
    /// [`Matrix::quantized`]).
    pub fn quantized(self, fmt: aerie_kernels::cpu::BlockFormat) -> Linear {
        Linear { parts: self.parts.into_iter().map(|m| m.quantized(fmt)).collect(), ..self }
    }

    pub fn out_features(&self) -> usize {
        self.widths.iter().sum()
    }

    /// `out[m × out_features] = x · Wᵀ (+ bias)`.
    pub fn forward(&self, x: &[f32], m: usize, out: &mut [f32]) {
        let n = self.out_features();
        if self.parts.len() == 1 {
            self.parts[0].matmul(x, m, out);
        } else {
            let mut col = 0;
            for p in &self.parts {
                let mut tmp = vec![0.0f32; m * p.rows];
                p.matmul(x, m, &mut tmp);
                for r in 0..m {
                    out[r * n + col..r * n + col + p.rows].copy_from_slice(&tmp[r * p.rows..(r + 1) * p.rows]);
                }
                col += p.rows;
            }
        }
        if let Some(b) = &self.bias {
            for row in out.chunks_mut(n) {
                for (v, &bb) in row.iter_mut().zip(b) {
                    *v += bb;
                }
            }
        }
    }

    pub fn storage_bytes(&self) -> usize {
        self.parts.iter().map(|m| m.storage_bytes()).sum()
    }

    /// Output features `rows` of the stacked weights, in their storage when
    /// the range lies within one stored part (always, once fused), else
    /// as f32.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Matrix {
        let mut start = 0;
        for p in &self.parts {
            if rows.start >= start && rows.end <= start + p.rows {
                return p.slice_rows(rows.start - start..rows.end - start);
            }
            start += p.rows;
        }
        let cols = self.parts.first().map_or(0, |p| p.cols);
        let dense = self.dense_f32();
        Matrix { rows: rows.len(), cols, data: aerie_kernels::cpu::WeightData::F32(dense[rows.start * cols..rows.end * cols].to_vec()) }
    }

    /// The stacked weights as one f32 `out_features × in_features` matrix.
    pub fn dense_f32(&self) -> Vec<f32> {
        self.parts.iter().flat_map(|m| m.to_f32_vec()).collect()
    }
}

pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    /// q, k and v projections, stacked.
    pub qkv: Linear,
    pub wo: Matrix,
    pub ffn_norm: Vec<f32>,
    /// gate and up projections, stacked.
    pub gate_up: Linear,
    pub w_down: Matrix,
}

impl LayerWeights {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        attn_norm: Vec<f32>,
        (wq, wk, wv): (Matrix, Matrix, Matrix),
        (bq, bk, bv): (Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>),
        wo: Matrix,
        ffn_norm: Vec<f32>,
        w_gate: Matrix,
        w_up: Matrix,
        w_down: Matrix,
    ) -> Self {
        LayerWeights {
            attn_norm,
            qkv: Linear::fuse(vec![wq, wk, wv], vec![bq, bk, bv]),
            wo,
            ffn_norm,
            gate_up: Linear::fuse(vec![w_gate, w_up], vec![None, None]),
            w_down,
        }
    }
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
        let mats = |l: &LayerWeights| l.qkv.storage_bytes() + l.gate_up.storage_bytes() + l.wo.storage_bytes() + l.w_down.storage_bytes();
        self.embed.storage_bytes()
            + self.lm_head.as_ref().map_or(0, |m| m.storage_bytes())
            + self.layers.iter().map(mats).sum::<usize>()
    }
}
