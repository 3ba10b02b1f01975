//! Plain Rust references of the CUDA kernels, one function per kernel with
//! the kernel's name and layout. They say what a kernel computes, not how:
//! sums run left to right in f64 where the kernels use f32 trees, so tests
//! compare against them with a tolerance (exact where the kernel is exact).

use half::bf16;

/// `embedding_bf16`: rows of a bf16 `[vocab, hidden]` table as f32; an id
/// outside the vocabulary gives a row of zeros.
pub fn embedding_bf16(table: &[bf16], ids: &[i32], hidden: usize) -> Vec<f32> {
    let vocab = table.len() / hidden;
    let mut out = vec![0.0f32; ids.len() * hidden];
    for (o, &id) in out.chunks_mut(hidden).zip(ids) {
        if id >= 0 && (id as usize) < vocab {
            let row = &table[id as usize * hidden..][..hidden];
            for (o, w) in o.iter_mut().zip(row) {
                *o = w.to_f32();
            }
        }
    }
    out
}

/// `rms_norm`: each row of `x` scaled by `1 / sqrt(mean(x²) + eps)`, times
/// the bf16 weight.
pub fn rms_norm(x: &[f32], weight: &[bf16], eps: f32) -> Vec<f32> {
    let hidden = weight.len();
    let mut out = vec![0.0f32; x.len()];
    for (o, xr) in out.chunks_mut(hidden).zip(x.chunks(hidden)) {
        let ss: f64 = xr.iter().map(|&v| v as f64 * v as f64).sum();
        let scale = 1.0 / (ss / hidden as f64 + eps as f64).sqrt();
        for ((o, &v), w) in o.iter_mut().zip(xr).zip(weight) {
            *o = (v as f64 * scale * w.to_f64()) as f32;
        }
    }
    out
}

/// `rope`: q `[tokens, n_heads, head_dim]` and k `[tokens, n_kv_heads,
/// head_dim]` rotated in place by `positions[t] * inv_freq[i]`; `neox` pairs
/// (i, i + d/2), otherwise (2i, 2i + 1).
pub fn rope(q: &mut [f32], k: &mut [f32], positions: &[i32], inv_freq: &[f32], head_dim: usize, neox: bool) {
    let half = head_dim / 2;
    let tokens = positions.len();
    for buf in [q, k] {
        let per_token = buf.len() / tokens.max(1);
        for (t, row) in buf.chunks_mut(per_token).enumerate() {
            for head in row.chunks_mut(head_dim) {
                for (i, &f) in inv_freq.iter().enumerate().take(half) {
                    let angle = positions[t] as f64 * f as f64;
                    let (s, c) = angle.sin_cos();
                    let (a, b) = if neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
                    let (x0, x1) = (head[a] as f64, head[b] as f64);
                    head[a] = (x0 * c - x1 * s) as f32;
                    head[b] = (x0 * s + x1 * c) as f32;
                }
            }
        }
    }
}

/// `silu_mul`: `silu(gate) * up` of a fused `[rows, 2 * inter]` gate/up.
pub fn silu_mul(gate_up: &[f32], inter: usize) -> Vec<f32> {
    gate_up
        .chunks(2 * inter)
        .flat_map(|r| {
            let (g, u) = r.split_at(inter);
            g.iter().zip(u).map(|(&g, &u)| (g as f64 / (1.0 + (-g as f64).exp()) * u as f64) as f32)
        })
        .collect()
}

/// `add_inplace`: `x += y`.
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `argmax_rows`: each row's first largest value and its index; a row with
/// no such value (all NaN or -inf) gives index 0 and -inf.
pub fn argmax_rows(logits: &[f32], vocab: usize) -> Vec<(i32, f32)> {
    logits
        .chunks(vocab)
        .map(|r| {
            let (i, v) = crate::cpu::ops::argmax(r);
            (i as i32, v)
        })
        .collect()
}

/// `matvec_q4_1`: `y = W x` for Q4_1 rows of `cols / 32` blocks of 20 bytes
/// (f16 scale d, f16 minimum m, 16 bytes of nibbles: low nibbles are
/// elements 0..16 of the block, high nibbles 16..32).
pub fn matvec_q4_1(w: &[u8], x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let nb = cols / 32;
    (0..rows)
        .map(|r| {
            let mut acc = 0.0f64;
            for b in 0..nb {
                let blk = &w[(r * nb + b) * 20..][..20];
                let d = half::f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f64();
                let m = half::f16::from_bits(u16::from_le_bytes([blk[2], blk[3]])).to_f64();
                for j in 0..16 {
                    let q = blk[4 + j];
                    acc += ((q & 0xF) as f64 * d + m) * x[b * 32 + j] as f64;
                    acc += ((q >> 4) as f64 * d + m) * x[b * 32 + j + 16] as f64;
                }
            }
            acc as f32
        })
        .collect()
}
