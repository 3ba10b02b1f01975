//! Tensor-parallel shards of a Llama-family model (Megatron's split), on
//! the CPU.
//!
//! Strategy: rank r of a group of `world` holds
//! - the q, k and v rows of its key/value heads and of the query heads that
//!   share them (column-parallel), and the matching input columns of o_proj
//!   (row-parallel);
//! - a slice of the MLP's intermediate features: those rows of gate and up,
//!   the matching input columns of down;
//! - the embedding and the norms whole, and the lm_head rows of a slice of
//!   the vocabulary (vocabulary-parallel): each rank computes its ids'
//!   logits and the group gathers them, or for greedy verification only
//!   each rank's best id and logit ([`head_logits`], [`head_argmax`]).
//!
//! The forward pass is the unsharded one with each rank's partial attention
//! and MLP outputs summed across the group ([`TpReduce`]) before the
//! residual add, so every rank holds the whole hidden state after each layer,
//! and the final hidden state and logits come out whole on every rank. Key/
//! value heads are split as evenly as the count allows (SmolLM2's 3 over 2
//! ranks: 2 and 1), each with its group of query heads, so a rank's query
//! heads always find their key/value head locally; the intermediate features
//! are split in 32-wide blocks. A group with more ranks than key/value heads
//! replicates them: each head goes to as even a share of the ranks as the
//! count allows, each of those holding the head (its k and v rows, computed
//! on each) and some of the query heads that read it (SmolLM2 at TP=4: ranks
//! 0 and 1 share key/value head 0 with two and one of its query heads).
//!
//! Shards keep the checkpoint's storage (ggml blocks slice along rows, and
//! along columns on 32-value block boundaries, which head and feature splits
//! fall on), so a rank streams `1 / world` of the weights the unsharded model
//! does. The row-parallel sums differ from the unsharded model's in the
//! order of their additions only. On f32 weights with an f32 KV cache
//! ([`Model::set_f32_kv_cache`]) SmolLM2's logits agree with the whole
//! model's to about 3e-6 relative; with llama.cpp's f16 cache and f16
//! attention roundings a last-bit difference can cross an f16 rounding
//! boundary, and they agree to about 1e-3.
//!
//! Rank 0 drives: each forward call on its shard first sends the call's plan
//! to the other ranks, which replay it ([`mirror`]).

pub mod mirror;

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::model::Model;
use crate::weights::{LayerWeights, ModelWeights};
use aerie_kernels::cpu::Matrix;
use std::ops::Range;
use std::sync::Arc;

/// Sums a buffer across the ranks of a tensor-parallel group, in rank order,
/// so the result is bit-identical on every rank. The target worker's
/// collectives implement it.
pub trait TpReduce: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// Every rank's `mine` (all the same length), concatenated in rank
    /// order, into `out` on every rank.
    fn all_gather(&self, mine: &[f32], out: &mut [f32]) -> Result<()>;
    /// Rank 0: sends a step plan to every other rank.
    fn lead(&self, plan: &[u8]) -> Result<()>;
    /// Any other rank: waits, as long as rank 0 lives, for its next plan.
    fn follow(&self) -> Result<Vec<u8>>;
}

/// What rank `rank` of `world` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    pub kv_heads: Range<usize>,
    pub q_heads: Range<usize>,
    pub intermediate: Range<usize>,
    /// The lm_head rows (vocabulary ids) whose logits this rank computes:
    /// `vocab_slice` ids from `rank × vocab_slice` (the last rank's range
    /// may be shorter).
    pub vocab: Range<usize>,
}

/// Ids per rank of a vocabulary-parallel lm_head: every rank gathers the
/// same count, padded past the vocabulary's end.
pub fn vocab_slice(vocab: usize, world: usize) -> usize {
    vocab.div_ceil(world.max(1))
}

/// `n` items split over `world` as evenly as possible, in units of `unit`:
/// rank `rank`'s range.
fn split(n: usize, unit: usize, world: usize, rank: usize) -> Range<usize> {
    let units = n.div_ceil(unit);
    let (base, extra) = (units / world, units % world);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    (start * unit).min(n)..((start + len) * unit).min(n)
}

