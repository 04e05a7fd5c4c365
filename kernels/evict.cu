// Eviction on the device. A token is a candidate when it is neither a sink (position < sinks)
// nor in the recent window (position >= seen - recent); the lowest (score, position) go first.

__device__ __forceinline__ bool candidate(u32 p, u32 sinks, u32 window_start) {
    return p >= sinks && p < window_start;
}

__device__ __forceinline__ bool before(float sa, u32 pa, float sb, u32 pb) {
    return sa < sb || (sa == sb && pa < pb);
}

// One eviction per kv head of each sequence that evicts this step: find the minimum candidate
// and move the last slot into its place. Grid (kv_heads, seqs), 256 threads (a power of two).
extern "C" __global__ void decode_evict(SeqBatch b, u32 hd) {
    allow_next();
    await_inputs();
    __shared__ float best_s[256];
    __shared__ u32 best_p[256];
    __shared__ u32 best_j[256];
    const SeqDesc& d = b.s[blockIdx.y];
    if (!d.evict) return;
    size_t base = (size_t)blockIdx.x * d.capacity;
    float bs = 0.0f;
    u32 bp = 0xffffffffu, bj = 0xffffffffu;
    for (u32 j = threadIdx.x; j < d.len; j += blockDim.x) {
        u32 p = d.pos[base + j];
        float s = d.score[base + j];
        if (candidate(p, d.sinks, d.window_start) && (bj == 0xffffffffu || before(s, p, bs, bp))) {
            bs = s; bp = p; bj = j;
        }
    }
    best_s[threadIdx.x] = bs; best_p[threadIdx.x] = bp; best_j[threadIdx.x] = bj;
    __syncthreads();
    for (u32 stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) {
            u32 o = threadIdx.x + stride;
            bool other_better = best_j[o] != 0xffffffffu &&
                (best_j[threadIdx.x] == 0xffffffffu || before(best_s[o], best_p[o], best_s[threadIdx.x], best_p[threadIdx.x]));
            if (other_better) {
                best_s[threadIdx.x] = best_s[o]; best_p[threadIdx.x] = best_p[o]; best_j[threadIdx.x] = best_j[o];
            }
        }
        __syncthreads();
    }
    u32 victim = best_j[0], last = d.len - 1;
    if (victim == 0xffffffffu || victim == last) return;
    for (u32 t = threadIdx.x; t < hd; t += blockDim.x) {
        d.k[(base + victim) * hd + t] = d.k[(base + last) * hd + t];
        d.v[(base + victim) * hd + t] = d.v[(base + last) * hd + t];
    }
    if (threadIdx.x == 0) { d.pos[base + victim] = d.pos[base + last]; d.score[base + victim] = d.score[base + last]; }
}

// Many evictions (after a prefill): keep[g][j] = 0 for the evict_count lowest candidates, found
// by rank. Grid (kv_heads, ceil(len / 256)), 256 threads; the other slots are read through
// shared-memory tiles, so the O(len^2) comparisons cost little memory traffic.
#define RANK_TILE 1024

extern "C" __global__ void evict_rank(const u32* pos, const float* score, u32* keep, u32 capacity, u32 len,
                                      u32 sinks, u32 window_start, u32 evict_count) {
    await_inputs();
    __shared__ float tile_s[RANK_TILE];
    __shared__ u32 tile_p[RANK_TILE];
    u32 g = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    size_t base = (size_t)g * capacity;
    bool mine = j < len && candidate(pos[base + j], sinks, window_start);
    u32 p = j < len ? pos[base + j] : 0;
    float s = j < len ? score[base + j] : 0.0f;
    u32 rank = 0;
    for (u32 t0 = 0; t0 < len; t0 += RANK_TILE) {
        __syncthreads();
        for (u32 t = threadIdx.x; t < RANK_TILE && t0 + t < len; t += blockDim.x) {
            tile_p[t] = pos[base + t0 + t];
            tile_s[t] = score[base + t0 + t];
        }
        __syncthreads();
        if (!mine) continue;
        u32 n = min((u32)RANK_TILE, len - t0);
        for (u32 t = 0; t < n; t++)
            rank += candidate(tile_p[t], sinks, window_start) && before(tile_s[t], tile_p[t], s, p);
    }
    if (j < len) keep[(size_t)g * len + j] = !mine || rank >= evict_count;
}

// Destination slot of every kept slot, in slot order (one thread per kv head: prefill only).
extern "C" __global__ void compact_index(const u32* keep, u32* dest, u32 len) {
    await_inputs();
    const u32* kg = keep + (size_t)blockIdx.x * len;
    u32* dg = dest + (size_t)blockIdx.x * len;
    u32 n = 0;
    for (u32 j = 0; j < len; j++) dg[j] = kg[j] ? n++ : 0xffffffffu;
}

// Copies the slots `dest` maps (every slot to itself when dest is null) into a new block.
// Grid (len, kv_heads).
extern "C" __global__ void compact_copy(const u32* dest, u32 len, const wt* k, const wt* v, const u32* pos,
                                        const float* score, u32 capacity, wt* nk, wt* nv, u32* npos,
                                        float* nscore, u32 new_capacity, u32 hd) {
    await_inputs();
    u32 j = blockIdx.x, g = blockIdx.y;
    u32 to = dest ? dest[(size_t)g * len + j] : j;
    if (to == 0xffffffffu) return;
    size_t from = (size_t)g * capacity + j, dst = (size_t)g * new_capacity + to;
    for (u32 d = threadIdx.x; d < hd; d += blockDim.x) {
        nk[dst * hd + d] = k[from * hd + d];
        nv[dst * hd + d] = v[from * hd + d];
    }
    if (threadIdx.x == 0) { npos[dst] = pos[from]; nscore[dst] = score[from]; }
}
