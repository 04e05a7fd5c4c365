// Products and embedding rows over weights kept in their file's block formats (GGUF Q4_K,
// Q8_0, ...), read from the raw blocks as u32 words. The host builds one module per format: it
// prepends BLOCK_VALUES, BLOCK_BYTES and `fn eight(base, g) -> Eight`, which decodes values
// 8g..8g + 8 of the block at byte `base` (quant_blocks32.wgsl, quant_kquants.wgsl). Every sum
// accumulates in f32.
//
// A weight is one or more segments, each its own buffer of whole rows in one format; a
// dispatch covers one segment, whose outputs are columns out_col.. of rows out_stride wide.
// `quant_gemv` serves a few rows and reads each weight once (folding the norm of one row in,
// as matmul.wgsl's gemvs do); `quant_matmul` tiles more rows,
// decoding each 64 x 16 slice of weights into workgroup memory; `quant_dequantize` writes the
// values out for a prompt's product on the plain kernels; `quant_embed` copies rows of an
// embedding table.

struct QuantParams {
    // Input rows (embedding: ids).
    rows: u32,
    // The segment's rows: outputs of a product, table rows of an embedding.
    n_out: u32,
    // Values per weight row.
    n_in: u32,
    // Bit 0: add the bias. Bit 1: add the result into out. Bits 2-3: GELU form (gelu.wgsl).
    // Bits 4-6: the gemvs' folded norm of their one row (NORM_*). Bit 7: quant_gemv_gated's
    // gate is GELU-tanh (GeGLU) rather than SiLU.
    flags: u32,
    // Values per row of out (the whole weight's outputs).
    out_stride: u32,
    // The segment's first row in the whole weight: its first output column, or the first
    // token id of its embedding rows.
    out_col: u32,
    // The folded norm's epsilon.
    eps: f32,
}

const NORM_FOLDED: u32 = 16u;
const NORM_RMS: u32 = 32u;
const NORM_BIAS: u32 = 64u;
const GATE_GELU: u32 = 128u;

var<immediate> p: QuantParams;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> wq: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<wt>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> ids: array<u32>;
// The folded norm's weight and bias, [n_in] each (norm_row.wgsl).
@group(0) @binding(9) var<storage, read> norm_weight: array<wt>;
@group(0) @binding(10) var<storage, read> norm_bias: array<wt>;

fn x_at(i: u32) -> f32 {
    return x4[i / 4u][i % 4u];
}

// The statistics of the gemv's one row where it folds a norm in: every workgroup takes them
// itself (a few hundred to a thousand values).
fn gemv_stats(lane: Lane) -> RowStats {
    if (p.flags & NORM_FOLDED) == 0u {
        return RowStats(0.0, 1.0);
    }
    return row_stats(0u, p.n_in, (p.flags & NORM_RMS) != 0u, p.eps, lane);
}

// Input values 4j..4j + 4 of row r: x, or its norm.
fn input4(r: u32, j: u32, s: RowStats) -> vec4<f32> {
    let q = x4[r * p.n_in / 4u + j];
    if (p.flags & NORM_FOLDED) == 0u {
        return q;
    }
    let k = 4u * j;
    let b = (p.flags & NORM_BIAS) != 0u;
    return vec4(
        normed(s, q.x, k, b),
        normed(s, q.y, k + 1u, b),
        normed(s, q.z, k + 2u, b),
        normed(s, q.w, k + 3u, b),
    );
}

