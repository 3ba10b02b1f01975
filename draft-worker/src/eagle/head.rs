//! EAGLE-1/2 and EAGLE-3 draft heads: weights and forward pass.
//!
//! EAGLE-1/2 row: `x = fc(cat(embed(t), f))`, then decoder layers (layer 0
//! skips its input norm); the output `x` is both the next step's feature and
//! the lm_head input (no final norm).
//! EAGLE-3 row: `h = fc(f)` when `f` is the 3H target feature (a draft
//! state is already H wide); attention reads
//! `cat(input_layernorm(embed(t)), hidden_norm(h))`; `x = h + attn`, then the
//! MLP; `x` is the next feature and `norm(x)` the lm_head input.
//! MTP row ([`super::mtp`]): `x = proj(cat(hidden_norm(f), token_norm(e)))`
//! (NextN: the embedding first), then a full decoder layer; MiMo's output
//! is normed once more and is both the next state and the lm_head input,
//! NextN's is the next state and `shared_head.norm(x)` the lm_head input.

use super::config::{EagleConfig, EagleKind};
use super::mtp::{MtpCheckpoint, MtpLayout};
use crate::error::{DraftError, Result};
use crate::token_map::TokenMap;
use aerie_engine::config::ModelConfig;
use aerie_engine::cuda::head::{DeviceHead, HeadInput, HeadSeq, HeadWeights, LmHead};
use aerie_engine::cuda::layer::LayerWeights;
use aerie_engine::layers::{self, add_into, norm_rows, AttnPlan, AttnShape, Rope};
use aerie_engine::loader::hf::SafetensorsDir;
use aerie_engine::weights::Linear;
use aerie_engine::{AttnMask, EngineError, KvCache, Model};
use aerie_kernels::cpu::{BlockFormat, Matrix};
use aerie_kernels::cuda::device::Device;
use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

/// One sequence's rows for [`EagleHead::forward_many`].
pub struct HeadRows<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    /// `tokens.len() × width` incoming features or states.
    pub states: &'a [f32],
    pub positions: &'a [u32],
    pub mask: AttnMask,
}

struct HeadLayer {
    /// `None` for EAGLE-1's layer 0.
    input_norm: Option<Vec<f32>>,
    qkv: Linear,
    wo: Matrix,
    post_norm: Vec<f32>,
    gate_up: Linear,
    down: Matrix,
}

/// The parts only an MTP layer has.
struct MtpParts {
    /// RMSNorm of the token embedding.
    token_norm: Vec<f32>,
    /// RMSNorm of the incoming feature or state.
    hidden_norm: Vec<f32>,
    /// MiMo concatenates `[hidden, token]`; NextN `[token, hidden]`.
    hidden_first: bool,
    /// MiMo's `final_layernorm`, applied to the layer output itself.
    out_norm: Option<Vec<f32>>,
}

/// A loaded draft head, bound to the shape of its target.
pub struct EagleHead {
    pub config: EagleConfig,
    fc: Linear,
    layers: Vec<HeadLayer>,
    /// EAGLE-3: norm applied to the incoming feature.
    hidden_norm: Option<Vec<f32>>,
    /// EAGLE-3: norm before the lm_head.
    final_norm: Option<Vec<f32>>,
    /// The head's own output rows (EAGLE-3, or a token-mapped EAGLE head);
    /// `None` uses the target's lm_head.
    lm_head: Option<Matrix>,
    /// Target id of each lm_head row when the head has a reduced vocabulary.
    vocab_map: Option<Vec<u32>>,
    /// The lm_head rows are the target's (all, or a token map's), not the
    /// head's own: heads of one chain may then share them on a device.
    lm_from_target: bool,
    rope: Rope,
    /// Target layers feeding EAGLE-3's fc (empty for EAGLE-1/2).
    pub aux_layers: Vec<usize>,
    mtp: Option<MtpParts>,
    /// The layers and lm_head on a CUDA device (a GPU or the interpreter),
    /// where [`EagleHead::to_device`] put them: `forward`, `logits` and the
    /// caches follow it, as a [`Model`]'s do.
    device: Option<DeviceHead>,
}

