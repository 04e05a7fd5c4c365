// The many-row product of matmul.wgsl on the adapter's matrix units (tensor cores), for
// adapters with 16 x 16 x 16 cooperative matrices of f16 inputs with f32 accumulation, and
// subgroups of 32. The host appends this to matmul.wgsl (its Params, bindings, `store` and
// `tile_origin`) for such adapters only, and uses it where n_in is a multiple of 32 and n_out
// of 16.
//
// `to_half` first rounds the input rows to f16 (as the CUDA backend does before cuBLAS; the
// weights are f16 already), padded with zero rows to whole tiles. `matmul_coop` then computes a
// 64-row x 128-output tile per workgroup, each of its 8 subgroups owning 32 x 32 of it as
// 2 x 2 accumulators. K advances 32 at a time: each subgroup copies three 16 x 16 blocks of the
// slice from storage into workgroup memory with matrix loads and stores (scalar staging cost
// more than the products), then multiplies from there.

// x rounded to f16: [rows padded to 64][n_in]; written as vec4 runs by to_half.
@group(0) @binding(18) var<storage, read> x_half: array<f16>;
@group(0) @binding(19) var<storage, read_write> x_half_out: array<vec4<f16>>;

const COOP_ROWS: u32 = 64u;
const COOP_OUTS: u32 = 128u;
const COOP_K: u32 = 32u;
// The slices' row stride: 8 halves of padding spread the rows that a matrix load reads over
// the banks.
const COOP_STRIDE: u32 = 40u;
// The slice of x ([row][k]: A row-major) and of w ([output][k]: B column-major).
var<workgroup> coop_x: array<f16, 2560>;
var<workgroup> coop_w: array<f16, 5120>;
// Each subgroup's 16 x 16 result on its way to `store`.
var<workgroup> coop_out: array<f32, 2048>;

// One invocation per run of 4 of the padded rows.
@compute @workgroup_size(256)
fn to_half(lane: Lane) {
    let i = item_index(lane);
    let runs = p.n_in / 4u;
    let padded = (p.rows + COOP_ROWS - 1u) / COOP_ROWS * COOP_ROWS;
    if i >= padded * runs {
        return;
    }
    var q = vec4(0.0);
    if i / runs < p.rows {
        q = x4[i];
    }
    x_half_out[i] = vec4<f16>(q);
}

// Hands one accumulator (rows r0.., outputs o0..) to `store` through this subgroup's part of
// coop_out. Every subgroup calls it in step (the barriers).
fn coop_store(c: coop_mat16x16<f32, C>, r0: u32, o0: u32, lane: Lane) {
    let part = lane.subgroup * 256u;
    coopStoreT(c, &coop_out[part], 16u);
    workgroupBarrier();
    for (var e = lane.subgroup_lane; e < 256u; e += 32u) {
        let row = r0 + e / 16u;
        let o = o0 + e % 16u;
        if row < p.rows && o < p.n_out {
            store(row, o, coop_out[part + e]);
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn matmul_coop(lane: Lane) {
    let origin = tile_origin(lane, COOP_ROWS, COOP_OUTS);
    let row0 = origin.x;
    let out0 = origin.y;
    let n = p.n_in;
    let sg = lane.subgroup;
    // What this subgroup copies each slice: the x block (row block sg / 2, k block sg % 2) and
    // the w blocks (output block sg, both k blocks). Output blocks past n_out read the last
    // one again (whole blocks stay in bounds); `store` drops their results.
    let from_x = (row0 + sg / 2u * 16u) * n + sg % 2u * 16u;
    let from_w = min(out0 + sg * 16u, p.n_out - 16u) * n;
    let to_x = sg / 2u * 16u * COOP_STRIDE + sg % 2u * 16u;
    let to_w = sg * 16u * COOP_STRIDE;
    // This subgroup's 32 x 32 of the tile.
    let sr = sg / 4u * 32u;
    let so = sg % 4u * 32u;
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    for (var k0 = 0u; k0 < n; k0 += COOP_K) {
        let xb = coopLoadT<coop_mat16x16<f16, A>>(&x_half[from_x + k0], n);
        let wb0 = coopLoad<coop_mat16x16<f16, B>>(&w[from_w + k0], n);
        let wb1 = coopLoad<coop_mat16x16<f16, B>>(&w[from_w + k0 + 16u], n);
        coopStoreT(xb, &coop_x[to_x], COOP_STRIDE);
        coopStore(wb0, &coop_w[to_w], COOP_STRIDE);
        coopStore(wb1, &coop_w[to_w + 16u], COOP_STRIDE);
        workgroupBarrier();
        for (var kk = 0u; kk < COOP_K; kk += 16u) {
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&coop_x[sr * COOP_STRIDE + kk], COOP_STRIDE);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&coop_x[(sr + 16u) * COOP_STRIDE + kk], COOP_STRIDE);
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&coop_w[so * COOP_STRIDE + kk], COOP_STRIDE);
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&coop_w[(so + 16u) * COOP_STRIDE + kk], COOP_STRIDE);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
        }
        workgroupBarrier();
    }
    coop_store(c00, row0 + sr, out0 + so, lane);
    coop_store(c01, row0 + sr, out0 + so + 16u, lane);
    coop_store(c10, row0 + sr + 16u, out0 + so, lane);
    coop_store(c11, row0 + sr + 16u, out0 + so + 16u, lane);
}