/// The shard of rank `rank` in a group of `world`.
pub fn plan(cfg: &ModelConfig, rank: usize, world: usize) -> Result<ShardPlan> {
    if world == 0 || rank >= world {
        return Err(EngineError::TensorParallel(format!("rank {rank} of a group of {world}")));
    }
    if cfg.num_kv_heads == 0 || cfg.num_heads % cfg.num_kv_heads != 0 {
        return Err(EngineError::TensorParallel(format!("{} query heads do not group over {} key/value heads", cfg.num_heads, cfg.num_kv_heads)));
    }
    let group = cfg.num_heads / cfg.num_kv_heads;
    let (kv, q_heads) = if world <= cfg.num_kv_heads {
        let kv = split(cfg.num_kv_heads, 1, world, rank);
        (kv.clone(), kv.start * group..kv.end * group)
    } else {
        // More ranks than key/value heads: the ranks are spread over the
        // key/value heads as evenly as they go, each holding (a replica of)
        // its head and a share of the query heads that read it.
        let h = (0..cfg.num_kv_heads).find(|&h| split(world, 1, cfg.num_kv_heads, h).contains(&rank)).ok_or_else(|| EngineError::TensorParallel(format!("rank {rank} of {world} holds no key/value head")))?;
        let sharers = split(world, 1, cfg.num_kv_heads, h);
        if sharers.len() > group {
            return Err(EngineError::TensorParallel(format!(
                "--tp-size {world} puts {} ranks on a key/value head that only {group} query heads read; use at most {} ranks",
                sharers.len(),
                cfg.num_heads
            )));
        }
        let q = split(group, 1, sharers.len(), rank - sharers.start);
        (h..h + 1, h * group + q.start..h * group + q.end)
    };
    let intermediate = split(cfg.intermediate_size, 32, world, rank);
    if intermediate.is_empty() {
        return Err(EngineError::TensorParallel(format!(
            "--tp-size {world} leaves rank {rank} none of the {} MLP features (they split in blocks of 32)",
            cfg.intermediate_size
        )));
    }
    let vs = vocab_slice(cfg.vocab_size, world);
    let vocab = (rank * vs).min(cfg.vocab_size)..((rank + 1) * vs).min(cfg.vocab_size);
    Ok(ShardPlan { q_heads, kv_heads: kv, intermediate, vocab })
}

/// Input columns `cols` of a row-parallel matrix, in its storage when the
/// range falls on block boundaries, else as f32.
fn cols_of(m: &Matrix, cols: Range<usize>) -> Result<Matrix> {
    m.slice_cols(cols.clone())
        .or_else(|_| m.to_f32().slice_cols(cols))
        .map_err(|e| EngineError::TensorParallel(e.to_string()))
}

/// Rank `reduce.rank()`'s shard of `model`, summing through `reduce`. Its
/// config holds the rank's head and feature counts; its fingerprint is the
/// whole model's.
pub fn shard(model: &Model, reduce: Arc<dyn TpReduce>) -> Result<Model> {
    let cfg = &model.config;
    if model.weights.layers.len() != cfg.num_layers {
        return Err(EngineError::TensorParallel("a model loaded for drafting cannot be sharded".into()));
    }
    let p = plan(cfg, reduce.rank(), reduce.world())?;
    let (hd, inter) = (cfg.head_dim, cfg.intermediate_size);
    let (qd, kvd) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let q_rows = p.q_heads.start * hd..p.q_heads.end * hd;
    let kv_rows = p.kv_heads.start * hd..p.kv_heads.end * hd;
    let li = p.intermediate.len();
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for l in &model.weights.layers {
        // q, k and v are stacked in one Linear: this rank's rows of each.
        let (k_rows, v_rows) = (qd + kv_rows.start..qd + kv_rows.end, qd + kvd + kv_rows.start..qd + kvd + kv_rows.end);
        let bias = |r: &Range<usize>| l.qkv.bias.as_ref().map(|b| b[r.clone()].to_vec());
        layers.push(LayerWeights::new(
            l.attn_norm.clone(),
            (l.qkv.rows(q_rows.clone()), l.qkv.rows(k_rows.clone()), l.qkv.rows(v_rows.clone())),
            (bias(&q_rows), bias(&k_rows), bias(&v_rows)),
            cols_of(&l.wo, q_rows.clone())?,
            l.ffn_norm.clone(),
            l.gate_up.rows(p.intermediate.clone()),
            l.gate_up.rows(inter + p.intermediate.start..inter + p.intermediate.end),
            cols_of(&l.w_down, p.intermediate.clone())?,
        ));
    }
    let w = &model.weights;
    let weights = ModelWeights {
        embed: w.embed.clone(),
        layers,
        final_norm: w.final_norm.clone(),
        lm_head: Some(w.lm_head().slice_rows(p.vocab.clone())),
    };
    let config = ModelConfig { num_heads: p.q_heads.len(), num_kv_heads: p.kv_heads.len(), intermediate_size: li, ..cfg.clone() };
    let mut m = Model::new(config, weights, model.fingerprint.clone());
    m.kv_f32 = model.kv_f32;
    m.vocab_shard = Some(p.vocab.clone());
    if reduce.rank() == 0 {
        m.tp_log = Some(Arc::new(mirror::OpLog::default()));
    }
    m.tp = Some(reduce);
    Ok(m)
}

/// This rank's logits of `normed` (`rows × hidden`) for its vocabulary
/// range, padded to [`vocab_slice`] ids per row.
fn local_logits(model: &Model, range: &Range<usize>, world: usize, normed: &[f32]) -> (usize, Vec<f32>) {
    let rows = normed.len() / model.config.hidden_size.max(1);
    let vs = vocab_slice(model.config.vocab_size, world);
    let mut out = vec![f32::NEG_INFINITY; rows * vs];
    if !range.is_empty() {
        let mut mine = vec![0.0f32; rows * range.len()];
        // 8-bit activations, as the unsharded head (llama.cpp's Q8_0 output
        // head): each id's logit is the same dot product as there.
        model.weights.lm_head().matmul(normed, rows, &mut mine);
        for (o, m) in out.chunks_mut(vs).zip(mine.chunks(range.len())) {
            o[..range.len()].copy_from_slice(m);
        }
    }
    (rows, out)
}

