//! The EAGLE-1/2 head as a differentiable candle graph, for training.
//!
//! Same computation as [`crate::eagle::EagleHead::forward`] (which serves the
//! trained weights): for pair `t` of a sequence,
//! `x = fc(cat(embed(x_{t+1}), f_t))`, then one Llama decoder layer without
//! an input norm (causal attention with half-split rotary embeddings, then a
//! SiLU-gated MLP), and the output `x` is the predicted `f_{t+1}`.
//!
//! Loss (EAGLE-1): SmoothL1(x, f_{t+1}) averaged over the hidden size, plus
//! `ce_weight` × cross-entropy of `lm_head(x)` against the target's
//! distribution `softmax(lm_head(f_{t+1}))`. The lm_head is the target's,
//! frozen, restricted to a hot vocabulary (the most frequent answer tokens)
//! so the loss costs a fraction of a full-vocabulary product; rows are
//! weighted by the assistant mask of the token they read.
//!
//! Training-time test ([`TrainHead::forward_steps`]): with `steps > 1` the
//! head is also run on its own predicted features, as it is at draft depth
//! 2, 3, …, with the attention a served tree node sees, and each step's
//! loss is weighted `decay^s` (EAGLE-3 uses 0.8). Without it the head only
//! ever reads true features, and its acceptance collapses after the first
//! draft token.

use crate::error::{DraftError, Result};
use crate::random_head::approx_normal;
use candle_core::{DType, Device, Tensor, Var, D};

pub(crate) fn cerr(e: candle_core::Error) -> DraftError {
    DraftError::Train(e.to_string())
}

/// Geometry of the head (one decoder layer shaped like the target's).
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ff: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
}

/// Trainable parameters under their published names.
pub struct TrainHead {
    pub shape: HeadShape,
    pub params: Vec<(String, Var)>,
}

/// One sequence's training inputs: `n` pairs.
pub struct PairBatch {
    /// `n × H` embeddings of tokens `x_{t+1}`.
    pub emb: Tensor,
    /// `n × H` target features `f_t` (noise already added).
    pub feat: Tensor,
    /// `n × H` targets `f_{t+1}`.
    pub next: Tensor,
    /// `n` row weights (the assistant mask).
    pub weight: Tensor,
}

/// Loss parts of one step, summed over rows (divide by `rows`).
pub struct LossParts {
    pub total: Tensor,
    pub l1: f32,
    pub ce: f32,
    /// Step-0 rows whose top-1 matches the target's.
    pub correct: f32,
    /// The same at the last unrolled step (its rows are those with a full chain).
    pub correct_last: f32,
    pub rows: f32,
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)
}

/// Log-softmax over the last dimension (the max is a constant shift).
fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let z = x.broadcast_sub(&m)?;
    let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
    z.broadcast_sub(&lse)
}

impl TrainHead {
    /// A fresh head: normal(0, std) weights, unit norms, and `fc` starting
    /// as the identity on the feature half (so the first prediction of
    /// `f_{t+1}` is `f_t`, a far better start than zero).
    pub fn init(shape: HeadShape, seed: u64, std: f32) -> Result<TrainHead> {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let HeadShape { hidden: h, heads, kv_heads, head_dim, ff, .. } = shape;
        let mut normal = |rows: usize, cols: usize| -> Vec<f32> { (0..rows * cols).map(|_| approx_normal(&mut rng, std)).collect() };
        let dev = Device::Cpu;
        let mut params = Vec::new();
        let mut fc = normal(h, 2 * h);
        for i in 0..h {
            fc[i * 2 * h + h + i] += 1.0;
        }
        let mut push = |name: &str, data: Vec<f32>, dims: &[usize]| -> Result<()> {
            params.push((name.to_string(), Var::from_vec(data, dims, &dev).map_err(cerr)?));
            Ok(())
        };
        push("fc.weight", fc, &[h, 2 * h])?;
        push("fc.bias", vec![0.0; h], &[h])?;
        let (qd, kvd) = (heads * head_dim, kv_heads * head_dim);
        push("layers.0.self_attn.q_proj.weight", normal(qd, h), &[qd, h])?;
        push("layers.0.self_attn.k_proj.weight", normal(kvd, h), &[kvd, h])?;
        push("layers.0.self_attn.v_proj.weight", normal(kvd, h), &[kvd, h])?;
        push("layers.0.self_attn.o_proj.weight", normal(h, qd), &[h, qd])?;
        push("layers.0.post_attention_layernorm.weight", vec![1.0; h], &[h])?;
        push("layers.0.mlp.gate_proj.weight", normal(ff, h), &[ff, h])?;
        push("layers.0.mlp.up_proj.weight", normal(ff, h), &[ff, h])?;
        push("layers.0.mlp.down_proj.weight", normal(h, ff), &[h, ff])?;
        Ok(TrainHead { shape, params })
    }