/// Finds `name` with or without a `model.` prefix.
fn tensor_name(st: &SafetensorsDir, name: &str) -> String {
    if st.has(name) {
        name.to_string()
    } else {
        let p = format!("model.{name}");
        if st.has(&p) {
            p
        } else {
            name.to_string()
        }
    }
}

/// Reads one decoder layer of a head under `name(suffix)`: q/k/v over
/// `attn_in` inputs (EAGLE-3's midlayer attends over `[embedding, state]`,
/// 2H wide), with q/k/v biases when `bias` (Qwen2-style MTP layers), and no
/// input norm when `no_input_norm` (EAGLE-1's layer 0).
fn read_layer(st: &SafetensorsDir, c: &ModelConfig, attn_in: usize, no_input_norm: bool, bias: bool, name: impl Fn(&str) -> String) -> Result<HeadLayer> {
    let (h, qd, kvd, ff) = (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.intermediate_size);
    let m = |s: &str, r, k| st.matrix(&name(s), r, k);
    let b = |s: &str, len| -> Result<Option<Vec<f32>>> { Ok(if bias { Some(st.vector(&name(s), len)?) } else { None }) };
    Ok(HeadLayer {
        input_norm: if no_input_norm { None } else { Some(st.vector(&name("input_layernorm.weight"), h)?) },
        qkv: Linear::fuse(
            vec![m("self_attn.q_proj.weight", qd, attn_in)?, m("self_attn.k_proj.weight", kvd, attn_in)?, m("self_attn.v_proj.weight", kvd, attn_in)?],
            vec![b("self_attn.q_proj.bias", qd)?, b("self_attn.k_proj.bias", kvd)?, b("self_attn.v_proj.bias", kvd)?],
        ),
        wo: m("self_attn.o_proj.weight", h, qd)?,
        post_norm: st.vector(&name("post_attention_layernorm.weight"), h)?,
        gate_up: Linear::fuse(vec![m("mlp.gate_proj.weight", ff, h)?, m("mlp.up_proj.weight", ff, h)?], vec![None, None]),
        down: m("mlp.down_proj.weight", h, ff)?,
    })
}