/// Whole logits (`rows × vocab`) from a vocabulary-parallel head: every
/// rank's slice, gathered. Bit for bit the unsharded head's.
pub(crate) fn head_logits(model: &Model, tp: &dyn TpReduce, range: &Range<usize>, normed: &[f32]) -> Result<Vec<f32>> {
    let (world, vocab) = (tp.world(), model.config.vocab_size);
    let (rows, mine) = local_logits(model, range, world, normed);
    let vs = vocab_slice(vocab, world);
    let mut all = vec![0.0f32; world * rows * vs];
    tp.all_gather(&mine, &mut all)?;
    let mut out = vec![0.0f32; rows * vocab];
    for r in 0..world {
        let lo = r * vs;
        let n = vs.min(vocab.saturating_sub(lo));
        for row in 0..rows {
            let src = &all[(r * rows + row) * vs..][..n];
            out[row * vocab + lo..row * vocab + lo + n].copy_from_slice(src);
        }
    }
    Ok(out)
}

/// The greedy id of each row from a vocabulary-parallel head: each rank's
/// best (logit, id) is gathered, not its logits; ties go to the lower id,
/// as the unsharded argmax does.
pub(crate) fn head_argmax(model: &Model, tp: &dyn TpReduce, range: &Range<usize>, normed: &[f32]) -> Result<Vec<u32>> {
    let world = tp.world();
    let (rows, mine) = local_logits(model, range, world, normed);
    let vs = vocab_slice(model.config.vocab_size, world);
    let mut best = Vec::with_capacity(2 * rows);
    for row in mine.chunks(vs.max(1)).take(rows) {
        let (i, v) = aerie_kernels::cpu::ops::argmax(row);
        // Ids stay exact as f32 below 2^24, far beyond any vocabulary.
        best.extend_from_slice(&[v, (range.start + i) as f32]);
    }
    let mut all = vec![0.0f32; world * 2 * rows];
    tp.all_gather(&best, &mut all)?;
    Ok((0..rows)
        .map(|row| {
            let mut top = (f32::NEG_INFINITY, 0u32);
            for r in 0..world {
                let (v, id) = (all[(r * rows + row) * 2], all[(r * rows + row) * 2 + 1] as u32);
                if v > top.0 {
                    top = (v, id);
                }
            }
            top.1
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_everything_once_as_evenly_as_units_allow() {
        for (n, unit, world) in [(3, 1, 2), (9, 1, 4), (1536, 32, 2), (1536, 32, 3), (100, 32, 3), (14336, 32, 8)] {
            let parts: Vec<Range<usize>> = (0..world).map(|r| split(n, unit, world, r)).collect();
            assert_eq!(parts[0].start, 0);
            assert_eq!(parts[world - 1].end, n);
            for w in parts.windows(2) {
                assert_eq!(w[0].end, w[1].start, "{n} {unit} {world}");
            }
            let lens: Vec<usize> = parts.iter().map(|p| p.len().div_ceil(unit)).collect();
            assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1, "{lens:?}");
            assert!(parts.iter().all(|p| p.start % unit == 0));
        }
    }

    #[test]
    fn heads_stay_with_their_key_value_head() {
        let v = serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152});
        let c = ModelConfig::from_hf_json(std::path::Path::new("config.json"), &v).unwrap();
        assert_eq!(plan(&c, 0, 2).unwrap(), ShardPlan { kv_heads: 0..2, q_heads: 0..6, intermediate: 0..768, vocab: 0..24576 });
        assert_eq!(plan(&c, 1, 2).unwrap(), ShardPlan { kv_heads: 2..3, q_heads: 6..9, intermediate: 768..1536, vocab: 24576..49152 });
        assert_eq!(plan(&c, 2, 3).unwrap().vocab, 32768..49152);
        assert_eq!(vocab_slice(49153, 2), 24577);
        // Four ranks over three key/value heads: the first head is held by
        // two ranks, each with some of its query heads.
        let four: Vec<ShardPlan> = (0..4).map(|r| plan(&c, r, 4).unwrap()).collect();
        assert_eq!(four.iter().map(|p| (p.kv_heads.clone(), p.q_heads.clone())).collect::<Vec<_>>(), vec![(0..1, 0..2), (0..1, 2..3), (1..2, 3..6), (2..3, 6..9)]);
        assert_eq!(plan(&c, 8, 9).unwrap().q_heads, 8..9);
        assert!(plan(&c, 0, 10).unwrap_err().to_string().contains("at most 9 ranks"));
    }
}
