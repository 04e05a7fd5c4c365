// LayerNorm (with or without bias) and RMSNorm, one workgroup per row. Mean and variance are
// two passes over the row, as on the CPU: no E[x^2] - E[x]^2 cancellation.

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    // 1 for RMSNorm: no mean is subtracted.
    rms: u32,
    has_bias: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<wt>;
@group(0) @binding(3) var<storage, read> bias: array<wt>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn norm(lane: Lane) {
    let row = group_index(lane);
    if row >= p.rows {
        return;
    }
    let base = row * p.dim;
    var sum = 0.0;
    if p.rms == 0u {
        for (var i = lane.index; i < p.dim; i += WG) {
            sum += x[base + i];
        }
    }
    let mean = wg_sum(sum, lane) / f32(p.dim);
    var squares = 0.0;
    for (var i = lane.index; i < p.dim; i += WG) {
        let d = x[base + i] - mean;
        squares += d * d;
    }
    let inv = 1.0 / sqrt(wg_sum(squares, lane) / f32(p.dim) + p.eps);
    for (var i = lane.index; i < p.dim; i += WG) {
        var y = (x[base + i] - mean) * inv * f32(weight[i]);
        if p.has_bias != 0u {
            y += f32(bias[i]);
        }
        out[base + i] = y;
    }
}