impl EagleHead {
    /// Loads a head directory for `target`, refusing mismatches. A token
    /// map restricts the draft vocabulary (FR-Spec) of heads that use the
    /// target's lm_head.
    pub fn load(dir: &Path, target: &Model, token_map: Option<&TokenMap>) -> Result<EagleHead> {
        let config = EagleConfig::read(dir)?;
        config.check_target(&target.config)?;
        let st = SafetensorsDir::open(dir)?;
        let c = &config.llama;
        let h = c.hidden_size;
        let m = |n: &str, r, k| st.matrix(&tensor_name(&st, n), r, k);
        let vec = |n: &str, len| st.vector(&tensor_name(&st, n), len);
        let eagle3 = config.kind == EagleKind::Eagle3;
        if eagle3 && c.num_layers != 1 {
            return Err(DraftError::HeadMismatch { path: dir.to_path_buf(), msg: format!("EAGLE-3 heads with {} layers are not supported (one midlayer)", c.num_layers) });
        }
        if !eagle3 && st.has(&tensor_name(&st, "midlayer.self_attn.q_proj.weight")) {
            return Err(DraftError::HeadMismatch { path: dir.to_path_buf(), msg: "this is an EAGLE-3 head (it has `midlayer.*`); use --speculative-algorithm EAGLE3".into() });
        }
        let feat_in = if eagle3 { 3 * config.target_hidden_size.unwrap_or(h) } else { 2 * h };
        let fc_bias_name = tensor_name(&st, "fc.bias");
        let fc_bias = if st.has(&fc_bias_name) { Some(st.vector(&fc_bias_name, h)?) } else { None };
        let fc = Linear::fuse(vec![m("fc.weight", h, feat_in)?], vec![fc_bias]);
        let attn_in = if eagle3 { 2 * h } else { h };
        let mut layers_w = Vec::new();
        for i in 0..c.num_layers {
            let p = if eagle3 { "midlayer".to_string() } else { format!("layers.{i}") };
            let name = |s: &str| tensor_name(&st, &format!("{p}.{s}"));
            // EAGLE-1's layer 0 has no input norm: fc's output enters it as is.
            layers_w.push(read_layer(&st, c, attn_in, !eagle3 && i == 0, false, name)?);
        }
        let (hidden_norm, final_norm, mut lm_head, mut vocab_map) = if eagle3 {
            let dv = config.draft_vocab_size.unwrap_or(c.vocab_size);
            let lm = m("lm_head.weight", dv, h)?;
            let map = if st.has(&tensor_name(&st, "d2t")) {
                let d2t = read_ints(&st, &tensor_name(&st, "d2t"), dir)?;
                if d2t.len() != dv {
                    return Err(DraftError::HeadMismatch { path: dir.to_path_buf(), msg: format!("d2t has {} entries for a draft vocabulary of {dv}", d2t.len()) });
                }
                let ids: Vec<u32> = d2t.iter().enumerate().map(|(i, &d)| i as i64 + d).map(|t| u32::try_from(t).unwrap_or(u32::MAX)).collect();
                if let Some(bad) = ids.iter().find(|&&t| t as usize >= c.vocab_size) {
                    return Err(DraftError::HeadMismatch { path: dir.to_path_buf(), msg: format!("d2t maps a draft token to {bad}, outside the target vocabulary of {}", c.vocab_size) });
                }
                Some(ids)
            } else if dv == c.vocab_size {
                None
            } else {
                return Err(DraftError::HeadMismatch { path: dir.to_path_buf(), msg: format!("draft_vocab_size {dv} < vocab_size {} but the checkpoint has no d2t", c.vocab_size) });
            };
            (Some(vec("midlayer.hidden_norm.weight", h)?), Some(vec("norm.weight", h)?), Some(lm), map)
        } else {
            (None, None, None, None)
        };
        if let Some(tm) = token_map {
            if eagle3 {
                return Err(DraftError::BadSetting(
                    "--speculative-token-map applies to EAGLE heads that use the target's lm_head; EAGLE-3 heads carry their own draft vocabulary (d2t)".into(),
                ));
            }
            let (rows, ids) = token_map_rows(tm, target, h)?;
            lm_head = Some(rows);
            vocab_map = Some(ids);
        }
        let aux_layers = if eagle3 { config.aux_layers(target.config.num_layers)? } else { Vec::new() };
        // The head's own (HF) layout decides its rotary pairing, not the
        // target's file format: a GGUF target permutes its q/k rows for
        // interleaved pairs, but heads are published, trained and loaded by
        // SGLang with the half-split pairing.
        let rope = Rope::new(&c.inv_freqs(), c.rope_theta, c.rope_style);
        Ok(EagleHead { config, fc, layers: layers_w, hidden_norm, final_norm, lm_from_target: !eagle3, lm_head, vocab_map, rope, aux_layers, mtp: None, device: None })
    }

    /// Loads MTP layer `layer` of `ck` (a target's own checkpoint, or a
    /// separate NextN one) as a one-layer head for `target`. A missing or
    /// misshaped tensor is refused with its name. A token map restricts
    /// the draft vocabulary as for EAGLE heads, when the layer uses the
    /// target's lm_head.
    pub fn load_mtp(ck: &MtpCheckpoint, layer: usize, target: &Model, token_map: Option<&TokenMap>) -> Result<EagleHead> {
        Self::load_mtp_from(&SafetensorsDir::open(&ck.dir)?, ck, layer, target, token_map)
    }

