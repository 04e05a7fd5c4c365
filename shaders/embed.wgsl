// Token embedding: out[r] = table[ids[r]], one invocation per output value.

struct Params {
    rows: u32,
    dim: u32,
}

var<immediate> p: Params;
@group(0) @binding(1) var<storage, read> table: array<wt>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn embed(lane: Lane) {
    let i = item_index(lane);
    if i >= p.rows * p.dim {
        return;
    }
    out[i] = f32(table[ids[i / p.dim] * p.dim + i % p.dim]);
}
