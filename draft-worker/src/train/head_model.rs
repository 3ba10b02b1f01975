//! EAGLE heads as differentiable candle graphs, for training.
//!
//! Same computations as [`crate::eagle::EagleHead::forward`] and
//! [`crate::eagle::EagleHead::logits`] (which serve the trained weights).
//! For pair `t` of a sequence (token `x_{t+1}`, target features of `x_t`):
//!
//! - EAGLE-1/2: `x = fc(cat(embed(x_{t+1}), f_t))`, then one Llama decoder
//!   layer without an input norm (causal attention with half-split rotary
//!   embeddings, then a SiLU-gated MLP). The output `x` is the predicted
//!   `f_{t+1}`; its logits are the target's lm_head applied to it.
//! - EAGLE-3: `h = fc(a_t)`, where `a_t` is the target's three aux-layer
//!   outputs concatenated (3H); attention reads
//!   `cat(input_layernorm(embed(x_{t+1})), hidden_norm(h))` (2H wide), then
//!   `x = h + attn` and the MLP. Logits are the head's own
//!   `lm_head(norm(x))` over its draft vocabulary.
//! - MTP (MiMo's layout, `model.mtp_layers.0.*`): `x =
//!   input_proj(cat(hidden_layernorm(f_t), token_layernorm(embed(x_{t+1}))))`,
//!   then one decoder layer with its input norm, then `final_layernorm`: the
//!   normed output is both the predicted `f_{t+1}` and the lm_head's input.
//!   Its q/k/v biases (a Qwen2 layer has them) stay zero and untrained;
//!   the embedding at position 0 is zeroed, as served.
//!   Same loss as EAGLE-1: the output lives in the space of the target's
//!   final normed states.
//!
//! Loss. EAGLE-1: SmoothL1(x, f_{t+1}) averaged over the hidden size, plus
//! `ce_weight` × cross-entropy of the logits against the target's
//! distribution `softmax(lm_head(f_{t+1}))`. EAGLE-3 has no feature target
//! (its `x` lives in no space of the target's), so its loss is the
//! cross-entropy alone. Both restrict the distributions to a hot vocabulary
//! (the most frequent answer tokens; for EAGLE-3 that is its draft
//! vocabulary) so the loss costs a fraction of a full-vocabulary product;
//! rows are weighted by the assistant mask of the token they read.
//!
//! Training-time test ([`TrainHead::forward_steps`]): with `steps > 1` the
//! head is also run on its own predicted features, as it is at draft depth
//! 2, 3, …, with the attention a served tree node sees, and each step's
//! loss is weighted `decay^s` (EAGLE-3 uses 0.8). Without it the head only
//! ever reads true features, and its acceptance collapses after the first
//! draft token.

use crate::eagle::EagleKind;
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
    pub kind: EagleKind,
    pub params: Vec<(String, Var)>,
    /// EAGLE-3: the target id of each row of the head's own lm_head (written
    /// out as `d2t`/`t2d`). Empty for EAGLE-1/2.
    pub draft_ids: Vec<u32>,
    /// EAGLE-3: the target layers whose outputs feed `fc`. Empty for EAGLE-1/2.
    pub aux_layers: Vec<usize>,
}

/// One sequence's training inputs: `n` pairs.
pub struct PairBatch {
    /// `n × H` embeddings of tokens `x_{t+1}`.
    pub emb: Tensor,
    /// `n × H` target features `f_t` (noise already added); for EAGLE-3
    /// `n × 3H` aux-layer outputs.
    pub feat: Tensor,
    /// `n × H` targets `f_{t+1}` (the target's final normed hidden states:
    /// the L1 target of EAGLE-1/2 and, through its lm_head, everyone's soft labels).
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
    /// A fresh EAGLE-1/2 head: normal(0, std) weights, unit norms, and `fc`
    /// starting as the identity on the feature half (so the first prediction
    /// of `f_{t+1}` is `f_t`, a far better start than zero).
    pub fn init(shape: HeadShape, seed: u64, std: f32) -> Result<TrainHead> {
        Self::build(shape, seed, std, EagleKind::Eagle, Vec::new(), Vec::new(), Vec::new())
    }

