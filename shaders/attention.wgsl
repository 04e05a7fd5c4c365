// Attention over the KV cache block of one layer:
// - attention_prepare applies positions to the new rows' q and k and appends k, v and the
//   original positions to the cache; attention (one workgroup per row and query head) then
//   runs a chunked online softmax over the keys the row may see and, when scoring, the
//   log-sum-exp of the noisy logits;
// - a decode step (one row) runs decode_partial instead, which prepares the row itself and
//   splits the keys over workgroups (flash-decoding: one workgroup walking a long cache alone
//   leaves the GPU idle), then decode_combine, which merges the spans into the output and the
//   log-sum-exp;
// - attention_score (one invocation per kv head, slot and block of rows) sums exp(noisy - lse)
//   over the query heads of the group and the block's rows, and attention_score_sum adds the
//   blocks' sums to the slot's score: a fixed order, so scores are reproducible. A decode step
//   runs decode_score_evict instead: it adds the row's sums to the scores and evicts in the
//   same dispatch.
// Every kernel masks keys past a sliding window and soft-caps its logits where the layer asks
// (`sees`, `logit`), so the scores accumulate the same logits the output uses.
// Cache layout: k, v [kv_head][slot][head_dim], pos and score [kv_head][slot], `capacity` slots.
// head_dim is a multiple of 4 (at most 256): q, k and v are read as vec4 runs.

struct Params {
    rows: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    capacity: u32,
    // Tokens in the cache before this call, and after it.
    old_len: u32,
    len: u32,
    first_pos: u32,
    scale: f32,
    // 0: none, or POS_* below. `table` holds [position][pair](cos, sin) for rotary (from
    // position 0) and slopes[head] for ALiBi.
    positions: u32,
    rot_dims: u32,
    score: u32,
    noise: u32,
    tau: f32,
    seed: u32,
    layer: u32,
    // Query rows per block of the score's partial sums.
    row_block: u32,
    // The row of qkv and out where these rows start (a sequence of a batched decode step).
    batch_row: u32,
    // decode_score_evict evicts one of slots sinks..candidates_end when `evict` is 1.
    evict: u32,
    sinks: u32,
    candidates_end: u32,
    // decode_partial's keys per workgroup (a multiple of CHUNK) and workgroups per head.
    span: u32,
    splits: u32,
    // Soft-capping of the scaled scores (0: none), a sliding window's width (0: none), and
    // the factor on the rotated dimensions.
    softcap: f32,
    window: u32,
    rot_scale: f32,
}

const POS_ROPE_INTERLEAVED: u32 = 1u;
const POS_ROPE_HALVES: u32 = 2u;
const POS_ALIBI: u32 = 3u;

var<immediate> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> q: array<f32>;
@group(0) @binding(4) var<storage, read_write> k: array<kt>;
@group(0) @binding(5) var<storage, read_write> v: array<kt>;
@group(0) @binding(6) var<storage, read_write> pos: array<u32>;
@group(0) @binding(7) var<storage, read_write> score: array<f32>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;
@group(0) @binding(9) var<storage, read_write> lse: array<f32>;
// A read-only vec4 view of q for the kernels that only read it.
@group(0) @binding(10) var<storage, read> q4: array<vec4<f32>>;
// [kv_head][slot][row block] partial score sums.
@group(0) @binding(13) var<storage, read_write> partial_scores: array<f32>;
// [head][split] results of decode_partial: max, sum of exponentials, noisy max, noisy sum,
// then head_dim unnormalised outputs.
@group(0) @binding(16) var<storage, read_write> parts: array<f32>;
// [head][slot] noisy logits of a decode row, from decode_partial for decode_score_evict.
@group(0) @binding(17) var<storage, read_write> noisy_logits: array<f32>;
// Writable vec4 views of k and v (a buffer may not be bound both read-only and writable in one
// dispatch, and a decode step's attention appends to the cache).
@group(0) @binding(14) var<storage, read_write> k_runs: array<vec4<kt>>;
@group(0) @binding(15) var<storage, read_write> v_runs: array<vec4<kt>>;

