// One row's LayerNorm or RMSNorm, shared by norm.wgsl and the gemv that folds a norm into its
// product. The including module defines x_at(i) and binds norm_weight and norm_bias ([dim] in
// the weight type).

// What normalises a row: y = (x - mean) * inv * weight (+ bias).
struct RowStats {
    mean: f32,
    inv: f32,
}

// The mean (0 for RMSNorm) and variance of x_at(base..base + dim) in two passes, as on the
// CPU: no E[x^2] - E[x]^2 cancellation. Every invocation of the workgroup must call it, with
// the same `rms` (RMSNorm skips the mean's reduction).
fn row_stats(base: u32, dim: u32, rms: bool, eps: f32, lane: Lane) -> RowStats {
    var mean = 0.0;
    if !rms {
        var sum = 0.0;
        for (var i = lane.index; i < dim; i += WG) {
            sum += x_at(base + i);
        }
        mean = wg_sum(sum, lane) / f32(dim);
    }
    var squares = 0.0;
    for (var i = lane.index; i < dim; i += WG) {
        let d = x_at(base + i) - mean;
        squares += d * d;
    }
    let inv = 1.0 / sqrt(wg_sum(squares, lane) / f32(dim) + eps);
    return RowStats(mean, inv);
}

// Value i of the normalised row, from its input value x.
fn normed(s: RowStats, x: f32, i: u32, has_bias: bool) -> f32 {
    var y = (x - s.mean) * s.inv * f32(norm_weight[i]);
    if has_bias {
        y += f32(norm_bias[i]);
    }
    return y;
}
