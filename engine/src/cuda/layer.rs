//! The parts of a forward pass on a device that the target model and the
//! draft heads share: one decoder layer's weights and its run over a batch
//! ([`DeviceLayer`]), the batch's rows laid out for the kernels
//! ([`DeviceBatch`]), and thin launch wrappers ([`Ops`]).
//!
//! A layer's attention input is `attn_in` wide: the hidden size for a Llama
//! layer, twice it for EAGLE-3's midlayer (which attends over
//! `[embedding, state]`). Everything here goes through the [`Device`] seam,
//! so it is the same code on a GPU and in the interpreter.

use super::kv::{CudaSeq, KvPool, PAGE_SIZE};
use super::MAX_TREE_NODES;
use crate::config::{ModelConfig, RopeStyle};
use crate::error::{EngineError, Result};
use crate::model::{AttnMask, LogitsRows};
use aerie_kernels::cuda::device::{Device, DeviceBuffer, DeviceExt};
use aerie_kernels::cuda::interp::{KernelArg as A, LaunchConfig};
use half::bf16;
use std::sync::Arc;

/// How weight matrices are held on the device: bf16 (the default, what
/// `--dtype auto` and `bfloat16` give) or IEEE f16 (`--dtype float16`: an
/// f16 checkpoint's values exactly). Activations, norms and the KV cache are
/// the same either way (f32, f32, bf16); the kernels that read weights have
/// one entry point per format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    #[default]
    Bf16,
    F16,
}

impl WeightFormat {
    /// The format `--dtype` asks for on a device.
    pub fn of(dtype: crate::weights::DType) -> WeightFormat {
        match dtype {
            crate::weights::DType::Float16 => WeightFormat::F16,
            _ => WeightFormat::Bf16,
        }
    }

    /// The 16-bit patterns of `v`, rounded to nearest even. A finite
    /// weight beyond f16's range (±65504) is refused rather than held as
    /// an infinity.
    pub(crate) fn bits(self, v: &[f32]) -> Result<Vec<u16>> {
        match self {
            WeightFormat::Bf16 => Ok(v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect()),
            WeightFormat::F16 => {
                if let Some(x) = v.iter().find(|x| x.is_finite() && x.abs() > f32::from(half::f16::MAX)) {
                    return Err(crate::error::EngineError::InvalidInput(format!(
                        "a weight of {x} does not fit float16 (largest 65504): use --dtype bfloat16 or auto"
                    )));
                }
                Ok(v.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect())
            }
        }
    }

    pub(crate) fn linear_kernel(self) -> &'static str {
        match self {
            WeightFormat::Bf16 => "linear_bf16",
            WeightFormat::F16 => "linear_f16",
        }
    }

    pub(crate) fn embedding_kernel(self) -> &'static str {
        match self {
            WeightFormat::Bf16 => "embedding_bf16",
            WeightFormat::F16 => "embedding_f16",
        }
    }
}

/// The rotary frequencies of `cfg` on the device (f32), as `rope` takes them.
pub(crate) fn upload_inv_freq(dev: &Arc<dyn Device>, cfg: &ModelConfig) -> Result<DeviceBuffer> {
    let inv: Vec<f32> = cfg.inv_freqs().iter().map(|&f| f as f32).collect();
    Ok(dev.upload_slice(&inv)?)
}

/// Grid-stride launch for `n` elements.
fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig::linear(n.div_ceil(256).clamp(1, 1024) as u32, 256)
}

/// Launch wrappers over one device.
pub(crate) struct Ops<'a> {
    pub dev: &'a Arc<dyn Device>,
    pub eps: f32,
    /// Projections through `linear_bf16` (each row reduced in a fixed order,
    /// whatever the batch: what speculation needs to stay lossless) rather
    /// than the device's library GEMM (cuBLAS: bf16 activations, an order
    /// chosen per shape, faster on large batches).
    pub invariant: bool,
    /// The weights' format. The library GEMM takes bf16 weights only, so
    /// f16 weights always go through the invariant kernel.
    pub format: WeightFormat,
}

