// Attention over the KV cache block of one layer, in three kernels:
// - attention_prepare applies positions to the new rows' q and k and appends k, v and the
//   original positions to the cache;
// - attention (one workgroup per row and query head) runs a chunked online softmax over the
//   keys the row may see and, when scoring, the log-sum-exp of the noisy logits;
// - attention_score (one invocation per kv head and slot) adds exp(noisy - lse) of every query
//   head of the group and every row to the slot's score, in a fixed order.
// Cache layout: k, v [kv_head][slot][head_dim], pos and score [kv_head][slot], `capacity` slots.

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
    // 0: none, or POS_* below. `table` holds [row][pair](cos, sin) for rotary and
    // slopes[head] for ALiBi.
    positions: u32,
    rot_dims: u32,
    score: u32,
    noise: u32,
    tau: f32,
    seed: u32,
    layer: u32,
}

const POS_ROPE_INTERLEAVED: u32 = 1u;
const POS_ROPE_HALVES: u32 = 2u;
const POS_ALIBI: u32 = 3u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> q: array<f32>;
@group(0) @binding(4) var<storage, read_write> k: array<kt>;
@group(0) @binding(5) var<storage, read_write> v: array<kt>;
@group(0) @binding(6) var<storage, read_write> pos: array<u32>;
@group(0) @binding(7) var<storage, read_write> score: array<f32>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;
@group(0) @binding(9) var<storage, read_write> lse: array<f32>;

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
    let cos_a = table[(r * half + pair) * 2u];
    let sin_a = table[(r * half + pair) * 2u + 1u];
    let xa = qkv[start + a];
    let xb = qkv[start + b];
    if d == a {
        return xa * cos_a - xb * sin_a;
    }
    return xb * cos_a + xa * sin_a;
}

fn alibi(head: u32, key_pos: u32, query_pos: u32) -> f32 {
    if p.positions != POS_ALIBI {
        return 0.0;
    }
    return table[head] * (f32(key_pos) - f32(query_pos));
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
    let row = r * (p.heads + 2u * p.kv_heads) * hd;
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

var<workgroup> q_head: array<f32, WG>;
var<workgroup> weights: array<f32, WG>;

@compute @workgroup_size(256)
fn attention(lane: Lane) {
    let item = group_index(lane);
    if item >= p.rows * p.heads {
        return;
    }
    let r = item / p.heads;
    let h = item % p.heads;
    let hd = p.head_dim;
    let base = h / (p.heads / p.kv_heads) * p.capacity;
    let query_pos = p.first_pos + r;
    let t = lane.index;
    if t < hd {
        q_head[t] = q[(r * p.heads + h) * hd + t];
    }
    workgroupBarrier();
    // The older cache and the new rows up to this one; within them keys are masked by
    // original position, as causality is defined by positions, not slots.
    let n = p.old_len + r + 1u;
    var m = -FLT_MAX;
    var sum = 0.0;
    var acc = 0.0;
    var noisy_m = -FLT_MAX;
    var noisy_sum = 0.0;
    for (var c0 = 0u; c0 < n; c0 += WG) {
        let s = c0 + t;
        var valid = false;
        var x = -FLT_MAX;
        if s < n {
            let key_pos = pos[base + s];
            valid = key_pos <= query_pos;
            if valid {
                var dot = 0.0;
                for (var d = 0u; d < hd; d++) {
                    dot += q_head[d] * f32(k[(base + s) * hd + d]);
                }
                x = dot * p.scale + alibi(h, key_pos, query_pos);
            }
        }
        let new_m = max(m, wg_max(x, lane));
        let rescale = exp(m - new_m);
        let e = select(0.0, exp(x - new_m), valid);
        weights[t] = e;
        // The reduction's barrier also publishes `weights`.
        sum = sum * rescale + wg_sum(e, lane);
        m = new_m;
        if t < hd {
            acc *= rescale;
            let count = min(WG, n - c0);
            for (var j = 0u; j < count; j++) {
                acc += weights[j] * f32(v[(base + c0 + j) * hd + t]);
            }
        }
        if p.score != 0u {
            var y = -FLT_MAX;
            if valid {
                y = noisy(x, h, query_pos, pos[base + s]);
            }
            let new_noisy_m = max(noisy_m, wg_max(y, lane));
            let ey = select(0.0, exp(y - new_noisy_m), valid);
            noisy_sum = noisy_sum * exp(noisy_m - new_noisy_m) + wg_sum(ey, lane);
            noisy_m = new_noisy_m;
        }
        // `weights` is rewritten by the next chunk.
        workgroupBarrier();
    }
    if t < hd {
        out[(r * p.heads + h) * hd + t] = acc / sum;
    }
    if p.score != 0u && t == 0u {
        lse[r * p.heads + h] = noisy_m + log(noisy_sum);
    }
}

@compute @workgroup_size(256)
fn attention_score(lane: Lane) {
    let i = item_index(lane);
    if i >= p.kv_heads * p.len {
        return;
    }
    let g = i / p.len;
    let slot = g * p.capacity + i % p.len;
    let key_pos = pos[slot];
    let hd = p.head_dim;
    let group = p.heads / p.kv_heads;
    var total = score[slot];
    // Per query head a partial sum over rows, then added to the slot: the CPU's order.
    for (var h = g * group; h < (g + 1u) * group; h++) {
        var part = 0.0;
        for (var r = 0u; r < p.rows; r++) {
            let query_pos = p.first_pos + r;
            if key_pos > query_pos {
                continue;
            }
            var dot = 0.0;
            for (var d = 0u; d < hd; d++) {
                dot += q[(r * p.heads + h) * hd + d] * f32(k[slot * hd + d]);
            }
            let x = dot * p.scale + alibi(h, key_pos, query_pos);
            part += exp(noisy(x, h, query_pos, key_pos) - lse[r * p.heads + h]);
        }
        total += part;
    }
    score[slot] = total;
}