    /// Loads MTP layers `0..count` of `ck`, opening its files once: layer
    /// `k` drafts depth `k + 1` (see `ChainLayer`).
    pub fn load_mtp_layers(ck: &MtpCheckpoint, count: usize, target: &Model, token_map: Option<&TokenMap>) -> Result<Vec<EagleHead>> {
        let st = SafetensorsDir::open(&ck.dir)?;
        (0..count).map(|i| Self::load_mtp_from(&st, ck, i, target, token_map)).collect()
    }

    fn load_mtp_from(st: &SafetensorsDir, ck: &MtpCheckpoint, layer: usize, target: &Model, token_map: Option<&TokenMap>) -> Result<EagleHead> {
        if layer >= ck.num_layers {
            return Err(DraftError::HeadMismatch { path: ck.dir.clone(), msg: format!("MTP layer {layer} of {}", ck.num_layers) });
        }
        let config = EagleConfig { path: ck.dir.clone(), kind: EagleKind::Mtp, llama: ck.config.clone(), draft_vocab_size: None, aux_layer_ids: None, target_hidden_size: None };
        config.check_target(&target.config)?;
        ck.check_dense(st, layer)?;
        let names = ck.names(layer);
        let c = &config.llama;
        let h = c.hidden_size;
        let m = |n: String, r, k| st.matrix(&n, r, k);
        let vec = |n: String, len| st.vector(&n, len);
        let l = read_layer(st, c, h, false, c.attention_bias, |s| names.layer(s))?;
        let fc = Linear::fuse(vec![m(names.input_proj(), h, 2 * h)?], vec![None]);
        let mimo = ck.layout == MtpLayout::MiMo;
        let out_norm = vec(names.out_norm(), h)?;
        let mtp = MtpParts { token_norm: vec(names.token_norm(), h)?, hidden_norm: vec(names.hidden_norm(), h)?, hidden_first: mimo, out_norm: mimo.then(|| out_norm.clone()) };
        let final_norm = (!mimo).then_some(out_norm);
        let own_head = if !mimo && st.has(&names.own_head()) { Some(m(names.own_head(), c.vocab_size, h)?) } else { None };
        let lm_from_target = own_head.is_none();
        let (lm_head, vocab_map) = match (token_map, own_head) {
            (Some(_), Some(_)) => {
                return Err(DraftError::BadSetting("--speculative-token-map applies to MTP layers that use the target's lm_head; this one has its own (`shared_head.head`)".into()))
            }
            (Some(tm), None) => {
                let (rows, ids) = token_map_rows(tm, target, h)?;
                (Some(rows), Some(ids))
            }
            (None, head) => (head, None),
        };
        let rope = Rope::new(&c.inv_freqs(), c.rope_theta, c.rope_style);
        Ok(EagleHead { config, fc, layers: vec![l], hidden_norm: None, final_norm, lm_from_target, lm_head, vocab_map, rope, aux_layers: Vec::new(), mtp: Some(mtp), device: None })
    }

    /// Stores the head's weight matrices, and the hot lm_head rows, as Q8_0.
    /// Why: a draft step at serving time is memory-bound, and in f32 the head
    /// plus an 8,192-row hot lm_head is about 36 MB read per step, a third of
    /// the 135M target's 96 MB, where Q8_0 reads about 10 MB. A draft only
    /// has to be a good guess; the target verifies every token, so output
    /// stays lossless. Training and the checkpoint format keep f32/f16.
    pub fn quantized_q8(self) -> EagleHead {
        let q = BlockFormat::Q8_0;
        EagleHead {
            fc: self.fc.quantized(q),
            layers: self
                .layers
                .into_iter()
                .map(|l| HeadLayer { qkv: l.qkv.quantized(q), wo: l.wo.quantized(q), gate_up: l.gate_up.quantized(q), down: l.down.quantized(q), ..l })
                .collect(),
            lm_head: self.lm_head.map(|m| m.quantized(q)),
            ..self
        }
    }