impl Ops<'_> {
    /// `y = x · wᵀ (+ b)` for `rows` rows, `w` holding `n × k` 16-bit values
    /// from byte `w.1` on. Biased projections (Qwen2's q/k/v) always take
    /// the invariant kernel, which adds the bias itself.
    pub fn linear(&self, x: &DeviceBuffer, w: (&DeviceBuffer, usize), bias: Option<(&DeviceBuffer, usize)>, y: &DeviceBuffer, rows: usize, n: usize, k: usize) -> Result<()> {
        if !self.invariant && bias.is_none() && self.format == WeightFormat::Bf16 {
            let xb = self.dev.alloc(rows * k * 2)?;
            // SAFETY: x holds rows × k f32, xb as many bf16.
            unsafe { self.dev.launch("to_bf16", elementwise(rows * k), &[x.arg(), xb.arg(), A::I64((rows * k) as i64)])? };
            self.dev.gemm_bf16(&xb, w.0, w.1, y, rows, n, k)?;
            return Ok(());
        }
        let cfg = LaunchConfig { grid: (n.div_ceil(4) as u32, rows.div_ceil(8) as u32, 1), block: (128, 1, 1), shared_bytes: 0 };
        let b = bias.map_or(A::Ptr(std::ptr::null()), |(b, off)| b.arg_at(off));
        // SAFETY: x is rows × k f32, w holds n × k 16-bit values from w.1, b n f32, y rows × n f32.
        unsafe { self.dev.launch(self.format.linear_kernel(), cfg, &[x.arg(), w.0.arg_at(w.1), b, y.arg(), A::I32(rows as i32), A::I32(n as i32), A::I32(k as i32)])? };
        Ok(())
    }

    /// RMSNorm of `rows` rows of `width` values.
    pub fn rms_norm(&self, x: &DeviceBuffer, w: &DeviceBuffer, out: &DeviceBuffer, rows: usize, width: usize) -> Result<()> {
        // SAFETY: x and out are rows × width f32, w is width f32.
        unsafe {
            self.dev.launch("rms_norm", LaunchConfig::linear(rows as u32, 256), &[x.arg(), w.arg(), out.arg(), A::I32(rows as i32), A::I32(width as i32), A::F32(self.eps)])?
        };
        Ok(())
    }

    /// `x += y` over `n` values.
    pub fn add(&self, x: &DeviceBuffer, y: &DeviceBuffer, n: usize) -> Result<()> {
        // SAFETY: both hold n f32.
        unsafe { self.dev.launch("add_inplace", elementwise(n), &[x.arg(), y.arg(), A::I64(n as i64)])? };
        Ok(())
    }

    /// Row `r` of `dst` from byte `dst_off` on (stride `dst_stride` values)
    /// gets `width` values of source row `src_rows[r]` (or `r`).
    #[allow(clippy::too_many_arguments)]
    pub fn copy_rows(&self, src: &DeviceBuffer, src_stride: usize, src_rows: Option<&DeviceBuffer>, src_count: usize, dst: &DeviceBuffer, dst_off: usize, dst_stride: usize, rows: usize, width: usize) -> Result<()> {
        let idx = src_rows.map_or(A::Ptr(std::ptr::null()), |b| b.arg());
        // SAFETY: src holds src_count rows of src_stride f32 (indices outside
        // are skipped); dst holds rows rows of dst_stride f32 after dst_off,
        // and width ≤ both strides.
        unsafe {
            self.dev.launch(
                "copy_rows",
                elementwise(rows * width),
                &[src.arg(), A::I32(src_stride as i32), idx, A::I32(src_count as i32), dst.arg_at(dst_off), A::I32(dst_stride as i32), A::I32(rows as i32), A::I32(width as i32)],
            )?
        };
        Ok(())
    }
}

/// One decoder layer's weights on a device.
pub(crate) struct DeviceLayer {
    /// `None`: the layer takes its input unnormed (EAGLE-1's layer 0), or is
    /// always given its attention input (EAGLE-3's midlayer).
    pub(crate) input_norm: Option<DeviceBuffer>,
    /// q, k and v weights stacked, `[q + 2 kv, attn_in]` bf16.
    qkv: DeviceBuffer,
    qkv_bias: Option<DeviceBuffer>,
    wo: DeviceBuffer,
    post_norm: DeviceBuffer,
    /// gate then up, `[2 inter, hidden]` bf16.
    gate_up: DeviceBuffer,
    down: DeviceBuffer,
    /// Width of the attention input.
    pub attn_in: usize,
}