// Element d of the head vector at qkv[start..], rotated for new row r (pairs (2i, 2i+1) or
// (i, i + dims/2), as the CPU's apply_rotary).
fn rotated(start: u32, d: u32, r: u32) -> f32 {
    let x = qkv[start + d];
    let rope = p.positions == POS_ROPE_INTERLEAVED || p.positions == POS_ROPE_HALVES;
    if !rope || d >= p.rot_dims {
        return x;
    }
    let half = p.rot_dims / 2u;
    var pair = d % half;
    var a = pair;
    if p.positions == POS_ROPE_INTERLEAVED {
        pair = d / 2u;
        a = 2u * pair;
    }
    let b = select(pair + half, a + 1u, p.positions == POS_ROPE_INTERLEAVED);
    let at = ((p.first_pos + r) * half + pair) * 2u;
    let cos_a = table[at];
    let sin_a = table[at + 1u];
    let xa = qkv[start + a];
    let xb = qkv[start + b];
    if d == a {
        return (xa * cos_a - xb * sin_a) * p.rot_scale;
    }
    return (xb * cos_a + xa * sin_a) * p.rot_scale;
}

fn alibi(head: u32, key_pos: u32, query_pos: u32) -> f32 {
    if p.positions != POS_ALIBI {
        return 0.0;
    }
    return table[head] * (f32(key_pos) - f32(query_pos));
}

// Whether a query at query_pos sees the key at key_pos: causally, and within its window.
fn sees(key_pos: u32, query_pos: u32) -> bool {
    return key_pos <= query_pos && (p.window == 0u || key_pos + p.window > query_pos);
}

// A key's logit from its dot product with the query: scaled, soft-capped where the layer caps
// (cap * tanh(x / cap), its argument clamped where tanh is 1 in f32 anyway), plus ALiBi's bias.
fn logit(dot_qk: f32, head: u32, key_pos: u32, query_pos: u32) -> f32 {
    var x = dot_qk * p.scale;
    if p.softcap > 0.0 {
        x = p.softcap * tanh(clamp(x / p.softcap, -15.0, 15.0));
    }
    return x + alibi(head, key_pos, query_pos);
}

// The score's logit: (x + gumbel) / tau, without noise when scoring is noiseless.
fn noisy(x: f32, head: u32, query_pos: u32, key_pos: u32) -> f32 {
    var g = 0.0;
    if p.noise != 0u {
        g = gumbel(p.seed, p.layer, head, query_pos, key_pos);
    }
    return (x + g) / p.tau;
}

@compute @workgroup_size(256)
fn attention_prepare(lane: Lane) {
    let hd = p.head_dim;
    let all_heads = p.heads + p.kv_heads;
    let i = item_index(lane);
    if i >= p.rows * all_heads * hd {
        return;
    }
    let d = i % hd;
    let h = i / hd % all_heads;
    let r = i / (hd * all_heads);
    let row = (p.batch_row + r) * (p.heads + 2u * p.kv_heads) * hd;
    if h < p.heads {
        q[(r * p.heads + h) * hd + d] = rotated(row + h * hd, d, r);
        return;
    }
    let g = h - p.heads;
    let slot = g * p.capacity + p.old_len + r;
    k[slot * hd + d] = kt(rotated(row + (p.heads + g) * hd, d, r));
    v[slot * hd + d] = kt(qkv[row + (all_heads + g) * hd + d]);
    if d == 0u {
        pos[slot] = p.first_pos + r;
        score[slot] = 0.0;
    }
}

// Values 4t..4t + 4 of rotated(start, .., r).
fn rotated_quad(start: u32, t: u32, r: u32) -> vec4<f32> {
    let d = 4u * t;
    return vec4(rotated(start, d, r), rotated(start, d + 1u, r), rotated(start, d + 2u, r),
        rotated(start, d + 3u, r));
}

var<workgroup> q_head: array<vec4<f32>, 64>;
// A decode row's own key and value as the cache stores them: another workgroup of the kv head
// may still be storing them.
var<workgroup> new_k: array<vec4<f32>, 64>;
var<workgroup> new_v: array<vec4<f32>, 64>;
var<workgroup> weights: array<f32, WG>;
var<workgroup> partial: array<vec4<f32>, WG>;

