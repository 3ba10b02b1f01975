//! GGUF loading through candle's reader. Quantized blocks that the CPU
//! kernels run natively (Q4_0, Q4_1, Q8_0) are kept byte for byte; every other
//! type (F16, BF16, K-quants, …) is dequantized to f32 by candle.

use super::{check_shape, LoadedCheckpoint, Parts, TokenizerSource};
use crate::config::{Arch, ModelConfig, RopeStyle};
use crate::error::{EngineError, Result};
use crate::weights::{DType, LayerWeights, ModelWeights};
use aerie_kernels::cpu::{BlockFormat, Matrix};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Tokenizer metadata of a GGUF file.
#[derive(Debug, Clone)]
pub struct GgufTokenizerMeta {
    /// `tokenizer.ggml.model` (only `gpt2`, byte-level BPE, is supported).
    pub model: String,
    /// `tokenizer.ggml.pre`: which pre-tokenizer regex set applies.
    pub pre: String,
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

/// An open GGUF file: parsed header plus a handle for tensor reads.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    file: File,
    file_len: u64,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| EngineError::Io { path: path.to_path_buf(), source };
        let mut file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        // candle's reader bounds-checks lengths; catch_unwind is a second
        // guard so that no malformed header can take the process down.
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut file)));
        let content = match parsed {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(EngineError::BadFile { path: path.to_path_buf(), msg: e.to_string() }),
            Err(_) => return Err(EngineError::BadFile { path: path.to_path_buf(), msg: "malformed GGUF header".into() }),
        };
        Ok(GgufFile { path: path.to_path_buf(), content, file, file_len })
    }

    fn bad(&self, msg: String) -> EngineError {
        EngineError::BadConfig { path: self.path.clone(), msg }
    }

    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn meta_u64(&self, key: &str) -> Option<u64> {
        match self.meta(key)? {
            Value::U8(v) => Some(*v as u64),
            Value::U16(v) => Some(*v as u64),
            Value::U32(v) => Some(*v as u64),
            Value::U64(v) => Some(*v),
            Value::I8(v) if *v >= 0 => Some(*v as u64),
            Value::I16(v) if *v >= 0 => Some(*v as u64),
            Value::I32(v) if *v >= 0 => Some(*v as u64),
            Value::I64(v) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }

    fn meta_f64(&self, key: &str) -> Option<f64> {
        match self.meta(key)? {
            Value::F32(v) => Some(*v as f64),
            Value::F64(v) => Some(*v),
            _ => self.meta_u64(key).map(|v| v as f64),
        }
    }

    pub fn meta_str(&self, key: &str) -> Option<&str> {
        match self.meta(key)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    fn meta_req(&self, key: &str) -> Result<usize> {
        self.meta_u64(key).map(|v| v as usize).ok_or_else(|| self.bad(format!("missing metadata `{key}`")))
    }

    fn string_array(&self, key: &str) -> Result<Vec<String>> {
        match self.meta(key) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(self.bad(format!("`{key}` holds a non-string"))),
                })
                .collect(),
            _ => Err(self.bad(format!("missing metadata array `{key}`"))),
        }
    }

    /// Tensor dimensions, row-major (outermost first).
    pub fn dims(&self, name: &str) -> Result<Vec<usize>> {
        self.content
            .tensor_infos
            .get(name)
            .map(|t| t.shape.dims().to_vec())
            .ok_or_else(|| EngineError::MissingTensor { path: self.path.clone(), tensor: name.to_string() })
    }

    pub fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn tensor_err(&self, name: &str, msg: String) -> EngineError {
        EngineError::BadTensor { path: self.path.clone(), tensor: name.to_string(), msg }
    }

    /// Reads a tensor's raw bytes, refusing any range past the file's end.
    fn raw(&mut self, name: &str) -> Result<(GgmlDType, Vec<u8>)> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor { path: self.path.clone(), tensor: name.to_string() })?;
        let (dt, elems) = (info.ggml_dtype, info.shape.elem_count());
        if elems % dt.block_size() != 0 {
            return Err(self.tensor_err(name, format!("{elems} elements is not a whole number of {dt:?} blocks")));
        }
        let size = (elems / dt.block_size()) as u64 * dt.type_size() as u64;
        let start = self.content.tensor_data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(size));
        match (start, end) {
            (Some(start), Some(end)) if end <= self.file_len => {
                let mut buf = vec![0u8; size as usize];
                let path = self.path.clone();
                let io = |source| EngineError::Io { path: path.clone(), source };
                self.file.seek(SeekFrom::Start(start)).map_err(io)?;
                self.file.read_exact(&mut buf).map_err(io)?;
                Ok((dt, buf))
            }
            _ => Err(self.tensor_err(
                name,
                format!("file is truncated: tensor needs {size} bytes at offset {:?}, file has {} bytes", start, self.file_len),
            )),
        }
    }

    /// Loads a 1-D f32 vector of length `n`.
    pub fn vector(&mut self, name: &str, n: usize) -> Result<Vec<f32>> {
        check_shape(&self.path, name, &self.dims(name)?, &[n])?;
        let m = self.matrix(name, 1, n, DType::F32, true)?;
        match m.data {
            aerie_kernels::cpu::WeightData::F32(v) => Ok(v),
            _ => unreachable!("F32 requested"),
        }
    }

    /// Loads a `rows × cols` matrix (vectors pass `rows = 1` and `is_vector`).
    pub fn matrix(&mut self, name: &str, rows: usize, cols: usize, dtype: DType, is_vector: bool) -> Result<Matrix> {
        if !is_vector {
            check_shape(&self.path, name, &self.dims(name)?, &[rows, cols])?;
        }
        let (dt, bytes) = self.raw(name)?;
        let native = match dt {
            GgmlDType::Q4_0 => Some(BlockFormat::Q4_0),
            GgmlDType::Q4_1 => Some(BlockFormat::Q4_1),
            GgmlDType::Q8_0 => Some(BlockFormat::Q8_0),
            _ => None,
        };
        let to_err = |e: aerie_kernels::cpu::MatrixError| self.tensor_err(name, e.to_string());
        let m = match (native, dt) {
            (Some(fmt), _) => Matrix::quant(fmt, rows, cols, bytes).map_err(to_err)?,
            (None, GgmlDType::F32) => {
                let v = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                Matrix::f32(rows, cols, v).map_err(to_err)?
            }
            (None, _) => {
                let dims = if is_vector { vec![cols] } else { vec![rows, cols] };
                let q = candle_core::quantized::ggml_file::qtensor_from_ggml(dt, &bytes, dims, &candle_core::Device::Cpu)
                    .and_then(|q| q.dequantize(&candle_core::Device::Cpu))
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| self.tensor_err(name, e.to_string()))?;
                Matrix::f32(rows, cols, q).map_err(to_err)?
            }
        };
        Ok(match (dtype, &m.data) {
            (DType::F32, aerie_kernels::cpu::WeightData::Quant { .. }) => m.to_f32(),
            _ => m,
        })
    }

    pub fn tokenizer_meta(&self) -> Result<GgufTokenizerMeta> {
        let token_types = match self.meta("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::I32(x) => *x,
                    Value::U32(x) => *x as i32,
                    _ => 1,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(GgufTokenizerMeta {
            model: self.meta_str("tokenizer.ggml.model").unwrap_or("").to_string(),
            pre: self.meta_str("tokenizer.ggml.pre").unwrap_or("default").to_string(),
            tokens: self.string_array("tokenizer.ggml.tokens")?,
            token_types,
            merges: self.string_array("tokenizer.ggml.merges").unwrap_or_default(),
            bos_id: self.meta_u64("tokenizer.ggml.bos_token_id").map(|v| v as u32),
            eos_id: self.meta_u64("tokenizer.ggml.eos_token_id").map(|v| v as u32),
            add_bos: matches!(self.meta("tokenizer.ggml.add_bos_token"), Some(Value::Bool(true))),
            chat_template: self.meta_str("tokenizer.chat_template").map(str::to_string),
        })
    }

    /// Reads the model hyper-parameters from `{arch}.*` metadata.
    pub fn config(&self) -> Result<ModelConfig> {
        let arch_name = self.meta_str("general.architecture").unwrap_or("").to_string();
        let arch = match arch_name.as_str() {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            _ => return Err(EngineError::UnsupportedArch { path: self.path.clone(), arch: arch_name }),
        };
        let k = |s: &str| format!("{arch_name}.{s}");
        let hidden = self.meta_req(&k("embedding_length"))?;
        let heads = self.meta_req(&k("attention.head_count"))?;
        let vocab = match self.meta_u64(&k("vocab_size")) {
            Some(v) => v as usize,
            None => self.dims("token_embd.weight")?[0],
        };
        let head_dim = self.meta_u64(&k("rope.dimension_count")).map(|v| v as usize).unwrap_or(hidden / heads.max(1));
        Ok(ModelConfig {
            arch,
            hidden_size: hidden,
            intermediate_size: self.meta_req(&k("feed_forward_length"))?,
            num_layers: self.meta_req(&k("block_count"))?,
            num_heads: heads,
            num_kv_heads: self.meta_u64(&k("attention.head_count_kv")).map(|v| v as usize).unwrap_or(heads),
            head_dim,
            vocab_size: vocab,
            max_position_embeddings: self.meta_u64(&k("context_length")).unwrap_or(4096) as usize,
            rope_theta: self.meta_f64(&k("rope.freq_base")).unwrap_or(10000.0),
            rope_scaling: None,
            rope_freq_factors: None,
            // The llama converter permutes q/k rows for interleaved pairs;
            // qwen2 files keep Hugging Face's half-split layout.
            rope_style: if arch == Arch::Qwen2 { RopeStyle::HalfSplit } else { RopeStyle::Interleaved },
            rms_norm_eps: self.meta_f64(&k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f32,
            tie_word_embeddings: !self.has("output.weight"),
            attention_bias: self.has("blk.0.attn_q.bias"),
        })
    }
}

/// Loads a GGUF checkpoint.
pub fn load_file(path: &Path, dtype: DType) -> Result<LoadedCheckpoint> {
    load_file_parts(path, dtype, Parts::All)
}

/// [`load_file`], with only the `parts` asked for.
pub fn load_file_parts(path: &Path, dtype: DType, parts: Parts) -> Result<LoadedCheckpoint> {
    let mut g = GgufFile::open(path)?;
    let cfg = g.config()?;
    cfg.validate(path)?;
    let (h, kvd, qd, ff) = (cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, cfg.num_heads * cfg.head_dim, cfg.intermediate_size);
    let embed = g.matrix("token_embd.weight", cfg.vocab_size, h, dtype, false)?;
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..parts.layers(cfg.num_layers) {
        let n = |s: &str| format!("blk.{i}.{s}");
        let bias = |g: &mut GgufFile, s: &str, len: usize| -> Result<Option<Vec<f32>>> {
            if cfg.attention_bias {
                g.vector(&n(s), len).map(Some)
            } else {
                Ok(None)
            }
        };
        layers.push(LayerWeights::new(
            g.vector(&n("attn_norm.weight"), h)?,
            (g.matrix(&n("attn_q.weight"), qd, h, dtype, false)?, g.matrix(&n("attn_k.weight"), kvd, h, dtype, false)?, g.matrix(&n("attn_v.weight"), kvd, h, dtype, false)?),
            (bias(&mut g, "attn_q.bias", qd)?, bias(&mut g, "attn_k.bias", kvd)?, bias(&mut g, "attn_v.bias", kvd)?),
            g.matrix(&n("attn_output.weight"), h, qd, dtype, false)?,
            g.vector(&n("ffn_norm.weight"), h)?,
            g.matrix(&n("ffn_gate.weight"), ff, h, dtype, false)?,
            g.matrix(&n("ffn_up.weight"), ff, h, dtype, false)?,
            g.matrix(&n("ffn_down.weight"), h, ff, dtype, false)?,
        ));
    }
    let final_norm = g.vector("output_norm.weight", h)?;
    let lm_head = if cfg.tie_word_embeddings { None } else { Some(g.matrix("output.weight", cfg.vocab_size, h, dtype, false)?) };
    let mut cfg = cfg;
    if g.has("rope_freqs.weight") {
        // Llama 3.x GGUF files carry per-pair frequency divisors in place of
        // a rope_scaling block.
        let f = g.vector("rope_freqs.weight", cfg.head_dim / 2)?;
        cfg.rope_freq_factors = Some(f.into_iter().map(f64::from).collect());
    }
    let tok = g.tokenizer_meta()?;
    let weights = ModelWeights { embed, layers, final_norm, lm_head };
    let fp = fingerprint(&cfg, &weights);
    Ok(LoadedCheckpoint { config: cfg, weights, tokenizer: TokenizerSource::Gguf(tok), fingerprint: fp })
}

/// A short identity of a checkpoint: its shapes plus a sample of its weights.
pub(crate) fn fingerprint(cfg: &ModelConfig, w: &ModelWeights) -> String {
    let mut h = Sha256::new();
    h.update(format!("{:?}|{}|{}|{}|{}", cfg.arch, cfg.hidden_size, cfg.num_layers, cfg.vocab_size, cfg.num_heads));
    let mut row = vec![0.0f32; cfg.hidden_size];
    for r in [0usize, 1, cfg.vocab_size / 2, cfg.vocab_size - 1] {
        w.embed.row_f32(r.min(cfg.vocab_size - 1), &mut row);
        for v in &row {
            h.update(v.to_le_bytes());
        }
    }
    let d = h.finalize();
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
