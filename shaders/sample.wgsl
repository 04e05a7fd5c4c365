// Greedy sampling: the index of the largest logit, the lowest index on ties (as the CPU's
// argmax), in one workgroup.

struct Params {
    len: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> token: array<u32>;

@compute @workgroup_size(256)
fn argmax(lane: Lane) {
    var best = 0.0;
    var best_index = NONE;
    // Ascending indices with a strict comparison keep the lowest index among equals.
    for (var i = lane.index; i < p.len; i += WG) {
        if best_index == NONE || logits[i] > best {
            best = logits[i];
            best_index = i;
        }
    }
    let winner = wg_argmax(best, best_index, lane);
    if lane.index == 0u {
        token[0] = winner;
    }
}
