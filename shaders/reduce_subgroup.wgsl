// Workgroup-wide reductions with subgroup operations: each subgroup reduces in registers,
// then every invocation combines the per-subgroup partials in subgroup order (a fixed order,
// so results are reproducible). A team is a subgroup. Same contract as reduce.wgsl.

struct Lane {
    @builtin(local_invocation_index) index: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_size) subgroup_size: u32,
}

var<workgroup> red: array<f32, WG>;
var<workgroup> red_index: array<u32, WG>;

fn wg_sum(value: f32, lane: Lane) -> f32 {
    let part = subgroupAdd(value);
    if lane.subgroup_lane == 0u {
        red[lane.subgroup] = part;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < lane.subgroups; i++) {
        total += red[i];
    }
    // `red` is reused by the next reduction.
    workgroupBarrier();
    return total;
}

fn wg_max(value: f32, lane: Lane) -> f32 {
    let part = subgroupMax(value);
    if lane.subgroup_lane == 0u {
        red[lane.subgroup] = part;
    }
    workgroupBarrier();
    var best = -FLT_MAX;
    for (var i = 0u; i < lane.subgroups; i++) {
        best = max(best, red[i]);
    }
    workgroupBarrier();
    return best;
}

fn wg_max_u32(value: u32, lane: Lane) -> u32 {
    let part = subgroupMax(value);
    if lane.subgroup_lane == 0u {
        red_index[lane.subgroup] = part;
    }
    workgroupBarrier();
    var best = 0u;
    for (var i = 0u; i < lane.subgroups; i++) {
        best = max(best, red_index[i]);
    }
    workgroupBarrier();
    return best;
}

fn wg_argmax(value: f32, index: u32, lane: Lane) -> u32 {
    // Invocations without a value take part with -inf so they never win the subgroup maximum.
    let v = select(bitcast<f32>(0xff800000u), value, index != NONE);
    let top = subgroupMax(v);
    let top_index = subgroupMin(select(NONE, index, v == top));
    if lane.subgroup_lane == 0u {
        red[lane.subgroup] = top;
        red_index[lane.subgroup] = top_index;
    }
    workgroupBarrier();
    var best = red[0];
    var best_index = red_index[0];
    for (var i = 1u; i < lane.subgroups; i++) {
        if better(red[i], red_index[i], best, best_index) {
            best = red[i];
            best_index = red_index[i];
        }
    }
    workgroupBarrier();
    return best_index;
}

fn team(lane: Lane) -> u32 {
    return lane.subgroup;
}

fn teams(lane: Lane) -> u32 {
    return lane.subgroups;
}

fn team_lane(lane: Lane) -> u32 {
    return lane.subgroup_lane;
}

fn team_size(lane: Lane) -> u32 {
    return lane.subgroup_size;
}

fn team_sum(value: f32, lane: Lane) -> f32 {
    return subgroupAdd(value);
}
