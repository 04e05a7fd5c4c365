// GELU (erf and tanh forms) in place, and SwiGLU or GeGLU from fused [gate | up] rows; one
// invocation per output value.

struct Params {
    rows: u32,
    width: u32,
}

var<immediate> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> fused: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn gelu_erf(lane: Lane) {
    let i = item_index(lane);
    if i < p.rows * p.width {
        x[i] = gelu(x[i], 1u);
    }
}

@compute @workgroup_size(256)
fn gelu_tanh(lane: Lane) {
    let i = item_index(lane);
    if i < p.rows * p.width {
        x[i] = gelu(x[i], 2u);
    }
}

// Output i of a gated unit: gate_act(g) * up (gelu.wgsl).
fn gated(i: u32, gelu_gate: bool) {
    if i >= p.rows * p.width {
        return;
    }
    let row = i / p.width;
    let g = fused[row * 2u * p.width + i % p.width];
    let up = fused[row * 2u * p.width + p.width + i % p.width];
    out[i] = gate_act(g, gelu_gate) * up;
}

@compute @workgroup_size(256)
fn swiglu(lane: Lane) {
    gated(item_index(lane), false);
}

@compute @workgroup_size(256)
fn geglu(lane: Lane) {
    gated(item_index(lane), true);
}