/// One layer's weights on the host, dense f32, for [`DeviceLayer::upload`].
pub struct LayerWeights<'a> {
    pub input_norm: Option<&'a [f32]>,
    /// `[q + 2 kv, attn_in]`.
    pub qkv: &'a [f32],
    pub qkv_bias: Option<&'a [f32]>,
    pub wo: &'a [f32],
    pub post_norm: &'a [f32],
    /// `[2 inter, hidden]`, gate rows first.
    pub gate_up: &'a [f32],
    pub down: &'a [f32],
    pub attn_in: usize,
}

impl DeviceLayer {
    /// Uploads a layer: matrices in `format`, norms and biases f32.
    pub fn upload(dev: &Arc<dyn Device>, w: LayerWeights, format: WeightFormat) -> Result<DeviceLayer> {
        let f32s = |v: &[f32]| dev.upload_slice(v);
        let weights = |v: &[f32]| -> Result<DeviceBuffer> { Ok(dev.upload_slice(&format.bits(v)?)?) };
        Ok(DeviceLayer {
            input_norm: w.input_norm.map(f32s).transpose()?,
            qkv: weights(w.qkv)?,
            qkv_bias: w.qkv_bias.map(f32s).transpose()?,
            wo: weights(w.wo)?,
            post_norm: f32s(w.post_norm)?,
            gate_up: weights(w.gate_up)?,
            down: weights(w.down)?,
            attn_in: w.attn_in,
        })
    }

    /// `x += attention(a)` then `x += mlp(post_norm(x))` over the batch's
    /// rows, where `a` is `attn_input` when given (`rows × attn_in`), else
    /// `input_norm(x)`, else `x`. Appends the rows' keys and values to layer
    /// `li` of `pool`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(&self, ops: &Ops, cfg: &ModelConfig, inv_freq: &DeviceBuffer, b: &DeviceBatch, pool: &KvPool, li: usize, x: &DeviceBuffer, attn_input: Option<&DeviceBuffer>, s: &Scratch) -> Result<()> {
        let dev = ops.dev;
        let t = b.rows;
        let (h, hd, nh, nkv, inter) = (cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size);
        let (qw, kvw, k_in) = (nh * hd, nkv * hd, self.attn_in);
        let a = match (attn_input, &self.input_norm) {
            (Some(a), _) => a,
            (None, Some(w)) => {
                ops.rms_norm(x, w, &s.xn, t, h)?;
                &s.xn
            }
            (None, None) => x,
        };
        let bias = |off: usize| self.qkv_bias.as_ref().map(|b| (b, off * 4));
        ops.linear(a, (&self.qkv, 0), bias(0), &s.q, t, qw, k_in)?;
        ops.linear(a, (&self.qkv, qw * k_in * 2), bias(qw), &s.k, t, kvw, k_in)?;
        ops.linear(a, (&self.qkv, (qw + kvw) * k_in * 2), bias(qw + kvw), &s.v, t, kvw, k_in)?;
        let neox = matches!(cfg.rope_style, RopeStyle::HalfSplit) as i32;
        // SAFETY (the three launches): buffer sizes as allocated by Scratch
        // and DeviceBatch for `t` rows; slots lie on the batch's own pages.
        unsafe {
            dev.launch(
                "rope",
                LaunchConfig { grid: (t as u32, (nh + nkv) as u32, 1), block: (32, 1, 1), shared_bytes: 0 },
                &[s.q.arg(), s.k.arg(), b.pos.arg(), inv_freq.arg(), A::I32(t as i32), A::I32(nh as i32), A::I32(nkv as i32), A::I32(hd as i32), A::I32(neox)],
            )?;
            dev.launch(
                "kv_append",
                LaunchConfig::linear(t as u32, 128),
                &[s.k.arg(), s.v.arg(), pool.k[li].arg(), pool.v[li].arg(), b.slots.arg(), A::I32(t as i32), A::I32(kvw as i32), A::I32(pool.slots() as i32)],
            )?;
            dev.launch(
                "attention_paged",
                LaunchConfig { grid: (t as u32, nh as u32, 1), block: (32, 1, 1), shared_bytes: 0 },
                &[
                    s.q.arg(),
                    pool.k[li].arg(),
                    pool.v[li].arg(),
                    s.attn.arg(),
                    b.seq.arg(),
                    b.dense.arg(),
                    b.base.arg(),
                    b.mask.arg(),
                    b.table.arg(),
                    A::I32(b.max_pages as i32),
                    A::I32(PAGE_SIZE as i32),
                    A::I32(pool.num_pages as i32),
                    A::I32(t as i32),
                    A::I32(nh as i32),
                    A::I32(nkv as i32),
                    A::I32(hd as i32),
                    A::F32(1.0 / (hd as f32).sqrt()),
                ],
            )?;
        }
        ops.linear(&s.attn, (&self.wo, 0), None, &s.o, t, h, qw)?;
        ops.add(x, &s.o, t * h)?;
        ops.rms_norm(x, &self.post_norm, &s.xn, t, h)?;
        ops.linear(&s.xn, (&self.gate_up, 0), None, &s.gu, t, 2 * inter, h)?;
        // SAFETY: gu is t × 2 inter, act t × inter.
        unsafe { dev.launch("silu_mul", elementwise(t * inter), &[s.gu.arg(), s.act.arg(), A::I32(t as i32), A::I32(inter as i32)])? };
        ops.linear(&s.act, (&self.down, 0), None, &s.o, t, h, inter)?;
        ops.add(x, &s.o, t * h)?;
        Ok(())
    }
}