// Whether slot s (from the kv head's base) is the decode row's own.
fn is_new(s: u32) -> bool {
    return p.rows == 1u && s == p.old_len;
}

fn key_position(base: u32, s: u32) -> u32 {
    if is_new(s) {
        return p.first_pos;
    }
    return pos[base + s];
}

fn key_quad(base: u32, s: u32, t: u32) -> vec4<f32> {
    if is_new(s) {
        return new_k[t];
    }
    return vec4<f32>(k_runs[(base + s) * (p.head_dim / 4u) + t]);
}

fn value_quad(base: u32, s: u32, t: u32) -> vec4<f32> {
    if is_new(s) {
        return new_v[t];
    }
    return vec4<f32>(v_runs[(base + s) * (p.head_dim / 4u) + t]);
}

// A chunked online softmax over one query head's keys, as each invocation holds it: the max
// and sum of exponentials of the logits so far, this invocation's share of the weighted values
// (output quad t % quads, over every (WG / quads)-th key of a step, from key t / quads) and,
// when scoring, the max and sum of exponentials of the noisy logits.
struct Online {
    m: f32,
    sum: f32,
    acc: vec4<f32>,
    noisy_m: f32,
    noisy_sum: f32,
}

fn online_start() -> Online {
    return Online(-FLT_MAX, 0.0, vec4(0.0), -FLT_MAX, 0.0);
}

// `s` with keys c0..c0 + count of the kv head at `base` folded in, this invocation holding key
// c0 + t's logit x and noisy logit y (`valid` where the query sees the key). Every invocation
// of the workgroup calls it.
fn online_step(s: Online, x: f32, y: f32, valid: bool, base: u32, c0: u32, count: u32, lane: Lane) -> Online {
    let t = lane.index;
    let quads = p.head_dim / 4u;
    let key_group = t / quads;
    let key_groups = WG / quads;
    var r = s;
    let new_m = max(r.m, wg_max(x, lane));
    let rescale = exp(r.m - new_m);
    let e = select(0.0, exp(x - new_m), valid);
    weights[t] = e;
    // The reduction's barrier also publishes `weights`.
    r.sum = r.sum * rescale + wg_sum(e, lane);
    r.m = new_m;
    r.acc *= rescale;
    if key_group < key_groups {
        for (var j = key_group; j < count; j += key_groups) {
            r.acc += weights[j] * value_quad(base, c0 + j, t % quads);
        }
    }
    if p.score != 0u {
        let new_noisy_m = max(r.noisy_m, wg_max(y, lane));
        let ey = select(0.0, exp(y - new_noisy_m), valid);
        r.noisy_sum = r.noisy_sum * exp(r.noisy_m - new_noisy_m) + wg_sum(ey, lane);
        r.noisy_m = new_noisy_m;
    }
    // `weights` is rewritten by the next step.
    workgroupBarrier();
    return r;
}

// The unnormalised output quad t of `s` for invocations t < quads (the key groups' shares
// summed), zero for the others. Every invocation of the workgroup calls it.
fn online_output(s: Online, lane: Lane) -> vec4<f32> {
    let quads = p.head_dim / 4u;
    partial[lane.index] = s.acc;
    workgroupBarrier();
    var total = vec4(0.0);
    if lane.index < quads {
        for (var kg = 0u; kg < WG / quads; kg++) {
            total += partial[kg * quads + lane.index];
        }
    }
    return total;
}