// Eight decoded weights.
struct Eight {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// Eight small unsigned fields, one per byte of 8 bytes (see `fields8`).
struct Fields {
    lo: vec4<u32>,
    hi: vec4<u32>,
}

// The 4 bytes at byte offset o, any alignment (the host pads each buffer past its last block).
fn u32_at(o: u32) -> u32 {
    let i = o >> 2u;
    let s = (o & 3u) * 8u;
    if s == 0u {
        return wq[i];
    }
    return (wq[i] >> s) | (wq[i + 1u] << (32u - s));
}

fn byte_at(o: u32) -> u32 {
    return (wq[o >> 2u] >> ((o & 3u) * 8u)) & 0xffu;
}

// The byte at o as a signed value.
fn i8_at(o: u32) -> i32 {
    return i32(byte_at(o) << 24u) >> 24u;
}

// The f16 at byte offset o (even: every block and its f16 fields start on even bytes).
fn f16_at(o: u32) -> f32 {
    return unpack2x16float(wq[o >> 2u] >> ((o & 2u) * 8u)).x;
}

// (byte k of the 8 bytes at o) >> shift & mask, for k = 0..8.
fn fields8(o: u32, shift: u32, mask: u32) -> Fields {
    let s = vec4(0u, 8u, 16u, 24u) + vec4(shift);
    let m = vec4(mask);
    return Fields((vec4(u32_at(o)) >> s) & m, (vec4(u32_at(o + 4u)) >> s) & m);
}

// Bits 0..8 of `bits` (bit k for value k) shifted to `at`.
fn bits8(bits: u32, at: u32) -> Fields {
    let b = vec4(bits);
    return Fields(
        ((b >> vec4(0u, 1u, 2u, 3u)) & vec4(1u)) << vec4(at),
        ((b >> vec4(4u, 5u, 6u, 7u)) & vec4(1u)) << vec4(at),
    );
}

// scale * q + offset over eight fields.
fn affine(q: Fields, scale: f32, offset: f32) -> Eight {
    return Eight(scale * vec4<f32>(q.lo) + offset, scale * vec4<f32>(q.hi) + offset);
}

// scale * (q - zero).
fn centred(q: Fields, scale: f32, zero: i32) -> Eight {
    let z = vec4(zero);
    return Eight(
        scale * vec4<f32>(vec4<i32>(q.lo) - z),
        scale * vec4<f32>(vec4<i32>(q.hi) - z),
    );
}

// The non-linear 4-bit codebook of IQ4_NL and IQ4_XS.
var<private> IQ4: array<f32, 16> = array(
    -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0,
    1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0,
);

fn codebook(q: Fields, scale: f32) -> Eight {
    return Eight(
        scale * vec4(IQ4[q.lo.x], IQ4[q.lo.y], IQ4[q.lo.z], IQ4[q.lo.w]),
        scale * vec4(IQ4[q.hi.x], IQ4[q.hi.y], IQ4[q.hi.z], IQ4[q.hi.w]),
    );
}

// Bytes per weight row.
fn row_bytes() -> u32 {
    return p.n_in / BLOCK_VALUES * BLOCK_BYTES;
}

// Values 8g..8g + 8 of weight row `row` (g counts along the whole row).
fn row_eight(row: u32, g: u32) -> Eight {
    let per_block = BLOCK_VALUES / 8u;
    return eight(row * row_bytes() + g / per_block * BLOCK_BYTES, g % per_block);
}

fn store(row: u32, o: u32, acc: f32) {
    let col = p.out_col + o;
    var y = acc;
    if (p.flags & 1u) != 0u {
        y += f32(bias[col]);
    }
    let at = row * p.out_stride + col;
    if (p.flags & 2u) != 0u {
        out[at] += y;
    } else {
        out[at] = gelu(y, (p.flags >> 2u) & 3u);
    }
}

// One output per team, 8 per workgroup, for up to GEMV_ROWS input rows: the team strides
// along the weight row eight values at a time, so consecutive invocations read consecutive
// bytes of a block, and each decoded eight meets every input row.
const GEMV_OUTPUTS: u32 = 8u;
const GEMV_ROWS: u32 = 8u;

@compute @workgroup_size(256)
fn quant_gemv(lane: Lane) {
    let s = gemv_stats(lane);
    let groups = p.n_in / 8u;
    for (var j = team(lane); j < GEMV_OUTPUTS; j += teams(lane)) {
        let o = group_index(lane) * GEMV_OUTPUTS + j;
        var acc: array<f32, GEMV_ROWS>;
        if o < p.n_out {
            for (var g = team_lane(lane); g < groups; g += team_size(lane)) {
                let v = row_eight(o, g);
                for (var r = 0u; r < p.rows; r++) {
                    acc[r] += dot(v.lo, input4(r, 2u * g, s)) + dot(v.hi, input4(r, 2u * g + 1u, s));
                }
            }
        }
        // Every team sums, in or out of range, so a workgroup-memory team_sum stays uniform.
        for (var r = 0u; r < p.rows; r++) {
            let total = team_sum(acc[r], lane);
            if team_lane(lane) == 0u && o < p.n_out {
                store(r, o, total);
            }
        }
    }
}

// quant_gemv over a fused [gate | up] weight of one segment: each team computes gate o and up
// o + n_out / 2, stores both as quant_gemv would, and writes act[row][o] = SwiGLU(gate, up),
// or GeGLU with GATE_GELU, as activation.wgsl computes it: one dispatch for the MLP's first
// product and its activation.
@group(0) @binding(7) var<storage, read_write> act: array<f32>;

@compute @workgroup_size(256)
fn quant_gemv_gated(lane: Lane) {
    let s = gemv_stats(lane);
    let width = p.n_out / 2u;
    let groups = p.n_in / 8u;
    for (var j = team(lane); j < GEMV_OUTPUTS; j += teams(lane)) {
        let o = group_index(lane) * GEMV_OUTPUTS + j;
        var gate: array<f32, GEMV_ROWS>;
        var up: array<f32, GEMV_ROWS>;
        if o < width {
            for (var g = team_lane(lane); g < groups; g += team_size(lane)) {
                let vg = row_eight(o, g);
                let vu = row_eight(o + width, g);
                for (var r = 0u; r < p.rows; r++) {
                    let lo = input4(r, 2u * g, s);
                    let hi = input4(r, 2u * g + 1u, s);
                    gate[r] += dot(vg.lo, lo) + dot(vg.hi, hi);
                    up[r] += dot(vu.lo, lo) + dot(vu.hi, hi);
                }
            }
        }
        for (var r = 0u; r < p.rows; r++) {
            let gate_sum = team_sum(gate[r], lane);
            let up_sum = team_sum(up[r], lane);
            if team_lane(lane) == 0u && o < width {
                store(r, o, gate_sum);
                store(r, o + width, up_sum);
                let at = r * p.out_stride + p.out_col + o;
                let gelu_gate = (p.flags & GATE_GELU) != 0u;
                act[r * width + o] = gate_act(out[at], gelu_gate) * out[at + width];
            }
        }
    }
}

// A 64 x 64 output tile per workgroup, as matmul.wgsl's: each invocation owns 4 rows x 4
// outputs, its outputs 16 apart. K advances in slices of 16 staged in workgroup memory as vec4
// runs ([row][k / 4], [output][k / 4]); half the invocations decode the weights' slice, two
// eights each.
const QTILE: u32 = 64u;
const QTK: u32 = 16u;
var<workgroup> qx_tile: array<vec4<f32>, 256>;
var<workgroup> qw_tile: array<vec4<f32>, 256>;

@compute @workgroup_size(256)
fn quant_matmul(lane: Lane) {
    let tiles_out = (p.n_out + QTILE - 1u) / QTILE;
    let tile = group_index(lane);
    let row0 = tile / tiles_out * QTILE;
    let out0 = tile % tiles_out * QTILE;
    let my_rows = lane.index / 16u * 4u;
    let my_out = lane.index % 16u;
    // Input loading: this invocation's row and quarter of the slice.
    let r = row0 + lane.index / 4u;
    let kq = lane.index % 4u * 4u;
    // Weight decoding: this invocation's output and half of the slice.
    let wo = lane.index / 2u;
    let part = lane.index % 2u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.n_in; k0 += QTK) {
        var xq = vec4(0.0);
        if r < p.rows {
            xq = x4[(r * p.n_in + k0 + kq) / 4u];
        }
        qx_tile[lane.index] = xq;
        if lane.index < 2u * QTILE {
            var v = Eight(vec4(0.0), vec4(0.0));
            if out0 + wo < p.n_out {
                v = row_eight(out0 + wo, k0 / 8u + part);
            }
            qw_tile[wo * 4u + part * 2u] = v.lo;
            qw_tile[wo * 4u + part * 2u + 1u] = v.hi;
        }
        workgroupBarrier();
        for (var q = 0u; q < QTK / 4u; q++) {
            let a = my_rows * 4u + q;
            let b = my_out * 4u + q;
            let wv = array(qw_tile[b], qw_tile[b + 64u], qw_tile[b + 128u], qw_tile[b + 192u]);
            for (var i = 0u; i < 4u; i++) {
                let xv = qx_tile[a + i * 4u];
                acc[i] += vec4(dot(xv, wv[0]), dot(xv, wv[1]), dot(xv, wv[2]), dot(xv, wv[3]));
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            let row = row0 + my_rows + i;
            let o = out0 + my_out + 16u * j;
            if row < p.rows && o < p.n_out {
                store(row, o, acc[i][j]);
            }
        }
    }
}

// out[r] = table[ids[r]] for the ids in this segment's rows (out_col..out_col + n_out), one
// invocation per eight values; rows of n_in values.
@compute @workgroup_size(256)
fn quant_embed(lane: Lane) {
    let groups = p.n_in / 8u;
    let i = item_index(lane);
    if i >= p.rows * groups {
        return;
    }
    let r = i / groups;
    let g = i % groups;
    let id = ids[r];
    if id < p.out_col || id - p.out_col >= p.n_out {
        return;
    }
    let v = row_eight(id - p.out_col, g);
    let at = r * p.n_in + 8u * g;
    for (var k = 0u; k < 4u; k++) {
        out[at + k] = v.lo[k];
        out[at + 4u + k] = v.hi[k];
    }
}

// Bytes as signed values.
fn signed8(v: vec4<u32>) -> vec4<i32> {
    return bitcast<vec4<i32>>(v << vec4(24u)) >> vec4(24u);
}

// a | b << at, field by field.
fn join(a: Fields, b: Fields, at: u32) -> Fields {
    return Fields(a.lo | (b.lo << vec4(at)), a.hi | (b.hi << vec4(at)));
}

// The segment's rows as values of the weight type into rows out_col.. of a [rows][n_in]
// matrix, one invocation per eight values: a prompt's product then runs on the plain kernels
// (cooperative matrices where the adapter has them).
@group(0) @binding(6) var<storage, read_write> dequantized: array<wt>;

@compute @workgroup_size(256)
fn quant_dequantize(lane: Lane) {
    let groups = p.n_in / 8u;
    let i = item_index(lane);
    if i >= p.n_out * groups {
        return;
    }
    let r = i / groups;
    let g = i % groups;
    let v = row_eight(r, g);
    let at = (p.out_col + r) * p.n_in + 8u * g;
    for (var k = 0u; k < 4u; k++) {
        dequantized[at + k] = wt(v.lo[k]);
        dequantized[at + 4u + k] = wt(v.hi[k]);
    }
}