    /// The same head with its layers, norms and lm_head on `dev` (bf16
    /// matrices, as the target's on a device), and a KV pool of
    /// `max_total_tokens` for its caches. A head without its own lm_head
    /// takes a copy of the target's rows (all of them, or its token map's).
    /// Call it before [`Self::quantized_q8`]: the device gets the
    /// checkpoint's own values, not 8-bit ones.
    pub fn to_device(self, target: &Model, dev: Arc<dyn Device>, max_total_tokens: usize) -> Result<EagleHead> {
        self.to_device_sharing(target, dev, max_total_tokens, None)
    }

    /// [`Self::to_device`], reusing `first`'s lm_head rows on the device when
    /// both heads draw from the same rows (MTP layers of one chain over the
    /// target's lm_head or one token map), instead of a copy per layer.
    pub fn to_device_sharing(mut self, target: &Model, dev: Arc<dyn Device>, max_total_tokens: usize, first: Option<&EagleHead>) -> Result<EagleHead> {
        let c = &self.config.llama;
        let h = c.hidden_size;
        let dense: Vec<[Vec<f32>; 4]> = self.layers.iter().map(|l| [l.qkv.dense_f32(), l.wo.to_f32_vec(), l.gate_up.dense_f32(), l.down.to_f32_vec()]).collect();
        let eagle3 = self.kind() == EagleKind::Eagle3;
        let attn_in = if eagle3 { 2 * h } else { h };
        let layers = self
            .layers
            .iter()
            .zip(&dense)
            .map(|(l, [qkv, wo, gate_up, down])| LayerWeights {
                // EAGLE-3's input norm applies to the embedding half, which
                // the host computes (`side` in `forward_many`).
                input_norm: if eagle3 { None } else { l.input_norm.as_deref() },
                qkv,
                qkv_bias: l.qkv.bias.as_deref(),
                wo,
                post_norm: &l.post_norm,
                gate_up,
                down,
                attn_in,
            })
            .collect();
        let fc = self.fc.dense_f32();
        let fc_width = fc.len() / h;
        let shared = first.filter(|f| f.lm_from_target && self.lm_from_target).and_then(|f| f.device.as_ref()).map(DeviceHead::lm_head);
        let rows = match (&shared, &self.lm_head) {
            (Some(_), _) => Vec::new(),
            (None, Some(m)) => m.to_f32_vec(),
            (None, None) => target.weights.lm_head().to_f32_vec(),
        };
        let w = HeadWeights {
            // An EAGLE-3 head projects target features; its draft states go in as they are.
            fc: Some((&fc, self.fc.bias.as_deref(), fc_width)),
            layers,
            hidden_norm: self.hidden_norm.as_deref(),
            out_norm: self.mtp.as_ref().and_then(|p| p.out_norm.as_deref()),
            final_norm: self.final_norm.as_deref(),
            lm_head: shared.unwrap_or(LmHead::Upload(&rows)),
        };
        self.device = Some(DeviceHead::new(dev, c, w, max_total_tokens)?);
        Ok(self)
    }

    /// Where the head runs, for logs: "cpu" or the device's name.
    pub fn device_name(&self) -> String {
        self.device.as_ref().map_or_else(|| "cpu".to_string(), |d| d.device().name())
    }

    pub fn kind(&self) -> EagleKind {
        self.config.kind
    }

    /// Width of the target feature this head takes.
    pub fn feature_width(&self) -> usize {
        match self.kind() {
            EagleKind::Eagle | EagleKind::Mtp => self.config.llama.hidden_size,
            EagleKind::Eagle3 => 3 * self.config.target_hidden_size.unwrap_or(self.config.llama.hidden_size),
        }
    }

    /// A KV cache for this head (on its device's pool when it has one).
    pub fn new_cache(&self) -> KvCache {
        match &self.device {
            Some(d) => d.new_cache(),
            None => KvCache::new(&self.config.llama),
        }
    }

    pub fn llama(&self) -> &ModelConfig {
        &self.config.llama
    }