    /// A fresh EAGLE-3 head over the draft vocabulary `draft_ids`. Its
    /// lm_head starts as `lm_rows` (`draft_ids.len() × H`, the target's rows
    /// for those ids) and `fc` as the identity on the deepest aux layer plus
    /// noise: the deepest layer is the nearest to the final features, so the
    /// first logits already resemble the target's.
    pub fn init_eagle3(shape: HeadShape, seed: u64, std: f32, aux_layers: Vec<usize>, draft_ids: Vec<u32>, lm_rows: Vec<f32>) -> Result<TrainHead> {
        if aux_layers.len() != 3 || aux_layers.windows(2).any(|w| w[0] >= w[1]) || lm_rows.len() != draft_ids.len() * shape.hidden {
            return Err(DraftError::Train(format!("EAGLE-3 head: aux layers {aux_layers:?} (need 3, ascending), {} lm_head values for {} draft ids", lm_rows.len(), draft_ids.len())));
        }
        Self::build(shape, seed, std, EagleKind::Eagle3, aux_layers, draft_ids, lm_rows)
    }

    /// A fresh MTP layer in MiMo's layout: like [`Self::init`], with
    /// `input_proj` the identity on the hidden-state half (MiMo puts the
    /// hidden state first) and unit norms.
    pub fn init_mtp(shape: HeadShape, seed: u64, std: f32) -> Result<TrainHead> {
        Self::build(shape, seed, std, EagleKind::Mtp, Vec::new(), Vec::new(), Vec::new())
    }

    fn build(shape: HeadShape, seed: u64, std: f32, kind: EagleKind, aux_layers: Vec<usize>, draft_ids: Vec<u32>, lm_rows: Vec<f32>) -> Result<TrainHead> {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let HeadShape { hidden: h, heads, kv_heads, head_dim, ff, .. } = shape;
        let mut normal = |rows: usize, cols: usize| -> Vec<f32> { (0..rows * cols).map(|_| approx_normal(&mut rng, std)).collect() };
        let dev = Device::Cpu;
        let eagle3 = kind == EagleKind::Eagle3;
        let (fc_in, attn_in) = if eagle3 { (3 * h, 2 * h) } else { (2 * h, h) };
        let mut params = Vec::new();
        let mtp = kind == EagleKind::Mtp;
        let mut fc = normal(h, fc_in);
        // The feature's block: last for EAGLE's cat(embedding, feature), first for MiMo's cat(hidden, token).
        let feat_at = if mtp { 0 } else { fc_in - h };
        for i in 0..h {
            fc[i * fc_in + feat_at + i] += 1.0;
        }
        let mut push = |name: &str, data: Vec<f32>, dims: &[usize]| -> Result<()> {
            params.push((name.to_string(), Var::from_vec(data, dims, &dev).map_err(cerr)?));
            Ok(())
        };
        let pre = layer_prefix(kind);
        if mtp {
            push(&format!("{pre}.input_proj.weight"), fc, &[h, fc_in])?;
            for n in ["token_layernorm", "hidden_layernorm", "final_layernorm", "input_layernorm"] {
                push(&format!("{pre}.{n}.weight"), vec![1.0; h], &[h])?;
            }
        } else {
            push("fc.weight", fc, &[h, fc_in])?;
        }
        if !eagle3 && !mtp {
            push("fc.bias", vec![0.0; h], &[h])?;
        }
        let (qd, kvd) = (heads * head_dim, kv_heads * head_dim);
        push(&format!("{pre}.self_attn.q_proj.weight"), normal(qd, attn_in), &[qd, attn_in])?;
        push(&format!("{pre}.self_attn.k_proj.weight"), normal(kvd, attn_in), &[kvd, attn_in])?;
        push(&format!("{pre}.self_attn.v_proj.weight"), normal(kvd, attn_in), &[kvd, attn_in])?;
        push(&format!("{pre}.self_attn.o_proj.weight"), normal(h, qd), &[h, qd])?;
        push(&format!("{pre}.post_attention_layernorm.weight"), vec![1.0; h], &[h])?;
        push(&format!("{pre}.mlp.gate_proj.weight"), normal(ff, h), &[ff, h])?;
        push(&format!("{pre}.mlp.up_proj.weight"), normal(ff, h), &[ff, h])?;
        push(&format!("{pre}.mlp.down_proj.weight"), normal(h, ff), &[h, ff])?;
        if eagle3 {
            push("midlayer.input_layernorm.weight", vec![1.0; h], &[h])?;
            push("midlayer.hidden_norm.weight", vec![1.0; h], &[h])?;
            push("norm.weight", vec![1.0; h], &[h])?;
            push("lm_head.weight", lm_rows, &[draft_ids.len(), h])?;
        }
        Ok(TrainHead { shape, kind, params, draft_ids, aux_layers })
    }