@compute @workgroup_size(256)
fn attention(lane: Lane) {
    let item = group_index(lane);
    if item >= p.rows * p.heads {
        return;
    }
    let r = item / p.heads;
    let h = item % p.heads;
    let hd = p.head_dim;
    let quads = hd / 4u;
    let group = p.heads / p.kv_heads;
    let g = h / group;
    let base = g * p.capacity;
    let query_pos = p.first_pos + r;
    let t = lane.index;
    let row = (p.batch_row + r) * (p.heads + 2u * p.kv_heads) * hd;
    if t < quads {
        q_head[t] = rotated_quad(row + h * hd, t, r);
    }
    workgroupBarrier();
    // The older cache and the new rows up to this one; within them keys are masked by
    // original position (causality and a sliding window), not by slot.
    let n = p.old_len + r + 1u;
    var state = online_start();
    for (var c0 = 0u; c0 < n; c0 += WG) {
        let s = c0 + t;
        var valid = false;
        var x = -FLT_MAX;
        var key_pos = 0u;
        if s < n {
            key_pos = key_position(base, s);
            valid = sees(key_pos, query_pos);
            if valid {
                var dot_qk = 0.0;
                for (var d = 0u; d < quads; d++) {
                    dot_qk += dot(q_head[d], key_quad(base, s, d));
                }
                x = logit(dot_qk, h, key_pos, query_pos);
            }
        }
        var y = -FLT_MAX;
        if p.score != 0u && valid {
            y = noisy(x, h, query_pos, key_pos);
        }
        state = online_step(state, x, y, valid, base, c0, min(WG, n - c0), lane);
    }
    let total = online_output(state, lane);
    if t < quads {
        let o = ((p.batch_row + r) * p.heads + h) * p.head_dim + 4u * t;
        for (var c = 0u; c < 4u; c++) {
            out[o + c] = total[c] / state.sum;
        }
    }
    if p.score != 0u && t == 0u {
        lse[r * p.heads + h] = state.noisy_m + log(state.noisy_sum);
    }
}

// ---- Decode: one row, its keys split into spans of whole chunks, one workgroup per (head,
// span), then combined.

// Keys per step of decode_partial's loop. A step's dot products split each key's head into
// SEGMENTS runs, one invocation each, so that every invocation loads (a CUDA-style team
// without shuffles: the runs meet in workgroup memory).
const CHUNK: u32 = 64u;
const SEGMENTS: u32 = WG / CHUNK;
var<workgroup> segment_dots: array<f32, WG>;

fn part_at(h: u32, c: u32) -> u32 {
    return (h * p.splits + c) * (p.head_dim + 4u);
}

// Workgroup (h, c) covers key slots [c * span, (c + 1) * span) of the row's kv head with an
// online softmax and writes the span's statistics and unnormalised output to parts. The
// workgroups whose span ends at the row's own slot (old_len) store the row's key and value
// and use them from workgroup memory. When scoring, the noisy logits go to noisy_logits for
// decode_score_evict.
@compute @workgroup_size(256)
fn decode_partial(lane: Lane) {
    let item = group_index(lane);
    if item >= p.heads * p.splits {
        return;
    }
    let h = item / p.splits;
    let c = item % p.splits;
    let hd = p.head_dim;
    let quads = hd / 4u;
    let group = p.heads / p.kv_heads;
    let g = h / group;
    let base = g * p.capacity;
    let n = p.old_len + 1u;
    let start = c * p.span;
    let end = min(n, start + p.span);
    let t = lane.index;
    let row = p.batch_row * (p.heads + 2u * p.kv_heads) * hd;
    if t < quads {
        q_head[t] = rotated_quad(row + h * hd, t, 0u);
        if end == n {
            let key = vec4<kt>(rotated_quad(row + (p.heads + g) * hd, t, 0u));
            let v_at = row + (p.heads + p.kv_heads + g) * hd + 4u * t;
            let value = vec4<kt>(vec4(qkv[v_at], qkv[v_at + 1u], qkv[v_at + 2u], qkv[v_at + 3u]));
            new_k[t] = vec4<f32>(key);
            new_v[t] = vec4<f32>(value);
            if h % group == 0u {
                let slot = base + p.old_len;
                k_runs[slot * quads + t] = key;
                v_runs[slot * quads + t] = value;
                if t == 0u {
                    pos[slot] = p.first_pos;
                    score[slot] = 0.0;
                }
            }
        }
    }
    workgroupBarrier();
    // Dot products: invocation t takes quads q0..q1 of key t % CHUNK of the step.
    let key = t % CHUNK;
    let per_segment = (quads + SEGMENTS - 1u) / SEGMENTS;
    let q0 = t / CHUNK * per_segment;
    let q1 = min(quads, q0 + per_segment);
    let query_pos = p.first_pos;
    var state = online_start();
    for (var c0 = start; c0 < end; c0 += CHUNK) {
        let count = min(CHUNK, end - c0);
        var part = 0.0;
        if key < count {
            for (var d = q0; d < q1; d++) {
                part += dot(q_head[d], key_quad(base, c0 + key, d));
            }
        }
        segment_dots[t] = part;
        workgroupBarrier();
        var valid = false;
        var x = -FLT_MAX;
        var key_pos = 0u;
        if t < count {
            key_pos = key_position(base, c0 + t);
            valid = sees(key_pos, query_pos);
            if valid {
                var dot_qk = 0.0;
                for (var i = 0u; i < SEGMENTS; i++) {
                    dot_qk += segment_dots[i * CHUNK + t];
                }
                x = logit(dot_qk, h, key_pos, query_pos);
            }
        }
        var y = -FLT_MAX;
        if p.score != 0u && valid {
            y = noisy(x, h, query_pos, key_pos);
        }
        if p.score != 0u && t < count {
            noisy_logits[h * p.capacity + c0 + t] = y;
        }
        // Its closing barrier also guards `segment_dots`, rewritten by the next step.
        state = online_step(state, x, y, valid, base, c0, count, lane);
    }
    let total = online_output(state, lane);
    let at = part_at(h, c);
    if t < quads {
        for (var i = 0u; i < 4u; i++) {
            parts[at + 4u + 4u * t + i] = total[i];
        }
    }
    if t == 0u {
        parts[at] = state.m;
        parts[at + 1u] = state.sum;
        parts[at + 2u] = state.noisy_m;
        parts[at + 3u] = state.noisy_sum;
    }
}

