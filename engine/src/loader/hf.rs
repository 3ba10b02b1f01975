//! Hugging Face checkpoint directories: `config.json` plus one or many
//! `*.safetensors` files (F32, F16 or BF16), memory-mapped while loading.

use super::gguf::fingerprint;
use super::{check_shape, LoadedCheckpoint, Parts, TokenizerSource};
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::weights::{DType, LayerWeights, ModelWeights};
use aerie_kernels::cpu::Matrix;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// All tensors of a directory's safetensors files, by name.
pub struct SafetensorsDir {
    dir: PathBuf,
    maps: Vec<(PathBuf, memmap2::Mmap)>,
    index: HashMap<String, usize>,
}

impl SafetensorsDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| EngineError::Io { path: p, source }
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(EngineError::BadFile { path: dir.to_path_buf(), msg: "no *.safetensors files".into() });
        }
        let mut maps = Vec::new();
        let mut index = HashMap::new();
        for (i, f) in files.into_iter().enumerate() {
            let file = std::fs::File::open(&f).map_err(io(&f))?;
            // SAFETY: the map is read-only and lives as long as this struct;
            // a file truncated underneath us is the caller's risk, as with any mmap.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(&f))?;
            let st = SafeTensors::deserialize(&map).map_err(|e| EngineError::BadFile { path: f.clone(), msg: e.to_string() })?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            maps.push((f, map));
        }
        Ok(SafetensorsDir { dir: dir.to_path_buf(), maps, index })
    }

    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Finds `name` and hands its view to `read`, with the file it lives in.
    fn with_tensor<T>(&self, name: &str, read: impl FnOnce(&Path, safetensors::tensor::TensorView) -> Result<T>) -> Result<T> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor { path: self.dir.clone(), tensor: name.to_string() })?;
        let (path, map) = &self.maps[i];
        let st = SafeTensors::deserialize(map).map_err(|e| EngineError::BadFile { path: path.clone(), msg: e.to_string() })?;
        let t = st.tensor(name).map_err(|e| EngineError::BadTensor { path: path.clone(), tensor: name.into(), msg: e.to_string() })?;
        read(path, t)
    }

    /// Reads a tensor as f32 with its shape.
    pub fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        self.with_tensor(name, |path, t| {
            let b = t.data();
            let v: Vec<f32> = match t.dtype() {
                Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                Dtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                other => {
                    return Err(EngineError::BadTensor {
                        path: path.to_path_buf(),
                        tensor: name.into(),
                        msg: format!("dtype {other:?} is not supported (F32, F16, BF16)"),
                    })
                }
            };
            Ok((t.shape().to_vec(), v))
        })
    }

    /// Reads an integer tensor (I64, I32, U8 or bool) as i64, flattened.
    pub fn ints(&self, name: &str) -> Result<Vec<i64>> {
        self.with_tensor(name, |path, t| {
            let b = t.data();
            Ok(match t.dtype() {
                Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
                Dtype::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64).collect(),
                Dtype::BOOL | Dtype::U8 => b.iter().map(|&x| x as i64).collect(),
                other => {
                    return Err(EngineError::BadTensor {
                        path: path.to_path_buf(),
                        tensor: name.into(),
                        msg: format!("dtype {other:?} is not an integer type (I64, I32)"),
                    })
                }
            })
        })
    }

    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        let (shape, v) = self.tensor(name)?;
        check_shape(&self.dir, name, &shape, &[n])?;
        Ok(v)
    }

    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let (shape, v) = self.tensor(name)?;
        check_shape(&self.dir, name, &shape, &[rows, cols])?;
        Matrix::f32(rows, cols, v).map_err(|e| EngineError::BadTensor { path: self.dir.clone(), tensor: name.into(), msg: e.to_string() })
    }
}

pub fn read_config(dir: &Path) -> Result<ModelConfig> {
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).map_err(|source| EngineError::Io { path: p.clone(), source })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| EngineError::BadConfig { path: p.clone(), msg: e.to_string() })?;
    let cfg = ModelConfig::from_hf_json(&p, &v)?;
    cfg.validate(&p)?;
    Ok(cfg)
}

/// Loads a Hugging Face Llama-family directory. Weights are held as f32
/// (`DType::Auto` and `DType::F32` agree here).
pub fn load_dir(dir: &Path, dtype: DType) -> Result<LoadedCheckpoint> {
    load_dir_parts(dir, dtype, Parts::All)
}

/// [`load_dir`], with only the `parts` asked for.
pub fn load_dir_parts(dir: &Path, _dtype: DType, parts: Parts) -> Result<LoadedCheckpoint> {
    let mut cfg = read_config(dir)?;
    let st = SafetensorsDir::open(dir)?;
    let (h, kvd, qd, ff) = (cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, cfg.num_heads * cfg.head_dim, cfg.intermediate_size);
    let embed = st.matrix("model.embed_tokens.weight", cfg.vocab_size, h)?;
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..parts.layers(cfg.num_layers) {
        let n = |s: &str| format!("model.layers.{i}.{s}");
        let bias = |s: &str, len: usize| -> Result<Option<Vec<f32>>> {
            if cfg.attention_bias {
                st.vector(&n(s), len).map(Some)
            } else {
                Ok(None)
            }
        };
        layers.push(LayerWeights::new(
            st.vector(&n("input_layernorm.weight"), h)?,
            (st.matrix(&n("self_attn.q_proj.weight"), qd, h)?, st.matrix(&n("self_attn.k_proj.weight"), kvd, h)?, st.matrix(&n("self_attn.v_proj.weight"), kvd, h)?),
            (bias("self_attn.q_proj.bias", qd)?, bias("self_attn.k_proj.bias", kvd)?, bias("self_attn.v_proj.bias", kvd)?),
            st.matrix(&n("self_attn.o_proj.weight"), h, qd)?,
            st.vector(&n("post_attention_layernorm.weight"), h)?,
            st.matrix(&n("mlp.gate_proj.weight"), ff, h)?,
            st.matrix(&n("mlp.up_proj.weight"), ff, h)?,
            st.matrix(&n("mlp.down_proj.weight"), h, ff)?,
        ));
    }
    let final_norm = st.vector("model.norm.weight", h)?;
    // Some tied checkpoints still ship lm_head; either way works.
    let lm_head = if st.has("lm_head.weight") { Some(st.matrix("lm_head.weight", cfg.vocab_size, h)?) } else { None };
    if lm_head.is_none() {
        cfg.tie_word_embeddings = true;
    }
    let weights = ModelWeights { embed, layers, final_norm, lm_head };
    let fp = fingerprint(&cfg, &weights);
    Ok(LoadedCheckpoint { config: cfg, weights, tokenizer: TokenizerSource::HfDir(dir.to_path_buf()), fingerprint: fp })
}
