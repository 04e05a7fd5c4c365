// out[rows, n_out] = x[rows, n_in] . w[n_out, n_in]^T (+ bias), f32 accumulation whatever the
// weight type, then through a GELU or added into what `out` holds (flags). `matmul` tiles many
// rows; `gemv` serves one row and reads each weight once; `gemv_swiglu` is the gemv of a fused
// [gate | up] product that also writes its SwiGLU, saving a dispatch per MLP; `gemv_pair` and
// `gemv_sum` run a parallel block's two products of one kind in one dispatch. The gemvs but
// gemv_sum may fold the norm of their row into the product (norm_row.wgsl), saving the norm's
// dispatch. matmul_coop.wgsl runs the many-row product on cooperative matrices instead where
// the adapter has them.

struct Params {
    rows: u32,
    n_out: u32,
    n_in: u32,
    // Bit 0: add the bias. Bit 1: add the result into out. Bits 2-3: GELU form (gelu.wgsl).
    // Bits 4-6: the gemv's folded norm (NORM_*). Bit 7: gemv_swiglu's gate is GELU-tanh
    // (GeGLU) rather than SiLU.
    flags: u32,
    // The folded norm's epsilon.
    eps: f32,
    // gemv_pair: the second product's outputs; gemv_sum: its inputs; gemv_spans: heads.
    n_b: u32,
    // gemv_pair: the second product's bias and GELU bits (as flags); gemv_sum: its bias bit;
    // gemv_spans: spans per head.
    flags_b: u32,
}

const NORM_FOLDED: u32 = 16u;
const NORM_RMS: u32 = 32u;
const NORM_BIAS: u32 = 64u;
const GATE_GELU: u32 = 128u;

var<immediate> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<wt>;
@group(0) @binding(3) var<storage, read> bias: array<wt>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
// The same x and w as runs of 4 along k: one vector load where n_in is a multiple of 4 (so
// every row starts on a run boundary).
@group(0) @binding(5) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> w4: array<vec4<wt>>;
// The same w as raw 16-byte units for the gemv (see unit_dot).
@group(0) @binding(7) var<storage, read> w_units: array<vec4<u32>>;
// gemv_swiglu's [n_out / 2] activations.
@group(0) @binding(8) var<storage, read_write> act: array<f32>;
// The folded norm's weight and bias, [n_in] each.
@group(0) @binding(9) var<storage, read> norm_weight: array<wt>;
@group(0) @binding(10) var<storage, read> norm_bias: array<wt>;
// The second product of gemv_pair and gemv_sum: its weights as 16-byte units and its bias;
// gemv_pair's outputs; gemv_sum's inputs as vec4 runs.
@group(0) @binding(11) var<storage, read> w_b_units: array<vec4<u32>>;
@group(0) @binding(12) var<storage, read> bias_b: array<wt>;
@group(0) @binding(13) var<storage, read_write> out_b: array<f32>;
@group(0) @binding(14) var<storage, read> x_b4: array<vec4<f32>>;
// gemv_spans' input: a decode step's attention spans as decode_partial writes them (per head
// and span, a vec4 of statistics then head_dim / 4 output runs), and where the combined
// attention output goes.
@group(0) @binding(15) var<storage, read> spans: array<vec4<f32>>;
@group(0) @binding(16) var<storage, read_write> attention_out: array<vec4<f32>>;
// The folded RMSNorm's weight as 16-byte units, like w_units (gemv_units_rms and
// gemv_swiglu_units_rms).
@group(0) @binding(17) var<storage, read> norm_units: array<vec4<u32>>;

// x[row][k..k + 4] (k a multiple of 4), zero past the ends.
fn x_quad(row: u32, k: u32) -> vec4<f32> {
    if row >= p.rows || k >= p.n_in {
        return vec4(0.0);
    }
    if p.n_in % 4u == 0u {
        return x4[(row * p.n_in + k) / 4u];
    }
    var q = vec4(0.0);
    for (var c = 0u; c < 4u && k + c < p.n_in; c++) {
        q[c] = x[row * p.n_in + k + c];
    }
    return q;
}

// w[o][k..k + 4] (k a multiple of 4), zero past the ends.
fn w_quad(o: u32, k: u32) -> vec4<f32> {
    if o >= p.n_out || k >= p.n_in {
        return vec4(0.0);
    }
    if p.n_in % 4u == 0u {
        return vec4<f32>(w4[(o * p.n_in + k) / 4u]);
    }
    var q = vec4(0.0);
    for (var c = 0u; c < 4u && k + c < p.n_in; c++) {
        q[c] = f32(w[o * p.n_in + k + c]);
    }
    return q;
}