// One workgroup per head: the spans' outputs rescaled to the common max and normalised, and
// the noisy log-sum-exp for decode_score_evict.
@compute @workgroup_size(256)
fn decode_combine(lane: Lane) {
    let h = group_index(lane);
    if h >= p.heads {
        return;
    }
    var m = -FLT_MAX;
    var noisy_m = -FLT_MAX;
    for (var c = 0u; c < p.splits; c++) {
        m = max(m, parts[part_at(h, c)]);
        noisy_m = max(noisy_m, parts[part_at(h, c) + 2u]);
    }
    var sum = 0.0;
    var noisy_sum = 0.0;
    for (var c = 0u; c < p.splits; c++) {
        let at = part_at(h, c);
        sum += parts[at + 1u] * exp(parts[at] - m);
        noisy_sum += parts[at + 3u] * exp(parts[at + 2u] - noisy_m);
    }
    let hd = p.head_dim;
    for (var d = lane.index; d < hd; d += WG) {
        var total = 0.0;
        for (var c = 0u; c < p.splits; c++) {
            let at = part_at(h, c);
            total += parts[at + 4u + d] * exp(parts[at] - m);
        }
        out[(p.batch_row * p.heads + h) * hd + d] = total / sum;
    }
    if p.score != 0u && lane.index == 0u {
        lse[h] = noisy_m + log(noisy_sum);
    }
}

fn row_blocks() -> u32 {
    return (p.rows + p.row_block - 1u) / p.row_block;
}

// `total` plus, per query head of kv head g, the sum over rows first_row..end_row of the
// row's probability of the key in `slot`: per-head partial sums added in head order, the CPU's
// order.
fn slot_score(total: f32, g: u32, slot: u32, first_row: u32, end_row: u32) -> f32 {
    let key_pos = pos[slot];
    let quads = p.head_dim / 4u;
    let group = p.heads / p.kv_heads;
    var sum = total;
    for (var h = g * group; h < (g + 1u) * group; h++) {
        var part = 0.0;
        for (var r = first_row; r < end_row; r++) {
            let query_pos = p.first_pos + r;
            if !sees(key_pos, query_pos) {
                continue;
            }
            var dot_qk = 0.0;
            for (var d = 0u; d < quads; d++) {
                dot_qk += dot(q4[(r * p.heads + h) * quads + d], vec4<f32>(k_runs[slot * quads + d]));
            }
            let x = logit(dot_qk, h, key_pos, query_pos);
            part += exp(noisy(x, h, query_pos, key_pos) - lse[r * p.heads + h]);
        }
        sum += part;
    }
    return sum;
}