    /// Runs `tokens` with their incoming features/states (`states.len() =
    /// n × width`, width H or the target feature width) at `positions`,
    /// appending them to `cache`. Returns the output states (`n × H`): each
    /// is the next step's incoming state and the input of [`Self::logits`].
    pub fn forward(&self, target: &Model, cache: &mut KvCache, tokens: &[u32], states: &[f32], positions: &[u32], mask: AttnMask) -> Result<Vec<f32>> {
        let mut one = [HeadRows { cache, tokens, states, positions, mask }];
        Ok(self.forward_many(target, &mut one)?.pop().unwrap_or_default())
    }

    /// [`Self::forward`] for several sequences in one pass: their rows are
    /// stacked, so each weight matrix is read once for all of them (drafting
    /// for a batch of requests costs little more than for one); every
    /// sequence attends to its own cache only. Returns each one's states.
    pub fn forward_many(&self, target: &Model, seqs: &mut [HeadRows]) -> Result<Vec<Vec<f32>>> {
        let c = &self.config.llama;
        let h = c.hidden_size;
        let live: Vec<usize> = (0..seqs.len()).filter(|&i| !seqs[i].tokens.is_empty()).collect();
        let n: usize = live.iter().map(|&i| seqs[i].tokens.len()).sum();
        if n == 0 {
            return Ok(vec![Vec::new(); seqs.len()]);
        }
        // One width for the whole call (a catch-up's target features, or a
        // tree step's H-wide draft states).
        let width = seqs[live[0]].states.len() / seqs[live[0]].tokens.len();
        for &i in &live {
            let r = &seqs[i];
            let k = r.tokens.len();
            if r.states.len() != k * width || r.positions.len() != k {
                return Err(EngineError::InvalidInput(format!("draft forward: {k} tokens, {} state floats, {} positions ({width} wide)", r.states.len(), r.positions.len())).into());
            }
        }
        let tokens: Vec<u32> = live.iter().flat_map(|&i| seqs[i].tokens.iter().copied()).collect();
        let states: Vec<f32> = live.iter().flat_map(|&i| seqs[i].states.iter().copied()).collect();
        let positions: Vec<u32> = live.iter().flat_map(|&i| seqs[i].positions.iter().copied()).collect();
        let emb = target.embed(&tokens)?;
        let proj_in = self.projection_input(&emb, &states, &positions, width)?;
        // EAGLE-3's midlayer (its one layer) sees the embedding, normed by
        // the layer's input norm, beside the normed state.
        let side = match (self.kind(), self.layers.first().and_then(|l| l.input_norm.as_ref())) {
            (EagleKind::Eagle3, Some(w)) => {
                let mut e = vec![0.0f32; n * h];
                norm_rows(&emb, w, c.rms_norm_eps, &mut e);
                Some(e)
            }
            _ => None,
        };
        if let Some(d) = &self.device {
            let mut rows: Vec<HeadSeq> = Vec::with_capacity(live.len());
            for r in seqs.iter_mut().filter(|r| !r.tokens.is_empty()) {
                rows.push(HeadSeq { cache: &mut *r.cache, tokens: r.tokens, positions: r.positions, mask: r.mask.clone() });
            }
            let input = match &proj_in {
                Some(p) => HeadInput::Project(p),
                None => HeadInput::States(&states),
            };
            let x = d.forward(&mut rows, input, side.as_deref())?;
            return Ok(split_rows(&x, seqs, &live, h));
        }
        let mut x = vec![0.0f32; n * h];
        match &proj_in {
            Some(p) => self.fc.forward(p, n, &mut x),
            None => x.copy_from_slice(&states),
        }
        let spans: Vec<(usize, &AttnMask)> = live.iter().map(|&i| (seqs[i].cache.len(), &seqs[i].mask)).collect();
        let counts: Vec<usize> = live.iter().map(|&i| seqs[i].tokens.len()).collect();
        let plan = AttnPlan::new(&spans, &counts, &positions, &self.rope);
        drop(spans);
        let mut caches: Vec<&mut KvCache> = Vec::with_capacity(live.len());
        for r in seqs.iter_mut() {
            if !r.tokens.is_empty() {
                r.cache.grow(r.tokens.len());
                caches.push(&mut *r.cache);
            }
        }
        let shape = AttnShape { num_heads: c.num_heads, num_kv_heads: c.num_kv_heads, head_dim: c.head_dim };
        let mut xn = vec![0.0f32; n * h];
        let mut o = vec![0.0f32; n * h];
        for (li, lw) in self.layers.iter().enumerate() {
            let attn_in: Vec<f32> = match (&side, &lw.input_norm) {
                (Some(e), _) => {
                    norm_rows(&x, self.hidden_norm.as_ref().expect("EAGLE-3 has hidden_norm"), c.rms_norm_eps, &mut xn);
                    side_by_side(e, &xn, h)
                }
                (None, Some(w)) => {
                    norm_rows(&x, w, c.rms_norm_eps, &mut xn);
                    xn.clone()
                }
                (None, None) => x.clone(),
            };
            layers::attention(&lw.qkv, &lw.wo, shape, self.rope.style, &plan, &mut caches, li, &attn_in, &mut o);
            add_into(&mut x, &o);
            norm_rows(&x, &lw.post_norm, c.rms_norm_eps, &mut xn);
            layers::mlp(&lw.gate_up, &lw.down, &xn, n, &mut o);
            add_into(&mut x, &o);
        }
        if let Some(w) = self.mtp.as_ref().and_then(|p| p.out_norm.as_ref()) {
            norm_rows(&x.clone(), w, c.rms_norm_eps, &mut x);
        }
        Ok(split_rows(&x, seqs, &live, h))
    }