fn store(row: u32, o: u32, acc: f32) {
    var y = acc;
    if (p.flags & 1u) != 0u {
        y += f32(bias[o]);
    }
    let at = row * p.n_out + o;
    if (p.flags & 2u) != 0u {
        out[at] += y;
    } else {
        out[at] = gelu(y, (p.flags >> 2u) & 3u);
    }
}

// A 64 x 64 output tile per workgroup; each invocation owns 4 rows x 4 outputs, its outputs
// 16 apart so that neighbouring invocations write neighbouring values. K advances in slices
// of 16 staged in workgroup memory as vec4 runs along k ([row][k / 4], [output][k / 4]), so
// the inner loop is 16 dot products for 8 vector loads.
const TILE: u32 = 64u;
const TK: u32 = 16u;
var<workgroup> x_tile: array<vec4<f32>, 256>;
var<workgroup> w_tile: array<vec4<f32>, 256>;

// The first row and output of this workgroup's tile of tile_rows x tile_outs, the tiles laid
// out outputs first (the host's grid: row tiles x output tiles).
fn tile_origin(lane: Lane, tile_rows: u32, tile_outs: u32) -> vec2<u32> {
    let tiles_out = (p.n_out + tile_outs - 1u) / tile_outs;
    let tile = group_index(lane);
    return vec2(tile / tiles_out * tile_rows, tile % tiles_out * tile_outs);
}