    fn p(&self, name: &str) -> &Tensor {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_tensor()).unwrap_or_else(|| panic!("parameter {name}"))
    }

    /// A parameter of the decoder layer (`layers.0.*` or EAGLE-3's `midlayer.*`).
    fn layer(&self, name: &str) -> &Tensor {
        self.p(&format!("{}.{name}", layer_prefix(self.kind)))
    }

    /// Draft logits of output states (`n × H`): EAGLE-1/2 through the
    /// target's frozen rows `lm_hot`, EAGLE-3 through its own final norm and
    /// lm_head (whose rows are the same hot ids).
    pub fn logits(&self, x: &Tensor, lm_hot: &Tensor) -> candle_core::Result<Tensor> {
        match self.kind {
            // An MTP layer's output is already normed (`final_layernorm`).
            EagleKind::Eagle | EagleKind::Mtp => x.matmul(&lm_hot.t()?),
            EagleKind::Eagle3 => rms_norm(x, self.p("norm.weight"), self.shape.rms_eps)?.matmul(&self.p("lm_head.weight").t()?),
        }
    }

    /// Output states (`n × H`) for one sequence's pairs (step 0 of
    /// [`Self::forward_steps`]: true features, causal attention).
    pub fn forward(&self, emb: &Tensor, feat: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.forward_steps(emb, feat, 1)?.remove(0))
    }

    /// The head unrolled over `steps` draft steps (training-time test).
    ///
    /// Step 0 reads the true features: row `t` is `(x_{t+1}, f_t)` (EAGLE-3:
    /// `f_t` is `fc` of the aux rows; later steps skip `fc`, as a served
    /// EAGLE-3 head does with its own H-wide states). Step
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
        let eagle3 = self.kind == EagleKind::Eagle3;
        // EAGLE-3's normed embeddings are the same at every step.
        let emb_normed = if eagle3 { Some(rms_norm(emb, self.p("midlayer.input_layernorm.weight"), s.rms_eps)?) } else { None };
        for step in 0..steps {
            let f = if step == 0 { feat.clone() } else { shift(&outs[step - 1], 0, 1)? };
            let x = match (self.kind, step) {
                (EagleKind::Eagle, _) => Tensor::cat(&[emb, &f], 1)?.matmul(&self.p("fc.weight").t()?)?.broadcast_add(self.p("fc.bias"))?,
                (EagleKind::Mtp, _) => {
                    let hf = rms_norm(&f, self.layer("hidden_layernorm.weight"), s.rms_eps)?;
                    // The embedding at position 0 is zeroed, as SGLang and vLLM serve MTP layers.
                    let first_zero = Tensor::from_vec((0..n).map(|t| if t == 0 { 0f32 } else { 1.0 }).collect::<Vec<f32>>(), (n, 1), dev)?;
                    let he = rms_norm(emb, self.layer("token_layernorm.weight"), s.rms_eps)?.broadcast_mul(&first_zero)?;
                    Tensor::cat(&[&hf, &he], 1)?.matmul(&self.layer("input_proj.weight").t()?)?
                }
                (EagleKind::Eagle3, 0) => f.matmul(&self.p("fc.weight").t()?)?,
                (EagleKind::Eagle3, _) => f,
            };
            let attn_in = match (&emb_normed, self.kind) {
                (Some(e), _) => Tensor::cat(&[e, &rms_norm(&x, self.p("midlayer.hidden_norm.weight"), s.rms_eps)?], 1)?,
                (None, EagleKind::Mtp) => rms_norm(&x, self.layer("input_layernorm.weight"), s.rms_eps)?,
                (None, _) => x.clone(),
            };
            let proj = |name: &str, heads: usize| -> candle_core::Result<Tensor> {
                attn_in.matmul(&self.layer(name).t()?)?.reshape((n, heads, hd))?.transpose(0, 1)?.contiguous()
            };
            let q = rope(&proj("self_attn.q_proj.weight", nh)?)?;
            let k = expand(&rope(&proj("self_attn.k_proj.weight", nkv)?)?)?;
            let v = expand(&proj("self_attn.v_proj.weight", nkv)?)?;
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
            let x = (x + o.matmul(&self.layer("self_attn.o_proj.weight").t()?)?)?;
            let xn = rms_norm(&x, self.layer("post_attention_layernorm.weight"), s.rms_eps)?;
            let gate = xn.matmul(&self.layer("mlp.gate_proj.weight").t()?)?.silu()?;
            let up = xn.matmul(&self.layer("mlp.up_proj.weight").t()?)?;
            let out = (x + (gate * up)?.matmul(&self.layer("mlp.down_proj.weight").t()?)?)?;
            outs.push(if self.kind == EagleKind::Mtp { rms_norm(&out, self.layer("final_layernorm.weight"), s.rms_eps)? } else { out });
        }
        Ok(outs)
    }

    /// The loss of one sequence (`lm_hot`: `V_hot × H`, frozen), over
    /// `steps` unrolled draft steps with weights `decay^s` (EAGLE-3's
    /// training-time test; `steps = 1` is EAGLE-1's loss). `ce_weight`
    /// applies to EAGLE-1/2, whose loss also has the L1 term.
    pub fn loss(&self, b: &PairBatch, lm_hot: &Tensor, ce_weight: f64, steps: usize, decay: f64) -> Result<LossParts> {
        (|| -> candle_core::Result<LossParts> {
            let steps = steps.max(1);
            let preds = self.forward_steps(&b.emb, &b.feat, steps)?;
            // Only trained rows (weight > 0) reach the loss. The prompt rows
            // are context for the attention above, but their logits would be
            // weighted 0, and the hot-vocabulary products are most of a
            // step's work, so the rows are gathered first.
            let weights = b.weight.to_vec1::<f32>()?;
            let kept: Vec<u32> = (0..weights.len() as u32).filter(|&t| weights[t as usize] > 0.0).collect();
            let kept_n = kept.len();
            let dev = b.emb.device();
            if kept_n == 0 {
                let zero = Tensor::zeros((), DType::F32, dev)?;
                return Ok(LossParts { total: zero, l1: 0.0, ce: 0.0, correct: 0.0, correct_last: 0.0, rows: 0.0 });
            }
            let idx = Tensor::from_vec(kept.clone(), kept_n, dev)?;
            let next = b.next.index_select(&idx, 0)?;
            // Every step predicts the same targets; their distribution is computed once.
            let target_p = log_softmax(&next.matmul(&lm_hot.t()?)?)?.exp()?.detach();
            let target_top = target_p.argmax(D::Minus1)?;
            let mut total: Option<Tensor> = None;
            let (mut l1_sum, mut ce_sum, mut correct, mut rows) = (0.0f32, 0.0f32, Vec::new(), 0.0f32);
            for (step, pred) in preds.iter().enumerate() {
                // Rows t < step have no chain of `step` drafts before them.
                let w: Vec<f32> = kept.iter().map(|&t| if t as usize >= step { weights[t as usize] } else { 0.0 }).collect();
                let w = Tensor::from_vec(w, kept_n, dev)?;
                let pred = pred.index_select(&idx, 0)?;
                let logits = self.logits(&pred, lm_hot)?;
                let ce_rows = (target_p.clone() * log_softmax(&logits)?)?.sum(D::Minus1)?.neg()?;
                let ce = (ce_rows * &w)?.sum_all()?;
                let (l1, part) = if self.kind == EagleKind::Eagle3 {
                    (Tensor::zeros((), DType::F32, dev)?, ce.clone())
                } else {
                    let d = (&pred - &next)?.abs()?;
                    let small = d.minimum(1.0)?;
                    // SmoothL1 with beta 1: 0.5·d² below 1, d − 0.5 above.
                    let l1_rows = ((small.sqr()? * 0.5)? + (d - small)?)?.mean(D::Minus1)?;
                    let l1 = (l1_rows * &w)?.sum_all()?;
                    let part = (&l1 + (&ce * ce_weight)?)?;
                    (l1, part)
                };
                let part = (part * decay.powi(step as i32))?;
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

/// Parameter prefix of the head's decoder layer in the published layouts.
fn layer_prefix(kind: EagleKind) -> &'static str {
    match kind {
        EagleKind::Eagle => "layers.0",
        EagleKind::Eagle3 => "midlayer",
        EagleKind::Mtp => "model.mtp_layers.0",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loss gathers the trained rows before its vocabulary products;
    /// it must equal the loss written out over every row with the weights
    /// applied afterwards, and ignore what the untrained rows hold.
    #[test]
    fn loss_over_gathered_rows_equals_the_weighted_loss_over_all_rows() {
        let shape = HeadShape { hidden: 8, heads: 2, kv_heads: 1, head_dim: 4, ff: 12, rms_eps: 1e-5, rope_theta: 10000.0 };
        let head = TrainHead::init(shape, 3, 0.3).unwrap();
        let dev = Device::Cpu;
        let n = 6;
        let vals = |seed: u32, len: usize| -> Vec<f32> { (0..len as u32).map(|i| (((i * 2654435761u32) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect() };
        let t = |v: Vec<f32>, w: usize| Tensor::from_vec(v, (n, w), &dev).unwrap();
        let weight = vec![0.0f32, 1.0, 0.0, 1.0, 1.0, 0.0];
        let lm_hot = Tensor::from_vec(vals(7, 5 * 8), (5, 8), &dev).unwrap();
        let batch = |next: Vec<f32>| PairBatch { emb: t(vals(1, n * 8), 8), feat: t(vals(2, n * 8), 8), next: t(next, 8), weight: Tensor::from_vec(weight.clone(), n, &dev).unwrap() };
        let b = batch(vals(3, n * 8));
        let (ce_weight, steps, decay) = (0.1, 2, 0.8);
        let got = head.loss(&b, &lm_hot, ce_weight, steps, decay).unwrap();

        // The same loss, every row computed, weights applied at the end.
        let preds = head.forward_steps(&b.emb, &b.feat, steps).unwrap();
        let tp = log_softmax(&b.next.matmul(&lm_hot.t().unwrap()).unwrap()).unwrap().exp().unwrap().to_vec2::<f32>().unwrap();
        let next = b.next.to_vec2::<f32>().unwrap();
        let mut want = 0.0f64;
        for (s, pred) in preds.iter().enumerate() {
            let lp = log_softmax(&head.logits(pred, &lm_hot).unwrap()).unwrap().to_vec2::<f32>().unwrap();
            let p = pred.to_vec2::<f32>().unwrap();
            for r in s..n {
                let ce: f64 = -(0..5).map(|v| (tp[r][v] * lp[r][v]) as f64).sum::<f64>();
                let l1: f64 = (0..8).map(|c| {
                    let d = (p[r][c] - next[r][c]).abs() as f64;
                    if d < 1.0 { 0.5 * d * d } else { d - 0.5 }
                }).sum::<f64>() / 8.0;
                want += decay.powi(s as i32) * weight[r] as f64 * (l1 + ce_weight * ce);
            }
        }
        let total = got.total.to_scalar::<f32>().unwrap() as f64;
        assert!((total - want).abs() < 1e-4 * want.max(1.0), "gathered loss {total}, full loss {want}");
        assert_eq!(got.rows, 3.0);

        // Untrained rows' targets do not reach the loss.
        let mut other = vals(3, n * 8);
        for c in 0..8 {
            other[2 * 8 + c] += 5.0;
            other[5 * 8 + c] -= 5.0;
        }
        let moved = head.loss(&batch(other), &lm_hot, ce_weight, steps, decay).unwrap();
        assert_eq!(moved.total.to_scalar::<f32>().unwrap(), got.total.to_scalar::<f32>().unwrap());
    }
}
