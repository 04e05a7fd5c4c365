// LayerNorm (with or without bias) and RMSNorm, one workgroup per row (norm_row.wgsl).

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    // 1 for RMSNorm: no mean is subtracted.
    rms: u32,
    has_bias: u32,
}

var<immediate> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> norm_weight: array<wt>;
@group(0) @binding(3) var<storage, read> norm_bias: array<wt>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

fn x_at(i: u32) -> f32 {
    return x[i];
}

@compute @workgroup_size(256)
fn norm(lane: Lane) {
    let row = group_index(lane);
    if row >= p.rows {
        return;
    }
    let base = row * p.dim;
    let stats = row_stats(base, p.dim, p.rms != 0u, p.eps, lane);
    for (var i = lane.index; i < p.dim; i += WG) {
        out[base + i] = normed(stats, x[base + i], i, p.has_bias != 0u);
    }
}