    fn p(&self, name: &str) -> &Tensor {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_tensor()).unwrap_or_else(|| panic!("parameter {name}"))
    }

    /// Predicted next features (`n × H`) for one sequence's pairs (step 0
    /// of [`Self::forward_steps`]: true features, causal attention).
    pub fn forward(&self, emb: &Tensor, feat: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.forward_steps(emb, feat, 1)?.remove(0))
    }

    /// The head unrolled over `steps` draft steps (training-time test).
    ///
    /// Step 0 reads the true features: row `t` is `(x_{t+1}, f_t)`. Step
    /// `s > 0` reads, at row `t`, the token `x_{t+1}` with the head's own
    /// step-`s−1` output of row `t−1` (its guess of `f_t`), as a draft does
    /// at depth `s + 1`. Row `t` of step `s` is then a tree node whose chain
    /// began after the committed pair `t − s`, so it attends to exactly what
    /// the served head shows such a node: step-0 keys at positions `≤ t − s`
    /// (the committed prefix), its ancestors (the step-`r` key of row
    /// `t − s + r`, `0 < r < s`) and itself. Rows `t < s` have no such chain;
    /// the loss gives them weight 0. Returns each step's outputs (`n × H`).
    pub fn forward_steps(&self, emb: &Tensor, feat: &Tensor, steps: usize) -> candle_core::Result<Vec<Tensor>> {
        let s = self.shape;
        let n = emb.dim(0)?;
        let (hd, nh, nkv) = (s.head_dim, s.heads, s.kv_heads);
        let dev = emb.device();
        // Half-split rotary embedding at positions 0..n (every step's row t
        // sits at position t).
        let half = hd / 2;
        let inv: Vec<f32> = (0..half).map(|i| (1.0 / s.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32).collect();
        let ang: Vec<f32> = (0..n).flat_map(|p| inv.iter().map(move |f| p as f32 * f)).collect();
        let ang = Tensor::from_vec(ang, (n, half), dev)?;
        let (cos, sin) = (ang.cos()?, ang.sin()?);
        let rope = |t: &Tensor| -> candle_core::Result<Tensor> {
            let (a, b) = (t.narrow(2, 0, half)?, t.narrow(2, half, half)?);
            let ra = (a.broadcast_mul(&cos)? - b.broadcast_mul(&sin)?)?;
            let rb = (b.broadcast_mul(&cos)? + a.broadcast_mul(&sin)?)?;
            Tensor::cat(&[ra, rb], 2)
        };
        // Grouped-query attention: each kv head serves nh / nkv query heads.
        let g = nh / nkv;
        let expand = |t: &Tensor| -> candle_core::Result<Tensor> { t.unsqueeze(1)?.expand((nkv, g, n, hd))?.reshape((nh, n, hd)) };
        // Row t of `t` moved to row t + k along `dim` (zeros enter at the top).
        let shift = |t: &Tensor, dim: usize, k: usize| -> candle_core::Result<Tensor> {
            if k == 0 {
                return Ok(t.clone());
            }
            let mut pad_dims = t.dims().to_vec();
            pad_dims[dim] = k.min(n);
            let pad = Tensor::zeros(pad_dims, t.dtype(), dev)?;
            if k >= n {
                return Ok(pad);
            }
            Tensor::cat(&[&pad, &t.narrow(dim, 0, n - k)?], dim)
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let mut keys: Vec<(Tensor, Tensor)> = Vec::with_capacity(steps);
        let mut outs: Vec<Tensor> = Vec::with_capacity(steps);
        for step in 0..steps {
            let f = if step == 0 { feat.clone() } else { shift(&outs[step - 1], 0, 1)? };
            let x = Tensor::cat(&[emb, &f], 1)?.matmul(&self.p("fc.weight").t()?)?.broadcast_add(self.p("fc.bias"))?;
            let proj = |name: &str, heads: usize| -> candle_core::Result<Tensor> {
                x.matmul(&self.p(name).t()?)?.reshape((n, heads, hd))?.transpose(0, 1)?.contiguous()
            };
            let q = rope(&proj("layers.0.self_attn.q_proj.weight", nh)?)?;
            let k = expand(&rope(&proj("layers.0.self_attn.k_proj.weight", nkv)?)?)?;
            let v = expand(&proj("layers.0.self_attn.v_proj.weight", nkv)?)?;
            keys.push((k, v));
            // The committed prefix: step-0 keys at positions j <= t - step.
            let mask: Vec<f32> = (0..n).flat_map(|i| (0..n).map(move |j| if j + step <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
            let mask = Tensor::from_vec(mask, (n, n), dev)?;
            let mut scores = vec![(q.matmul(&keys[0].0.t()?)? * scale)?.broadcast_add(&mask)?];
            // One more column per later step r: the key of row t - step + r.
            for r in 1..=step {
                let kr = shift(&keys[r].0, 1, step - r)?;
                scores.push(((&q * &kr)?.sum_keepdim(2)? * scale)?);
            }
            let att = log_softmax(&Tensor::cat(&scores, 2)?)?.exp()?;
            let mut o = att.narrow(2, 0, n)?.matmul(&keys[0].1)?;
            for r in 1..=step {
                let vr = shift(&keys[r].1, 1, step - r)?;
                o = (o + att.narrow(2, n + r - 1, 1)?.broadcast_mul(&vr)?)?;
            }
            let o = o.transpose(0, 1)?.reshape((n, nh * hd))?;
            let x = (x + o.matmul(&self.p("layers.0.self_attn.o_proj.weight").t()?)?)?;
            let xn = rms_norm(&x, self.p("layers.0.post_attention_layernorm.weight"), s.rms_eps)?;
            let gate = xn.matmul(&self.p("layers.0.mlp.gate_proj.weight").t()?)?.silu()?;
            let up = xn.matmul(&self.p("layers.0.mlp.up_proj.weight").t()?)?;
            outs.push((x + (gate * up)?.matmul(&self.p("layers.0.mlp.down_proj.weight").t()?)?)?);
        }
        Ok(outs)
    }

    /// The loss of one sequence (`lm_hot`: `V_hot × H`, frozen), over
    /// `steps` unrolled draft steps with weights `decay^s` (EAGLE-3's
    /// training-time test; `steps = 1` is EAGLE-1's loss).
    pub fn loss(&self, b: &PairBatch, lm_hot: &Tensor, ce_weight: f64, steps: usize, decay: f64) -> Result<LossParts> {
        (|| -> candle_core::Result<LossParts> {
            let steps = steps.max(1);
            let n = b.emb.dim(0)?;
            let preds = self.forward_steps(&b.emb, &b.feat, steps)?;
            // Every step predicts the same targets; their distribution is computed once.
            let target_p = log_softmax(&b.next.matmul(&lm_hot.t()?)?)?.exp()?.detach();
            let target_top = target_p.argmax(D::Minus1)?;
            let mut total: Option<Tensor> = None;
            let (mut l1_sum, mut ce_sum, mut correct, mut rows) = (0.0f32, 0.0f32, Vec::new(), 0.0f32);
            for (step, pred) in preds.iter().enumerate() {
                // Rows t < step have no chain of `step` drafts before them.
                let valid: Vec<f32> = (0..n).map(|t| if t >= step { 1.0 } else { 0.0 }).collect();
                let w = (Tensor::from_vec(valid, n, b.emb.device())? * &b.weight)?;
                let d = (pred - &b.next)?.abs()?;
                let small = d.minimum(1.0)?;
                // SmoothL1 with beta 1: 0.5·d² below 1, d − 0.5 above.
                let l1_rows = ((small.sqr()? * 0.5)? + (d - small)?)?.mean(D::Minus1)?;
                let logits = pred.matmul(&lm_hot.t()?)?;
                let ce_rows = (target_p.clone() * log_softmax(&logits)?)?.sum(D::Minus1)?.neg()?;
                let l1 = (l1_rows * &w)?.sum_all()?;
                let ce = (ce_rows * &w)?.sum_all()?;
                let part = ((&l1 + (&ce * ce_weight)?)? * decay.powi(step as i32))?;
                total = Some(match total { None => part, Some(t) => (t + part)? });
                let hit = logits.argmax(D::Minus1)?.eq(&target_top)?.to_dtype(DType::F32)?;
                correct.push((hit * &w)?.sum_all()?.to_scalar::<f32>()?);
                if step == 0 {
                    l1_sum = l1.to_scalar()?;
                    ce_sum = ce.to_scalar()?;
                    rows = w.sum_all()?.to_scalar()?;
                }
            }
            Ok(LossParts { l1: l1_sum, ce: ce_sum, total: total.expect("at least one step"), correct: correct[0], correct_last: *correct.last().expect("a step"), rows })
        })()
        .map_err(cerr)
    }
}