/// Working buffers of a layer run over `rows` rows.
pub(crate) struct Scratch {
    pub xn: DeviceBuffer,
    o: DeviceBuffer,
    q: DeviceBuffer,
    k: DeviceBuffer,
    v: DeviceBuffer,
    attn: DeviceBuffer,
    gu: DeviceBuffer,
    act: DeviceBuffer,
}

impl Scratch {
    pub fn new(dev: &Arc<dyn Device>, cfg: &ModelConfig, rows: usize) -> Result<Scratch> {
        let f32s = |n: usize| dev.alloc(n * 4);
        let (h, qw, kvw, inter) = (cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size);
        Ok(Scratch {
            xn: f32s(rows * h)?,
            o: f32s(rows * h)?,
            q: f32s(rows * qw)?,
            k: f32s(rows * kvw)?,
            v: f32s(rows * kvw)?,
            attn: f32s(rows * qw)?,
            gu: f32s(rows * 2 * inter)?,
            act: f32s(rows * inter)?,
        })
    }
}

/// One sequence's part of a forward call on the device.
pub struct CudaSeqInput<'a> {
    pub seq: &'a mut CudaSeq,
    pub tokens: &'a [u32],
    /// Absolute positions; `None` means `seq.len() + i`. A tree's nodes sit
    /// at the prefix length plus their depth.
    pub positions: Option<&'a [u32]>,
    /// `Causal`, `Tree`, or a `Full` mask that is a dense prefix plus at most
    /// [`MAX_TREE_NODES`] positions after it (what a draft tree step asks).
    pub mask: AttnMask,
    pub logits: LogitsRows,
}

/// A batch's rows on the device: token ids, positions, KV slots, what each
/// row attends to (see `attention.cu`) and the page table; the host keeps
/// which rows want logits.
pub(crate) struct DeviceBatch {
    pub rows: usize,
    pub ids: DeviceBuffer,
    pos: DeviceBuffer,
    slots: DeviceBuffer,
    seq: DeviceBuffer,
    dense: DeviceBuffer,
    base: DeviceBuffer,
    mask: DeviceBuffer,
    table: DeviceBuffer,
    max_pages: usize,
    /// Per sequence, the rows (relative to its first) that want logits.
    pub logit_rows: Vec<Vec<usize>>,
    /// Per sequence, its first row in the batch.
    pub offsets: Vec<usize>,
}

