//! Random-weight models of any Llama-family shape, built in memory: for
//! benchmarks of large shapes (the Llama-3.1-8B step time on a GPU) without
//! writing and reading a checkpoint of that size. The values are uniform in
//! ±1/√fan-in (norms 1), so activations stay finite at any depth; they mean
//! nothing. Deterministic for a seed, and filled in parallel.

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::model::Model;
use crate::weights::{LayerWeights, ModelWeights};
use aerie_kernels::cpu::Matrix;
use rayon::prelude::*;

/// SplitMix64: a seedable stream, one per chunk, so the fill is parallel
/// and still the same for a seed.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn uniform(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut v = vec![0.0f32; n];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| {
        let mut s = seed ^ (i as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
        for x in c {
            // 24 random bits to [-1, 1).
            *x = ((splitmix(&mut s) >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale;
        }
    });
    v
}

/// A model of `config`'s shape with random weights.
pub fn random_model(config: ModelConfig, seed: u64) -> Result<Model> {
    let (h, i, hd) = (config.hidden_size, config.intermediate_size, config.head_dim);
    let (qd, kvd) = (config.num_heads * hd, config.num_kv_heads * hd);
    let mut n = 0u64;
    let mut mat = |rows: usize, cols: usize| {
        n += 1;
        Matrix::f32(rows, cols, uniform(rows * cols, 1.0 / (cols as f32).sqrt(), seed.wrapping_add(n << 32)))
            .map_err(|e| EngineError::InvalidInput(format!("random weights: {e}")))
    };
    let embed = mat(config.vocab_size, h)?;
    let mut layers = Vec::with_capacity(config.num_layers);
    for _ in 0..config.num_layers {
        let qkv = (mat(qd, h)?, mat(kvd, h)?, mat(kvd, h)?);
        let bias = |len: usize| config.attention_bias.then(|| vec![0.0f32; len]);
        let wo = mat(h, qd)?;
        let (gate, up, down) = (mat(i, h)?, mat(i, h)?, mat(h, i)?);
        layers.push(LayerWeights::new(vec![1.0; h], qkv, (bias(qd), bias(kvd), bias(kvd)), wo, vec![1.0; h], gate, up, down));
    }
    let lm_head = if config.tie_word_embeddings { None } else { Some(mat(config.vocab_size, h)?) };
    let weights = ModelWeights { embed, layers, final_norm: vec![1.0; h], lm_head };
    Ok(Model::new(config, weights, format!("random-{seed}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fill_is_deterministic_bounded_and_not_constant() {
        let a = uniform(200_000, 0.5, 7);
        assert_eq!(a, uniform(200_000, 0.5, 7));
        assert_ne!(a, uniform(200_000, 0.5, 8));
        assert!(a.iter().all(|x| (-0.5..0.5).contains(x)));
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        // Chunks differ from one another.
        assert_ne!(a[..1000], a[1 << 16..(1 << 16) + 1000]);
    }
}