@compute @workgroup_size(256)
fn attention_score(lane: Lane) {
    let blocks = row_blocks();
    let i = item_index(lane);
    if i >= p.kv_heads * p.len * blocks {
        return;
    }
    let block = i % blocks;
    let g = i / blocks / p.len;
    let slot = g * p.capacity + i / blocks % p.len;
    let first_row = block * p.row_block;
    let end_row = min(p.rows, first_row + p.row_block);
    if blocks == 1u {
        score[slot] = slot_score(score[slot], g, slot, first_row, end_row);
    } else {
        partial_scores[i] = slot_score(0.0, g, slot, first_row, end_row);
    }
}

@compute @workgroup_size(256)
fn attention_score_sum(lane: Lane) {
    let i = item_index(lane);
    if i >= p.kv_heads * p.len {
        return;
    }
    let blocks = row_blocks();
    let slot = i / p.len * p.capacity + i % p.len;
    var total = score[slot];
    for (var b = 0u; b < blocks; b++) {
        total += partial_scores[i * blocks + b];
    }
    score[slot] = total;
}

// Slots held in registers per invocation per pass of decode_score_evict's move.
const MOVE: u32 = 4u;

// One decode row, one workgroup per kv head: adds the row's probabilities to the slot scores
// (when scoring), then (when evicting) drops the candidate with the lowest score, the earliest
// slot among equals (as evict_rank with one to evict), and moves the slots after it down by
// one, so slots stay in position order.
@compute @workgroup_size(256)
fn decode_score_evict(lane: Lane) {
    let g = group_index(lane);
    let base = g * p.capacity;
    // This invocation's lowest candidate, as the largest negated score.
    var best = 0.0;
    var best_slot = NONE;
    for (var s = lane.index; s < p.len; s += WG) {
        var total = score[base + s];
        if p.score != 0u {
            // The row's probabilities from the logits decode_partial kept, per head in the
            // CPU's order.
            let group = p.heads / p.kv_heads;
            for (var h = g * group; h < (g + 1u) * group; h++) {
                total += exp(noisy_logits[h * p.capacity + s] - lse[h]);
            }
            score[base + s] = total;
        }
        if s >= p.sinks && s < p.candidates_end && better(-total, s, best, best_slot) {
            best = -total;
            best_slot = s;
        }
    }
    if p.evict == 0u {
        return;
    }
    let victim = wg_argmax(best, best_slot, lane);
    if victim == NONE {
        return;
    }
    // The scores written above are read by other invocations below.
    storageBarrier();
    // Destinations victim..len - 1 take the slot after them, in ascending passes, each read
    // completely before it is written (the barrier): in place, as no pass reads a slot that an
    // earlier one wrote.
    let quads = p.head_dim / 4u;
    let end = (base + p.len - 1u) * quads;
    for (var e0 = (base + victim) * quads; e0 < end; e0 += MOVE * WG) {
        var keys: array<vec4<kt>, MOVE>;
        var values: array<vec4<kt>, MOVE>;
        for (var i = 0u; i < MOVE; i++) {
            let e = e0 + i * WG + lane.index;
            if e < end {
                keys[i] = k_runs[e + quads];
                values[i] = v_runs[e + quads];
            }
        }
        storageBarrier();
        for (var i = 0u; i < MOVE; i++) {
            let e = e0 + i * WG + lane.index;
            if e < end {
                k_runs[e] = keys[i];
                v_runs[e] = values[i];
            }
        }
        storageBarrier();
    }
    for (var j0 = base + victim; j0 < base + p.len - 1u; j0 += WG) {
        let j = j0 + lane.index;
        let inside = j < base + p.len - 1u;
        var key_pos = 0u;
        var key_score = 0.0;
        if inside {
            key_pos = pos[j + 1u];
            key_score = score[j + 1u];
        }
        storageBarrier();
        if inside {
            pos[j] = key_pos;
            score[j] = key_score;
        }
        storageBarrier();
    }
}