/// `(dense_len, tree_base, mask)` of the rows of a `Full` mask over `cached`
/// cached and `n` new tokens, when each row sees a dense prefix and then at
/// most [`MAX_TREE_NODES`] positions past it.
fn full_mask_rows(m: &[bool], cached: usize, n: usize) -> Result<Vec<(i32, i32, u64)>> {
    let w = cached + n;
    let rows: Vec<&[bool]> = m.chunks(w.max(1)).collect();
    // The prefix every row sees whole.
    let dense = (0..w).take_while(|&p| rows.iter().all(|r| r[p])).count();
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            if let Some(p) = r.iter().skip(cached + i + 1).position(|&v| v) {
                return Err(EngineError::InvalidInput(format!("attention mask row {i} sees the later position {}", cached + i + 1 + p)));
            }
            let mut bits = 0u64;
            for (p, _) in r.iter().enumerate().skip(dense).filter(|(_, &v)| v) {
                if p - dense >= MAX_TREE_NODES {
                    return Err(EngineError::InvalidInput(format!(
                        "attention mask row {i} sees position {p}: the CUDA path takes a dense prefix ({dense}) plus {MAX_TREE_NODES} positions up to the row itself"
                    )));
                }
                bits |= 1 << (p - dense);
            }
            Ok((dense as i32, dense as i32, bits))
        })
        .collect()
}

