// Shared by every kernel. The host prepends `alias wt` (weight storage type), `WT_BYTES` (its
// size) and `alias kt` (KV cache storage type), then one of reduce.wgsl / reduce_subgroup.wgsl,
// which defines `Lane` and the workgroup reductions.

// Every kernel runs 256 invocations per workgroup.
const WG: u32 = 256u;
const FLT_MAX: f32 = 3.40282347e38;

// Workgroups are laid out on a 2D grid (one dimension holds at most 65535); this is the
// linear workgroup number.
fn group_index(lane: Lane) -> u32 {
    return lane.group.x + lane.group.y * lane.groups.x;
}

// The linear invocation number for one-value-per-invocation kernels.
fn item_index(lane: Lane) -> u32 {
    return group_index(lane) * WG + lane.index;
}

// For argmax reductions: the largest value wins, the lowest index among equals; index NONE
// marks an invocation that holds no value.
const NONE: u32 = 0xffffffffu;

fn better(value: f32, index: u32, than_value: f32, than_index: u32) -> bool {
    return index != NONE
        && (than_index == NONE || value > than_value || (value == than_value && index < than_index));
}
