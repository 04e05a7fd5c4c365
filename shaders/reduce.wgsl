// Workgroup-wide reductions through workgroup memory (a tree of WG / 2, WG / 4, ... adds),
// and teams of 32 invocations that reduce among themselves. Every invocation of the workgroup
// must call them (the same number of times), and all get the result.

struct Lane {
    @builtin(local_invocation_index) index: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
}

var<workgroup> red: array<f32, WG>;
var<workgroup> red_index: array<u32, WG>;

fn wg_sum(value: f32, lane: Lane) -> f32 {
    red[lane.index] = value;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step >>= 1u) {
        if lane.index < step {
            red[lane.index] += red[lane.index + step];
        }
        workgroupBarrier();
    }
    let total = red[0];
    // `red` is reused by the next reduction.
    workgroupBarrier();
    return total;
}

fn wg_max(value: f32, lane: Lane) -> f32 {
    red[lane.index] = value;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step >>= 1u) {
        if lane.index < step {
            red[lane.index] = max(red[lane.index], red[lane.index + step]);
        }
        workgroupBarrier();
    }
    let best = red[0];
    workgroupBarrier();
    return best;
}

fn wg_max_u32(value: u32, lane: Lane) -> u32 {
    red_index[lane.index] = value;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step >>= 1u) {
        if lane.index < step {
            red_index[lane.index] = max(red_index[lane.index], red_index[lane.index + step]);
        }
        workgroupBarrier();
    }
    let best = red_index[0];
    workgroupBarrier();
    return best;
}

fn wg_argmax(value: f32, index: u32, lane: Lane) -> u32 {
    red[lane.index] = value;
    red_index[lane.index] = index;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step >>= 1u) {
        if lane.index < step {
            let other = lane.index + step;
            if better(red[other], red_index[other], red[lane.index], red_index[lane.index]) {
                red[lane.index] = red[other];
                red_index[lane.index] = red_index[other];
            }
        }
        workgroupBarrier();
    }
    let best = red_index[0];
    workgroupBarrier();
    return best;
}

// A team: 32 invocations summing one dot product together.
const TEAM: u32 = 32u;

fn team(lane: Lane) -> u32 {
    return lane.index / TEAM;
}

fn teams(lane: Lane) -> u32 {
    return WG / TEAM;
}

fn team_lane(lane: Lane) -> u32 {
    return lane.index % TEAM;
}

fn team_size(lane: Lane) -> u32 {
    return TEAM;
}

fn team_sum(value: f32, lane: Lane) -> f32 {
    red[lane.index] = value;
    workgroupBarrier();
    for (var step = TEAM / 2u; step > 0u; step >>= 1u) {
        if team_lane(lane) < step {
            red[lane.index] += red[lane.index + step];
        }
        workgroupBarrier();
    }
    let total = red[team(lane) * TEAM];
    workgroupBarrier();
    return total;
}