impl DeviceBatch {
    /// Checks a batch (ids under `vocab`, positions under `max_positions`,
    /// masks the kernels can express), takes KV pages for its new tokens and
    /// uploads its layout.
    pub fn new(dev: &Arc<dyn Device>, vocab: usize, max_positions: usize, batch: &mut [CudaSeqInput]) -> Result<DeviceBatch> {
        let (mut ids, mut positions, mut slots) = (Vec::new(), Vec::new(), Vec::new());
        let (mut row_seq, mut dense_len, mut tree_base, mut tree_mask) = (Vec::new(), Vec::new(), Vec::new(), Vec::<u64>::new());
        let mut logit_rows = Vec::with_capacity(batch.len());
        let mut offsets = Vec::with_capacity(batch.len());
        for (si, s) in batch.iter_mut().enumerate() {
            offsets.push(ids.len());
            let n = s.tokens.len();
            let base = s.seq.len();
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(EngineError::InvalidInput(format!("token id {t} outside vocabulary of {vocab}")));
            }
            let pos: Vec<u32> = match s.positions {
                Some(p) if p.len() != n => return Err(EngineError::InvalidInput(format!("{} positions for {n} tokens", p.len()))),
                Some(p) => p.to_vec(),
                None => (0..n).map(|i| (base + i) as u32).collect(),
            };
            let max_pos = pos.iter().map(|&p| p as usize + 1).max().unwrap_or(0);
            if max_pos > max_positions {
                return Err(EngineError::ContextLength { needed: max_pos, limit: max_positions });
            }
            match &s.mask {
                AttnMask::Causal => {
                    for i in 0..n {
                        dense_len.push((base + i + 1) as i32);
                        tree_base.push(base as i32);
                        tree_mask.push(0);
                    }
                }
                AttnMask::Tree(m) => {
                    if m.len() != n * n {
                        return Err(EngineError::InvalidInput(format!("tree mask has {} entries, expected {}", m.len(), n * n)));
                    }
                    if n > MAX_TREE_NODES {
                        return Err(EngineError::InvalidInput(format!("a tree of {n} nodes; the CUDA path verifies at most {MAX_TREE_NODES}")));
                    }
                    for i in 0..n {
                        let bits = (0..n).filter(|&j| m[i * n + j]).fold(0u64, |b, j| b | 1 << j);
                        if bits.checked_shr(i as u32 + 1).unwrap_or(0) != 0 {
                            return Err(EngineError::InvalidInput(format!("tree node {i} sees a later node")));
                        }
                        dense_len.push(base as i32);
                        tree_base.push(base as i32);
                        tree_mask.push(bits);
                    }
                }
                AttnMask::Full(m) => {
                    if m.len() != n * (base + n) {
                        return Err(EngineError::InvalidInput(format!("full mask has {} entries, expected {}", m.len(), n * (base + n))));
                    }
                    for (d, b, bits) in full_mask_rows(m, base, n)? {
                        dense_len.push(d);
                        tree_base.push(b);
                        tree_mask.push(bits);
                    }
                }
            }
            let want: Vec<usize> = match &s.logits {
                LogitsRows::None => vec![],
                LogitsRows::Last => (n > 0).then(|| n - 1).into_iter().collect(),
                LogitsRows::All => (0..n).collect(),
                LogitsRows::Rows(r) => r.clone(),
            };
            if let Some(&bad) = want.iter().find(|&&r| r >= n) {
                return Err(EngineError::InvalidInput(format!("logits row {bad} out of {n} new tokens")));
            }
            logit_rows.push(want);
            s.seq.reserve(n)?;
            for i in 0..n {
                slots.push(s.seq.slot(base + i));
                row_seq.push(si as i32);
            }
            ids.extend(s.tokens.iter().map(|&t| t as i32));
            positions.extend(pos.iter().map(|&p| p as i32));
        }
        // The page table of the batch: one row of max_pages per sequence.
        let max_pages = batch.iter().map(|s| s.seq.pages.len()).max().unwrap_or(1).max(1);
        let mut table = vec![-1i32; batch.len().max(1) * max_pages];
        for (si, s) in batch.iter().enumerate() {
            table[si * max_pages..si * max_pages + s.seq.pages.len()].copy_from_slice(&s.seq.pages);
        }
        // An empty upload would be a zero-byte buffer; one dummy entry keeps
        // every pointer valid for a batch of no rows.
        let up_i32 = |v: &[i32]| dev.upload_slice(if v.is_empty() { &[0i32][..] } else { v });
        Ok(DeviceBatch {
            rows: ids.len(),
            ids: up_i32(&ids)?,
            pos: up_i32(&positions)?,
            slots: up_i32(&slots)?,
            seq: up_i32(&row_seq)?,
            dense: up_i32(&dense_len)?,
            base: up_i32(&tree_base)?,
            mask: dev.upload_slice(if tree_mask.is_empty() { &[0u64][..] } else { &tree_mask })?,
            table: up_i32(&table)?,
            max_pages,
            logit_rows,
            offsets,
        })
    }

    /// Counts each sequence's new tokens as cached (after the layers ran).
    pub fn commit(batch: &mut [CudaSeqInput]) {
        for s in batch.iter_mut() {
            let n = s.tokens.len();
            s.seq.set_len(s.seq.len() + n);
        }
    }

    /// The batch rows that want logits, in sequence order.
    pub fn wanted_rows(&self) -> Vec<usize> {
        self.logit_rows.iter().zip(&self.offsets).flat_map(|(r, &o)| r.iter().map(move |&i| o + i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::full_mask_rows;

    /// Rows over `cached` cached and `n` new tokens that see `visible[i]`.
    fn mask(cached: usize, visible: &[Vec<usize>]) -> Vec<bool> {
        let w = cached + visible.len();
        let mut m = vec![false; visible.len() * w];
        for (i, v) in visible.iter().enumerate() {
            v.iter().for_each(|&p| m[i * w + p] = true);
        }
        m
    }

    #[test]
    fn a_draft_tree_step_is_a_dense_prefix_plus_bits() {
        // Committed 0..4, uncommitted 4..7; two new rows (7, 8): the first
        // sees uncommitted row 4, the second row 6.
        let rows = full_mask_rows(&mask(7, &[vec![0, 1, 2, 3, 4, 7], vec![0, 1, 2, 3, 6, 8]]), 7, 2).unwrap();
        assert_eq!(rows, vec![(4, 4, 0b1001), (4, 4, 0b10100)]);
        // A causal Full mask is all prefix, plus each row's own position.
        let rows = full_mask_rows(&mask(2, &[vec![0, 1, 2], vec![0, 1, 2, 3]]), 2, 2).unwrap();
        assert_eq!(rows, vec![(3, 3, 0), (3, 3, 1)]);
    }

    #[test]
    fn masks_the_kernel_cannot_express_are_refused() {
        // A row that sees a later row, past the common prefix or inside it.
        assert!(full_mask_rows(&mask(1, &[vec![0, 1, 2], vec![0, 2]]), 1, 2).is_err());
        let err = full_mask_rows(&mask(1, &[vec![0, 1, 2], vec![0, 1, 2]]), 1, 2).unwrap_err();
        assert!(err.to_string().contains("row 0 sees the later position 2"), "{err}");
        // Positions more than 64 past the common prefix.
        let far: Vec<usize> = vec![0, 70];
        let near: Vec<usize> = vec![1, 71];
        let err = full_mask_rows(&mask(70, &[far, near]), 70, 2).unwrap_err();
        assert!(err.to_string().contains("64 positions"), "{err}");
    }
}
