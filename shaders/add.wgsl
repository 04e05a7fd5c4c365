// x[i] += y[offset + i]: the residual add (y f32 activations) and learned positions (y a
// weight table, so `wt` may be f16), one invocation per value.

struct Params {
    len: u32,
    offset: u32,
}

var<immediate> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<wt>;

@compute @workgroup_size(256)
fn add(lane: Lane) {
    let i = item_index(lane);
    if i >= p.len {
        return;
    }
    x[i] += f32(y[p.offset + i]);
}
