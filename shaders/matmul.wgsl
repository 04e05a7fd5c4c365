// out[rows, n_out] = x[rows, n_in] . w[n_out, n_in]^T (+ bias), f32 accumulation whatever the
// weight type. `matmul` tiles many rows; `gemv` serves one row and reads each weight once.

struct Params {
    rows: u32,
    n_out: u32,
    n_in: u32,
    has_bias: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<wt>;
@group(0) @binding(3) var<storage, read> bias: array<wt>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

fn store(row: u32, o: u32, acc: f32) {
    var y = acc;
    if p.has_bias != 0u {
        y += f32(bias[o]);
    }
    out[row * p.n_out + o] = y;
}

// A 64 x 64 output tile per workgroup; each invocation owns 4 rows x 4 outputs. K advances in
// slices of 16 staged in workgroup memory, stored k-major so the inner loop reads rows and
// outputs contiguously.
const TILE: u32 = 64u;
const TK: u32 = 16u;
var<workgroup> x_tile: array<f32, 1024>;
var<workgroup> w_tile: array<f32, 1024>;

@compute @workgroup_size(256)
fn matmul(lane: Lane) {
    let tiles_out = (p.n_out + TILE - 1u) / TILE;
    let tile = group_index(lane);
    let row0 = tile / tiles_out * TILE;
    let out0 = tile % tiles_out * TILE;
    let my_rows = lane.index / 16u * 4u;
    let my_outs = lane.index % 16u * 4u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.n_in; k0 += TK) {
        for (var e = lane.index; e < TILE * TK; e += WG) {
            let r = e / TK;
            let k = k0 + e % TK;
            var xv = 0.0;
            if row0 + r < p.rows && k < p.n_in {
                xv = x[(row0 + r) * p.n_in + k];
            }
            var wv = 0.0;
            if out0 + r < p.n_out && k < p.n_in {
                wv = f32(w[(out0 + r) * p.n_in + k]);
            }
            x_tile[e % TK * TILE + r] = xv;
            w_tile[e % TK * TILE + r] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let a = kk * TILE + my_rows;
            let b = kk * TILE + my_outs;
            let wv = vec4(w_tile[b], w_tile[b + 1u], w_tile[b + 2u], w_tile[b + 3u]);
            acc[0] += x_tile[a] * wv;
            acc[1] += x_tile[a + 1u] * wv;
            acc[2] += x_tile[a + 2u] * wv;
            acc[3] += x_tile[a + 3u] * wv;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            let row = row0 + my_rows + i;
            let o = out0 + my_outs + j;
            if row < p.rows && o < p.n_out {
                store(row, o, acc[i][j]);
            }
        }
    }
}

// 8 outputs per workgroup, 32 invocations per output striding along the weight row (adjacent
// invocations read adjacent weights), then a tree sum of the 32 partials.
const GEMV_LANES: u32 = 32u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(256)
fn gemv(lane: Lane) {
    let o = group_index(lane) * (WG / GEMV_LANES) + lane.index / GEMV_LANES;
    let l = lane.index % GEMV_LANES;
    var sum = 0.0;
    if o < p.n_out {
        let base = o * p.n_in;
        for (var k = l; k < p.n_in; k += GEMV_LANES) {
            sum += x[k] * f32(w[base + k]);
        }
    }
    partial[lane.index] = sum;
    workgroupBarrier();
    for (var step = GEMV_LANES / 2u; step > 0u; step >>= 1u) {
        if l < step {
            partial[lane.index] += partial[lane.index + step];
        }
        workgroupBarrier();
    }
    if l == 0u && o < p.n_out {
        store(0u, o, partial[lane.index]);
    }
}