    /// What the input projection takes for these rows (`None`: EAGLE-3
    /// draft states, which enter the layers as they are): EAGLE-1/2 the
    /// embedding beside the feature, MTP the two normed, EAGLE-3 its three
    /// aux layers as they came.
    fn projection_input<'s>(&self, emb: &[f32], states: &'s [f32], positions: &[u32], width: usize) -> Result<Option<Cow<'s, [f32]>>> {
        let c = &self.config.llama;
        let h = c.hidden_size;
        let n = positions.len();
        match self.kind() {
            EagleKind::Eagle => {
                if width != h {
                    return Err(EngineError::InvalidInput(format!("EAGLE head takes {h}-wide features, got {width}")).into());
                }
                Ok(Some(Cow::Owned(side_by_side(emb, states, h))))
            }
            EagleKind::Mtp => {
                let p = self.mtp.as_ref().expect("an MTP head has its parts");
                if width != h {
                    return Err(EngineError::InvalidInput(format!("MTP layer takes {h}-wide features, got {width}")).into());
                }
                // The row at position 0 has no previous token to stand for.
                let mut e = emb.to_vec();
                for (i, &pos) in positions.iter().enumerate() {
                    if pos == 0 {
                        e[i * h..(i + 1) * h].iter_mut().for_each(|v| *v = 0.0);
                    }
                }
                let (mut en, mut hn) = (vec![0.0f32; n * h], vec![0.0f32; n * h]);
                norm_rows(&e, &p.token_norm, c.rms_norm_eps, &mut en);
                norm_rows(states, &p.hidden_norm, c.rms_norm_eps, &mut hn);
                let (a, b) = if p.hidden_first { (&hn, &en) } else { (&en, &hn) };
                Ok(Some(Cow::Owned(side_by_side(a, b, h))))
            }
            EagleKind::Eagle3 => {
                if width == h {
                    Ok(None)
                } else if width == self.feature_width() {
                    Ok(Some(Cow::Borrowed(states)))
                } else {
                    Err(EngineError::InvalidInput(format!("EAGLE-3 head takes {}-wide target features or {h}-wide states, got {width}", self.feature_width())).into())
                }
            }
        }
    }

    /// Draft logits (`rows × draft vocab`) of output states from [`Self::forward`].
    pub fn logits(&self, target: &Model, states: &[f32]) -> Result<Vec<f32>> {
        if let Some(d) = &self.device {
            return Ok(d.logits(states)?);
        }
        let c = &self.config.llama;
        let h = c.hidden_size;
        let n = states.len() / h;
        let normed;
        let input = match &self.final_norm {
            Some(w) => {
                let mut y = vec![0.0f32; n * h];
                norm_rows(states, w, c.rms_norm_eps, &mut y);
                normed = y;
                &normed[..]
            }
            None => states,
        };
        match &self.lm_head {
            Some(m) => {
                let mut out = vec![0.0f32; n * m.rows];
                m.matmul_f32_act(input, n, &mut out);
                Ok(out)
            }
            None => {
                // Drafts only need a good guess, not the target's exact
                // logits: 8-bit activations run the int8 kernels, about
                // twice as fast as the f32-activation path.
                let m = target.weights.lm_head();
                let mut out = vec![0.0f32; n * m.rows];
                m.matmul(input, n, &mut out);
                Ok(out)
            }
        }
    }

    /// Each row's `k` most likely next tokens (target ids) with their draft
    /// probabilities: on a device picked there (only the pairs come back),
    /// on the host from the softmax of [`Self::logits`].
    pub fn top_k(&self, target: &Model, states: &[f32], k: usize) -> Result<Vec<Vec<(u32, f32)>>> {
        if let Some(d) = &self.device {
            let rows = d.top_k(states, k)?;
            return Ok(rows.into_iter().map(|r| r.into_iter().map(|(i, p)| (self.target_id(i), p)).collect()).collect());
        }
        let logits = self.logits(target, states)?;
        Ok(super::rows_top_k(&logits, self.draft_vocab(target), k, &|i| self.target_id(i)))
    }

    /// Rows of the draft logits.
    pub fn draft_vocab(&self, target: &Model) -> usize {
        self.lm_head.as_ref().map_or(target.config.vocab_size, |m| m.rows)
    }

    /// Target id of draft logit `i`.
    pub fn target_id(&self, i: u32) -> u32 {
        self.vocab_map.as_ref().map_or(i, |m| m[i as usize])
    }
}

