// Sampling on the device, in one workgroup; only the token id goes back to the host.

struct Params {
    len: u32,
    // The draw, for `sample` only.
    temperature: f32,
    top_k: u32,
    top_p: f32,
    u: f32,
}

var<immediate> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> token: array<u32>;

// Whether logit i (inside the vocabulary) beats the best so far: ascending indices with a
// strict comparison keep the lowest index among equals.
fn beats(x: f32, i: u32, best: f32, best_index: u32) -> bool {
    return i < p.len && (best_index == NONE || x > best);
}

// Whether x is NaN, from its bits: WGSL lets compilers assume floats are never NaN.
fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

// Greedy: the index of the largest logit, the lowest index on ties (as the CPU's argmax); NONE
// when a logit is NaN. One workgroup walks the vocabulary, four logits an invocation at a time,
// loaded before any is compared so that their loads overlap.
@compute @workgroup_size(256)
fn argmax(lane: Lane) {
    var best = 0.0;
    var best_index = NONE;
    var nan = 0u;
    let last = p.len - 1u;
    for (var i = lane.index; i < p.len; i += 4u * WG) {
        let x0 = logits[i];
        let x1 = logits[min(i + WG, last)];
        let x2 = logits[min(i + 2u * WG, last)];
        let x3 = logits[min(i + 3u * WG, last)];
        nan |= u32(is_nan(x0) || is_nan(x1) || is_nan(x2) || is_nan(x3));
        if beats(x0, i, best, best_index) {
            best = x0;
            best_index = i;
        }
        if beats(x1, i + WG, best, best_index) {
            best = x1;
            best_index = i + WG;
        }
        if beats(x2, i + 2u * WG, best, best_index) {
            best = x2;
            best_index = i + 2u * WG;
        }
        if beats(x3, i + 3u * WG, best, best_index) {
            best = x3;
            best_index = i + 3u * WG;
        }
    }
    let winner = wg_argmax(best, best_index, lane);
    let any_nan = max_uniform(nan, lane);
    if lane.index == 0u {
        token[0] = select(winner, NONE, any_nan != 0u);
    }
}

// Temperature / top-k / top-p sampling as kernels/sample.cu does it (see there): bisections
// over the sorted order without sorting. Their loops hold barriers, so every reduction result
// they branch on is read back with workgroupUniformLoad, which makes it uniform.

var<workgroup> uniform_f32: f32;
var<workgroup> uniform_u32: u32;

fn sum_uniform(value: f32, lane: Lane) -> f32 {
    let total = wg_sum(value, lane);
    if lane.index == 0u {
        uniform_f32 = total;
    }
    return workgroupUniformLoad(&uniform_f32);
}

fn max_uniform(value: u32, lane: Lane) -> u32 {
    let best = wg_max_u32(value, lane);
    if lane.index == 0u {
        uniform_u32 = best;
    }
    return workgroupUniformLoad(&uniform_u32);
}

// Orders u32 keys as f32::total_cmp orders the logits.
fn order_key(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// A token of the sorted order, standing for the prefix that ends with it.
struct Cut {
    key: u32,
    index: u32,
}

fn within(key: u32, i: u32, c: Cut) -> bool {
    return key > c.key || (key == c.key && i <= c.index);
}

// The largest key and its logit.
struct Top {
    key: u32,
    logit: f32,
}

// The total weight of the tokens in both prefixes: 1 each when counting, else
// exp((logit - top.logit) / temperature).
fn mass(a: Cut, b: Cut, top: Top, count: bool, lane: Lane) -> f32 {
    var s = 0.0;
    for (var i = lane.index; i < p.len; i += WG) {
        let x = logits[i];
        let k = order_key(x);
        if within(k, i, a) && within(k, i, b) {
            if count {
                s += 1.0;
            } else {
                s += exp((x - top.logit) / p.temperature);
            }
        }
    }
    return sum_uniform(s, lane);
}

// The first token of prefix `c` at which the running weight exceeds `threshold`, or its last
// token.
fn cut(c: Cut, top: Top, threshold: f32, count: bool, lane: Lane) -> Cut {
    // The largest key whose tokens, with those above them, weigh more than the threshold.
    var lo = c.key;
    var hi = top.key;
    while lo < hi {
        let mid = hi - (hi - lo) / 2u;
        if mass(c, Cut(mid, NONE), top, count, lane) > threshold {
            lo = mid;
        } else {
            hi = mid - 1u;
        }
    }
    // Among that key's tokens, in index order.
    var first = 0u;
    var last = 0u;
    for (var i = lane.index; i < p.len; i += WG) {
        let k = order_key(logits[i]);
        if k == lo && within(k, i, c) {
            first = max(first, ~i);
            last = max(last, i);
        }
    }
    first = ~max_uniform(first, lane);
    last = max_uniform(last, lane);
    while first < last {
        let mid = first + (last - first) / 2u;
        if mass(c, Cut(lo, mid), top, count, lane) > threshold {
            last = mid;
        } else {
            first = mid + 1u;
        }
    }
    return Cut(lo, first);
}

@compute @workgroup_size(256)
fn sample(lane: Lane) {
    var top_key = 0u;
    var bottom = 0u;
    var nan = 0u;
    for (var i = lane.index; i < p.len; i += WG) {
        let x = logits[i];
        let k = order_key(x);
        top_key = max(top_key, k);
        bottom = max(bottom, ~k);
        nan |= u32(is_nan(x));
    }
    // No token for logits that hold a NaN: NONE tells the host.
    if max_uniform(nan, lane) != 0u {
        if lane.index == 0u {
            token[0] = NONE;
        }
        return;
    }
    top_key = max_uniform(top_key, lane);
    let logit = bitcast<f32>(select(~top_key, top_key & 0x7fffffffu, (top_key & 0x80000000u) != 0u));
    let top = Top(top_key, logit);
    // Every token: the smallest key, any index.
    let all = Cut(~max_uniform(bottom, lane), NONE);
    var c = all;
    if p.top_k > 0u && p.top_k < p.len {
        c = cut(c, top, f32(p.top_k - 1u), true, lane);
    }
    if p.top_p < 1.0 {
        c = cut(c, top, p.top_p * mass(c, all, top, false, lane), false, lane);
    }
    c = cut(c, top, p.u * mass(c, all, top, false, lane), false, lane);
    if lane.index == 0u {
        token[0] = c.index;
    }
}
