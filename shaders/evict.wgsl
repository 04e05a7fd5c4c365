// Eviction in one layer's cache block, in place, per kv head:
// - evict_rank flags each slot kept or evicted: a candidate (not a sink, not recent) is
//   evicted when fewer than `evict_count` candidates rank below it by (score, slot);
// - evict_compact (one workgroup per kv head) lists the survivors' slots in order (a prefix
//   sum of the flags) and compacts K, V, positions and scores from the first evicted slot on.

struct Params {
    kv_heads: u32,
    capacity: u32,
    // Tokens before eviction, and after (the budget).
    len: u32,
    budget: u32,
    sinks: u32,
    // Candidates are slots sinks..candidates_end.
    candidates_end: u32,
    evict_count: u32,
    head_dim: u32,
}

var<immediate> p: Params;
@group(0) @binding(1) var<storage, read_write> score: array<f32>;
// [kv_head][slot], 1 where the slot survives.
@group(0) @binding(2) var<storage, read_write> keep: array<u32>;
// [kv_head][budget] survivor slots.
@group(0) @binding(3) var<storage, read_write> sources: array<u32>;
@group(0) @binding(4) var<storage, read_write> k: array<kt>;
@group(0) @binding(5) var<storage, read_write> v: array<kt>;
@group(0) @binding(6) var<storage, read_write> pos: array<u32>;

@compute @workgroup_size(256)
fn evict_rank(lane: Lane) {
    let i = item_index(lane);
    if i >= p.kv_heads * p.len {
        return;
    }
    let base = i / p.len * p.capacity;
    let s = i % p.len;
    var kept = 1u;
    if s >= p.sinks && s < p.candidates_end {
        let mine = score[base + s];
        var rank = 0u;
        for (var t = p.sinks; t < p.candidates_end; t++) {
            let other = score[base + t];
            if other < mine || (other == mine && t < s) {
                rank++;
            }
        }
        kept = select(1u, 0u, rank < p.evict_count);
    }
    keep[i] = kept;
}

var<workgroup> prefix: array<u32, WG>;
var<workgroup> first_evicted: atomic<u32>;

@compute @workgroup_size(256)
fn evict_compact(lane: Lane) {
    let g = group_index(lane);
    let t = lane.index;
    if t == 0u {
        atomicStore(&first_evicted, p.budget);
    }
    workgroupBarrier();
    // The survivors' slots, chunk by chunk in slot order.
    var survivors = 0u;
    for (var c0 = 0u; c0 < p.len; c0 += WG) {
        let s = c0 + t;
        var flag = 0u;
        if s < p.len {
            flag = keep[g * p.len + s];
            if flag == 0u {
                atomicMin(&first_evicted, s);
            }
        }
        // Inclusive prefix sum of the flags (Hillis-Steele).
        prefix[t] = flag;
        workgroupBarrier();
        for (var step = 1u; step < WG; step <<= 1u) {
            var add = 0u;
            if t >= step {
                add = prefix[t - step];
            }
            workgroupBarrier();
            prefix[t] += add;
            workgroupBarrier();
        }
        if flag == 1u {
            sources[g * p.budget + survivors + prefix[t] - 1u] = s;
        }
        survivors += prefix[WG - 1u];
        workgroupBarrier();
    }
    storageBarrier();
    // Every value moves from its source slot to a lower or equal slot. Destinations are
    // visited in ascending chunks, each read completely before it is written (the barrier),
    // so no chunk reads a value that an earlier chunk has overwritten: the move is in place.
    // Slots before the first evicted one stay where they are.
    let first = atomicLoad(&first_evicted);
    let hd = p.head_dim;
    let base = g * p.capacity;
    for (var e0 = first * hd; e0 < p.budget * hd; e0 += WG) {
        let e = e0 + t;
        var key = kt(0.0);
        var value = kt(0.0);
        let inside = e < p.budget * hd;
        if inside {
            let src = (base + sources[g * p.budget + e / hd]) * hd + e % hd;
            key = k[src];
            value = v[src];
        }
        storageBarrier();
        if inside {
            k[base * hd + e] = key;
            v[base * hd + e] = value;
        }
        storageBarrier();
    }
    for (var j0 = first; j0 < p.budget; j0 += WG) {
        let j = j0 + t;
        var key_pos = 0u;
        var key_score = 0.0;
        if j < p.budget {
            let src = base + sources[g * p.budget + j];
            key_pos = pos[src];
            key_score = score[src];
        }
        storageBarrier();
        if j < p.budget {
            pos[base + j] = key_pos;
            score[base + j] = key_score;
        }
        storageBarrier();
    }
}
