//! Element-wise and reduction ops of a Llama layer, written so the compiler
//! vectorizes them. Reductions run in a fixed order (batch invariance).

/// RMSNorm of one row: `out = x / sqrt(mean(x²) + eps) * weight`.
/// The sum of squares accumulates in f64, as ggml does.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    // ggml squares in f32 and sums the squares in f64.
    let ss: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let scale = 1.0 / ((ss / x.len() as f64) as f32 + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// In-place RMSNorm of every row of a `rows × weight.len()` buffer.
pub fn rms_norm_rows(x: &mut [f32], weight: &[f32], eps: f32) {
    let h = weight.len();
    let mut tmp = vec![0.0f32; h];
    for row in x.chunks_mut(h) {
        rms_norm(row, weight, eps, &mut tmp);
        row.copy_from_slice(&tmp);
    }
}

/// Numerically stable in-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Index and value of the largest element (first one on ties).
pub fn argmax(x: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &v) in x.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best
}