/// Rows of `a` and `b` (each `h` wide) set side by side: `[a_i, b_i]`.
fn side_by_side(a: &[f32], b: &[f32], h: usize) -> Vec<f32> {
    let mut cat = Vec::with_capacity(a.len() + b.len());
    for (ra, rb) in a.chunks(h).zip(b.chunks(h)) {
        cat.extend_from_slice(ra);
        cat.extend_from_slice(rb);
    }
    cat
}

/// Each live sequence's rows of stacked output states.
fn split_rows(x: &[f32], seqs: &[HeadRows], live: &[usize], h: usize) -> Vec<Vec<f32>> {
    let mut out = vec![Vec::new(); seqs.len()];
    let mut at = 0;
    for &i in live {
        let k = seqs[i].tokens.len();
        out[i] = x[at * h..(at + k) * h].to_vec();
        at += k;
    }
    out
}

/// The target's lm_head rows of a token map's ids, and the ids.
fn token_map_rows(tm: &TokenMap, target: &Model, h: usize) -> Result<(Matrix, Vec<u32>)> {
    tm.check(target.config.vocab_size)?;
    let src = target.weights.lm_head();
    let mut rows = vec![0.0f32; tm.ids.len() * h];
    for (i, &t) in tm.ids.iter().enumerate() {
        src.row_f32(t as usize, &mut rows[i * h..(i + 1) * h]);
    }
    Ok((Matrix::f32(tm.ids.len(), h, rows).map_err(|e| EngineError::InvalidInput(e.to_string()))?, tm.ids.clone()))
}

/// Reads an integer tensor (I64 or I32) such as `d2t`.
fn read_ints(st: &SafetensorsDir, name: &str, dir: &Path) -> Result<Vec<i64>> {
    st.ints(name).map_err(|e| match e {
        EngineError::BadTensor { msg, .. } => DraftError::HeadMismatch { path: dir.to_path_buf(), msg: format!("{name}: {msg}") },
        other => other.into(),
    })
}