@compute @workgroup_size(256)
fn matmul(lane: Lane) {
    let origin = tile_origin(lane, TILE, TILE);
    let row0 = origin.x;
    let out0 = origin.y;
    let my_rows = lane.index / 16u * 4u;
    let my_out = lane.index % 16u;
    // Tile loading: this invocation's row (or output) and quarter of the k slice.
    let r = lane.index / 4u;
    let kq = lane.index % 4u * 4u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.n_in; k0 += TK) {
        x_tile[lane.index] = x_quad(row0 + r, k0 + kq);
        w_tile[lane.index] = w_quad(out0 + r, k0 + kq);
        workgroupBarrier();
        for (var q = 0u; q < TK / 4u; q++) {
            let a = my_rows * 4u + q;
            let b = my_out * 4u + q;
            let wq = array(w_tile[b], w_tile[b + 64u], w_tile[b + 128u], w_tile[b + 192u]);
            for (var i = 0u; i < 4u; i++) {
                let xq = x_tile[a + i * 4u];
                acc[i] += vec4(dot(xq, wq[0]), dot(xq, wq[1]), dot(xq, wq[2]), dot(xq, wq[3]));
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

// One output per team (a subgroup, or 32 invocations), 8 per workgroup, after the CUDA
// gemv_rows kernel: the team strides along the weight row in 16-byte units, each invocation
// issuing four independent loads before using any of them (bytes in flight are what hide DRAM
// latency), then the team sums its partials.
const GEMV_OUTPUTS: u32 = 8u;
// Weights per 16-byte unit: 8 halves or 4 floats.
const UNIT: u32 = 16u / WT_BYTES;

// The gemv reads x through x4 only, binding one buffer fewer.
fn x_at(k: u32) -> f32 {
    return x4[k / 4u][k % 4u];
}

// The statistics of the gemv's row where it folds a norm in: every workgroup takes them itself.
fn gemv_stats(lane: Lane) -> RowStats {
    if (p.flags & NORM_FOLDED) == 0u {
        return RowStats(0.0, 1.0);
    }
    return row_stats(0u, p.n_in, (p.flags & NORM_RMS) != 0u, p.eps, lane);
}

// Input value k of the gemv: x[k], or its norm.
fn input_at(k: u32, s: RowStats) -> f32 {
    if (p.flags & NORM_FOLDED) == 0u {
        return x_at(k);
    }
    return normed(s, x_at(k), k, (p.flags & NORM_BIAS) != 0u);
}

// Input values 4j..4j + 4 of the gemv, as input_at.
fn input_quad(j: u32, s: RowStats) -> vec4<f32> {
    let q = x4[j];
    if (p.flags & NORM_FOLDED) == 0u {
        return q;
    }
    let k = 4u * j;
    let bias = (p.flags & NORM_BIAS) != 0u;
    return vec4(
        normed(s, q.x, k, bias),
        normed(s, q.y, k + 1u, bias),
        normed(s, q.z, k + 2u, bias),
        normed(s, q.w, k + 3u, bias),
    );
}

// What a gemv_part reads: the first product's weights and inputs, the second product of
// gemv_pair (its own weights, the same inputs) or of gemv_sum (its own weights and inputs).
const PART_A: u32 = 0u;
const PART_PAIR_B: u32 = 1u;
const PART_SUM_B: u32 = 2u;

fn weight_unit(part: u32, i: u32) -> vec4<u32> {
    if part == PART_A {
        return w_units[i];
    }
    return w_b_units[i];
}

// Input values 4j..4j + 4 of the part.
fn part_quad(part: u32, j: u32, s: RowStats) -> vec4<f32> {
    if part == PART_SUM_B {
        return x_b4[j];
    }
    return input_quad(j, s);
}

// The dot product of one unit of weights with inputs u * UNIT..(u + 1) * UNIT.
fn unit_dot(units: vec4<u32>, u: u32, s: RowStats, part: u32) -> f32 {
    if WT_BYTES == 2u {
        let lo = vec4(unpack2x16float(units.x), unpack2x16float(units.y));
        let hi = vec4(unpack2x16float(units.z), unpack2x16float(units.w));
        return dot(lo, part_quad(part, 2u * u, s)) + dot(hi, part_quad(part, 2u * u + 1u, s));
    }
    return dot(bitcast<vec4<f32>>(units), part_quad(part, u, s));
}

// This invocation's part of output o's dot product over n_in inputs (zero from `end` on), for
// its team to sum. The second products take only whole units (the host checks).
fn gemv_part(o: u32, end: u32, n_in: u32, part: u32, s: RowStats, lane: Lane) -> f32 {
    let l = team_lane(lane);
    let t = team_size(lane);
    var acc = 0.0;
    if o < end && n_in % UNIT == 0u {
        // Every row starts on a unit boundary (and so x on a vec4 one).
        let n = n_in / UNIT;
        let row = o * n;
        // Four units a pass, all loaded before any is used; then the rest one at a time.
        var u = l;
        while u + 3u * t < n {
            let w0 = weight_unit(part, row + u);
            let w1 = weight_unit(part, row + u + t);
            let w2 = weight_unit(part, row + u + 2u * t);
            let w3 = weight_unit(part, row + u + 3u * t);
            acc += unit_dot(w0, u, s, part) + unit_dot(w1, u + t, s, part)
                + unit_dot(w2, u + 2u * t, s, part) + unit_dot(w3, u + 3u * t, s, part);
            u += 4u * t;
        }
        while u < n {
            acc += unit_dot(weight_unit(part, row + u), u, s, part);
            u += t;
        }
    } else if o < end && part == PART_A {
        for (var k = l; k < p.n_in; k += t) {
            acc += input_at(k, s) * f32(w[o * p.n_in + k]);
        }
    }
    return acc;
}

@compute @workgroup_size(256)
fn gemv(lane: Lane) {
    let s = gemv_stats(lane);
    for (var j = team(lane); j < GEMV_OUTPUTS; j += teams(lane)) {
        let o = group_index(lane) * GEMV_OUTPUTS + j;
        // Every team sums, in or out of range, so a workgroup-memory team_sum stays uniform.
        let total = team_sum(gemv_part(o, p.n_out, p.n_in, PART_A, s, lane), lane);
        if team_lane(lane) == 0u && o < p.n_out {
            store(0u, o, total);
        }
    }
}

// The one-row products over whole weight units (n_in a multiple of UNIT) without a folded
// norm or with a folded RMSNorm (no bias): the general gemvs' sums without their branches and
// bindings. On the H100 they saved ~3% (gemv_units, SmolLM2's down projections) and ~9% (the
// RMSNorm kernels) of SmolLM2's decode step.

// Output o's partial dot product for this invocation's team, as gemv_part's: with `rms`, over
// x * the norm weight (the caller scales the sum by 1 / rms).
fn units_dot(o: u32, rms: bool, lane: Lane) -> f32 {
    let l = team_lane(lane);
    let t = team_size(lane);
    let n = p.n_in / UNIT;
    var acc = 0.0;
    if o < p.n_out {
        let row = o * n;
        // Four units a pass, all loaded before any is used.
        var u = l;
        while u + 3u * t < n {
            let w0 = w_units[row + u];
            let w1 = w_units[row + u + t];
            let w2 = w_units[row + u + 2u * t];
            let w3 = w_units[row + u + 3u * t];
            acc += x_unit_dot(w0, u, rms) + x_unit_dot(w1, u + t, rms)
                + x_unit_dot(w2, u + 2u * t, rms) + x_unit_dot(w3, u + 3u * t, rms);
            u += 4u * t;
        }
        while u < n {
            acc += x_unit_dot(w_units[row + u], u, rms);
            u += t;
        }
    }
    return acc;
}

// The dot product of weight unit u of a row with x's inputs u * UNIT..(u + 1) * UNIT, times
// the norm weight's unit u with `rms`.
fn x_unit_dot(units: vec4<u32>, u: u32, rms: bool) -> f32 {
    if WT_BYTES == 2u {
        var lo = vec4(unpack2x16float(units.x), unpack2x16float(units.y));
        var hi = vec4(unpack2x16float(units.z), unpack2x16float(units.w));
        if rms {
            let g = norm_units[u];
            lo *= vec4(unpack2x16float(g.x), unpack2x16float(g.y));
            hi *= vec4(unpack2x16float(g.z), unpack2x16float(g.w));
        }
        return dot(lo, x4[2u * u]) + dot(hi, x4[2u * u + 1u]);
    }
    var w = bitcast<vec4<f32>>(units);
    if rms {
        w *= bitcast<vec4<f32>>(norm_units[u]);
    }
    return dot(w, x4[u]);
}

// 1 / rms(x) for a folded RMSNorm: every workgroup takes it itself.
fn rms_scale(lane: Lane) -> f32 {
    return row_stats(0u, p.n_in, true, p.eps, lane).inv;
}

@compute @workgroup_size(256)
fn gemv_units(lane: Lane) {
    for (var j = team(lane); j < GEMV_OUTPUTS; j += teams(lane)) {
        let o = group_index(lane) * GEMV_OUTPUTS + j;
        let total = team_sum(units_dot(o, false, lane), lane);
        if team_lane(lane) == 0u && o < p.n_out {
            store(0u, o, total);
        }
    }
}

@compute @workgroup_size(256)
fn gemv_units_rms(lane: Lane) {
    let scale = rms_scale(lane);
    for (var j = team(lane); j < GEMV_OUTPUTS; j += teams(lane)) {
        let o = group_index(lane) * GEMV_OUTPUTS + j;
        let total = team_sum(units_dot(o, true, lane), lane) * scale;
        if team_lane(lane) == 0u && o < p.n_out {
            store(0u, o, total);
        }
    }
}

// gemv_swiglu over whole units with a folded RMSNorm.
@compute @workgroup_size(256)
fn gemv_swiglu_units_rms(lane: Lane) {
    let scale = rms_scale(lane);
    let width = p.n_out / 2u;
    for (var j = team(lane); j < GEMV_OUTPUTS; j += teams(lane)) {
        let o = group_index(lane) * GEMV_OUTPUTS + j;
        let inside = o < width;
        // Out of range, o + width may be in range: both sums must still run (uniformity).
        let gate = team_sum(units_dot(select(p.n_out, o, inside), true, lane), lane) * scale;
        let up = team_sum(units_dot(select(p.n_out, o + width, inside), true, lane), lane) * scale;
        if team_lane(lane) == 0u && inside {
            store_swiglu(o, width, gate, up);
        }
    }
}

// Outputs [0, n_out) as gemv computes them, then the second product's n_b into out_b.
@compute @workgroup_size(256)
fn gemv_pair(lane: Lane) {
    let s = gemv_stats(lane);
    for (var j = team(lane); j < GEMV_OUTPUTS; j += teams(lane)) {
        let o = group_index(lane) * GEMV_OUTPUTS + j;
        var part = PART_A;
        var at = o;
        var end = p.n_out;
        if o >= p.n_out {
            part = PART_PAIR_B;
            at = o - p.n_out;
            end = p.n_b;
        }
        let total = team_sum(gemv_part(at, end, p.n_in, part, s, lane), lane);
        if team_lane(lane) == 0u && at < end {
            if part == PART_A {
                store(0u, at, total);
            } else {
                var y = total;
                if (p.flags_b & 1u) != 0u {
                    y += f32(bias_b[at]);
                }
                out_b[at] = gelu(y, (p.flags_b >> 2u) & 3u);
            }
        }
    }
}

// out[o] += x . w[o] + x_b . w_b[o] + the biases: gemv with the accumulate flag, over both.
@compute @workgroup_size(256)
fn gemv_sum(lane: Lane) {
    let s = RowStats(0.0, 1.0);
    for (var j = team(lane); j < GEMV_OUTPUTS; j += teams(lane)) {
        let o = group_index(lane) * GEMV_OUTPUTS + j;
        let part = gemv_part(o, p.n_out, p.n_in, PART_A, s, lane)
            + gemv_part(o, p.n_out, p.n_b, PART_SUM_B, s, lane);
        let total = team_sum(part, lane);
        if team_lane(lane) == 0u && o < p.n_out {
            var y = total;
            if (p.flags_b & 1u) != 0u {
                y += f32(bias_b[o]);
            }
            store(0u, o, y);
        }
    }
}

// Output o of the gemv's first half (the gate) and o + n_out / 2 (up) per team, and their
// SwiGLU (store_swiglu).
@compute @workgroup_size(256)
fn gemv_swiglu(lane: Lane) {
    let s = gemv_stats(lane);
    let width = p.n_out / 2u;
    for (var j = team(lane); j < GEMV_OUTPUTS; j += teams(lane)) {
        let o = group_index(lane) * GEMV_OUTPUTS + j;
        let inside = o < width;
        // Out of range, o + width may be in range: both sums must still run (uniformity).
        let gate = select(p.n_out, o, inside);
        let up = select(p.n_out, o + width, inside);
        let gate_sum = team_sum(gemv_part(gate, p.n_out, p.n_in, PART_A, s, lane), lane);
        let up_sum = team_sum(gemv_part(up, p.n_out, p.n_in, PART_A, s, lane), lane);
        if team_lane(lane) == 0u && inside {
            store_swiglu(o, width, gate_sum, up_sum);
        }
    }
}

// Gate o and up o + width stored as the gemv stores them, and act[o] = SwiGLU(gate, up), or
// GeGLU with GATE_GELU, as activation.wgsl computes it.
fn store_swiglu(o: u32, width: u32, gate_sum: f32, up_sum: f32) {
    store(0u, o, gate_sum);
    store(0u, o + width, up_sum);
    act[o] = gate_act(out[o], (p.flags & GATE_GELU) != 0u) * out[o + width];
}

// gemv over a decode step's attention output that decode_combine has not written yet: each
// workgroup combines the spans itself, into workgroup memory (workgroup 0 also writes the
// output), then computes its outputs as gemv does. One dispatch instead of two: the second
// costs the GPU more than the repeated combining.
const SPAN_INPUT_RUNS: u32 = 512u;
const SPAN_WEIGHTS: u32 = 512u;
var<workgroup> span_input: array<vec4<f32>, SPAN_INPUT_RUNS>;
var<workgroup> span_weight: array<f32, SPAN_WEIGHTS>;

@compute @workgroup_size(256)
fn gemv_spans(lane: Lane) {
    let heads = p.n_b;
    let splits = p.flags_b;
    let runs = p.n_in / heads / 4u;
    let stride = runs + 1u;
    // Span c of head h weighs exp(m_c - m) / sum, its share of decode_combine's result.
    if lane.index < heads {
        let h = lane.index;
        var m = -FLT_MAX;
        for (var c = 0u; c < splits; c++) {
            m = max(m, spans[(h * splits + c) * stride].x);
        }
        var sum = 0.0;
        for (var c = 0u; c < splits; c++) {
            let stats = spans[(h * splits + c) * stride];
            sum += stats.y * exp(stats.x - m);
        }
        for (var c = 0u; c < splits; c++) {
            span_weight[h * splits + c] = exp(spans[(h * splits + c) * stride].x - m) / sum;
        }
    }
    workgroupBarrier();
    for (var j = lane.index; j < p.n_in / 4u; j += WG) {
        let h = j / runs;
        var total = vec4(0.0);
        for (var c = 0u; c < splits; c++) {
            total += spans[(h * splits + c) * stride + 1u + j % runs] * span_weight[h * splits + c];
        }
        span_input[j] = total;
        if group_index(lane) == 0u {
            attention_out[j] = total;
        }
    }
    workgroupBarrier();
    let l = team_lane(lane);
    let t = team_size(lane);
    let n = p.n_in / UNIT;
    for (var j = team(lane); j < GEMV_OUTPUTS; j += teams(lane)) {
        let o = group_index(lane) * GEMV_OUTPUTS + j;
        var acc = 0.0;
        if o < p.n_out {
            for (var u = l; u < n; u += t) {
                let units = w_units[o * n + u];
                if WT_BYTES == 2u {
                    let lo = vec4(unpack2x16float(units.x), unpack2x16float(units.y));
                    let hi = vec4(unpack2x16float(units.z), unpack2x16float(units.w));
                    acc += dot(lo, span_input[2u * u]) + dot(hi, span_input[2u * u + 1u]);
                } else {
                    acc += dot(bitcast<vec4<f32>>(units), span_input[u]);
                }
            }
        }
        let total = team_sum(acc, lane);
        if team_lane(lane) == 0u && o < p.n_out {
            store(0u, o, total);
        }
    }
}
