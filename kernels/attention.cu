// Attention over the per-head compacted KV cache, with the Keyformer score accumulation fused in.
//
// Cache layout per layer: k, v [kv_head][slot][head_dim] (wt), pos and score [kv_head][slot].
// Slots are not kept in position order on the GPU: positions decide causality, ALiBi and
// eviction candidates. Positions: rope_dims > 0 selects rotary (pairs: 0 = interleaved (2i, 2i+1),
// 1 = halves (i, i + dims/2)), whose turned dimensions are then multiplied by rope_scale; slopes
// != 0 selects ALiBi.
//
// Scores: x = q.k * scale, then softcap * tanh(x / softcap) when softcap > 0, then the ALiBi
// bias. A key is visible to the query at position p when its position q <= p and, on a
// sliding-window layer (window > 0), p - window < q.

// dst = src at position p: the first rope_dims dimensions rotated (and scaled), all converted to
// storage.
__device__ void rotate_store(const float* src, wt* dst, u32 hd, u32 p, u32 rope_dims, u32 rope_halves,
                             const float* inv_freq, float rope_scale) {
    for (u32 d = threadIdx.x; d < hd; d += blockDim.x) {
        if (d >= rope_dims) { dst[d] = from_f32(src[d]); continue; }
        u32 half = rope_dims / 2;
        u32 i = rope_halves ? (d < half ? d : d - half) : d / 2;
        u32 a = rope_halves ? i : 2 * i, b = rope_halves ? i + half : 2 * i + 1;
        float sn, cs;
        sincosf((float)p * inv_freq[i], &sn, &cs);
        float xa = src[a], xb = src[b];
        float turned = d == a ? xa * cs - xb * sn : xb * cs + xa * sn;
        dst[d] = from_f32(turned * rope_scale);
    }
}

// One block per (row, head) over heads then kv heads: rotate q into `q` (wt, [rows][heads][hd]);
// rotate k and copy v into cache slots len + row, with their positions and zero scores.
extern "C" __global__ void attn_append(const float* qkv, u32 heads, u32 kv_heads, u32 hd, u32 first_pos,
                                       u32 rope_dims, u32 rope_halves, const float* inv_freq,
                                       float rope_scale, wt* q,
                                       wt* k_cache, wt* v_cache, u32* pos, float* score, u32 capacity,
                                       u32 len) {
    await_inputs();
    u32 r = blockIdx.x, hh = blockIdx.y;
    const float* row = qkv + (size_t)r * (heads + 2 * kv_heads) * hd;
    u32 p = first_pos + r;
    if (hh < heads) {
        rotate_store(row + hh * hd, q + ((size_t)r * heads + hh) * hd, hd, p, rope_dims, rope_halves, inv_freq,
                     rope_scale);
        return;
    }
    u32 g = hh - heads;
    size_t slot = (size_t)g * capacity + len + r;
    rotate_store(row + (heads + g) * hd, k_cache + slot * hd, hd, p, rope_dims, rope_halves, inv_freq, rope_scale);
    const float* vsrc = row + (heads + kv_heads + g) * hd;
    for (u32 d = threadIdx.x; d < hd; d += blockDim.x) v_cache[slot * hd + d] = from_f32(vsrc[d]);
    if (threadIdx.x == 0) { pos[slot] = p; score[slot] = 0.0f; }
}

__device__ __forceinline__ float alibi(const float* slopes, u32 h, u32 key_pos, u32 query_pos) {
    return slopes ? slopes[h] * ((float)key_pos - (float)query_pos) : 0.0f;
}

// Whether the key at key_pos is visible to the query at query_pos (see the top of this file).
__device__ __forceinline__ bool visible(u32 key_pos, u32 query_pos, u32 window) {
    return key_pos <= query_pos && (window == 0 || query_pos - key_pos < window);
}

// A scaled score after soft-capping (softcap > 0) and the ALiBi bias.
__device__ __forceinline__ float biased_score(float x, float softcap, const float* slopes, u32 h, u32 key_pos,
                                              u32 query_pos) {
    if (softcap > 0.0f) x = softcap * tanhf(x / softcap);
    return x + alibi(slopes, h, key_pos, query_pos);
}

// ---- Prefill: S = Q K^T comes from cuBLAS for a tile of query rows; these kernels finish it.

// A thread's running max and sum of exponentials (online softmax), then the block's.
struct MaxSum {
    float m = NEG_INF, s = 0.0f;
    __device__ void add(float x) {
        if (x == NEG_INF) return;
        if (x > m) {
            s = s * expf(m - x) + 1.0f;
            m = x;
        } else {
            s += expf(x - m);
        }
    }
    // The block's max and sum; every thread gets them.
    __device__ MaxSum block() const {
        MaxSum r;
        r.m = block_reduce(m, true);
        r.s = block_reduce(m == NEG_INF ? 0.0f : s * expf(m - r.m), false);
        return r;
    }
};

// One block per (head, tile row): turns the row of raw dot products in S into P = softmax (wt,
// for the P V product) and, when scoring, overwrites S with the noisy probabilities
// exp((x + g) / tau - lse) whose column sums are the scores. Keys the query does not see (after
// it, or before its window) are masked.
// Each pass recomputes the logits from S rather than storing them: a row is read once from
// memory and again from cache, and S is written only when scoring.
extern "C" __global__ void attn_prefill_softmax(float* s, wt* p, const u32* pos, u32 capacity, u32 len,
                                                u32 heads, u32 kv_heads, u32 tile_rows, u32 first_pos,
                                                float scale, float softcap, u32 window, const float* slopes,
                                                u32 scoring, u32 noise,
                                                float tau, u32 seed, u32 layer) {
    await_inputs();
    u32 h = blockIdx.x, i = blockIdx.y;
    u32 g = h / (heads / kv_heads);
    u32 qpos = first_pos + i;
    float* row = s + ((size_t)h * tile_rows + i) * len;
    wt* prow = p + ((size_t)h * tile_rows + i) * len;
    const u32* kpos = pos + (size_t)g * capacity;
    auto logit = [&](u32 j) {
        u32 kp = kpos[j];
        return visible(kp, qpos, window) ? biased_score(row[j] * scale, softcap, slopes, h, kp, qpos) : NEG_INF;
    };
    MaxSum x;
    for (u32 j = threadIdx.x; j < len; j += blockDim.x) x.add(logit(j));
    x = x.block();
    for (u32 j = threadIdx.x; j < len; j += blockDim.x) prow[j] = from_f32(expf(logit(j) - x.m) / x.s);
    if (!scoring) return;
    auto noisy = [&](u32 j) {
        float v = logit(j);
        return v == NEG_INF ? v : (v + (noise ? gumbel(seed, layer, h, qpos, kpos[j]) : 0.0f)) / tau;
    };
    MaxSum y;
    for (u32 j = threadIdx.x; j < len; j += blockDim.x) y.add(noisy(j));
    y = y.block();
    float lse = y.m + logf(y.s);
    for (u32 j = threadIdx.x; j < len; j += blockDim.x) row[j] = expf(noisy(j) - lse);
}

// score[g][j] += sum over the group's heads and the tile's rows of S[h][i][j], in a fixed order.
extern "C" __global__ void attn_prefill_columns(const float* s, float* score, u32 capacity, u32 len,
                                                u32 heads, u32 kv_heads, u32 tile_rows) {
    await_inputs();
    u32 g = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= len) return;
    u32 group = heads / kv_heads;
    float acc = 0.0f;
    for (u32 h = g * group; h < (g + 1) * group; h++)
        for (u32 i = 0; i < tile_rows; i++) acc += s[((size_t)h * tile_rows + i) * len + j];
    score[(size_t)g * capacity + j] += acc;
}

// ---- Decode: one new token for each sequence of a batch, split over spans of key slots
// (flash-decoding), then combined.

#define SUB 32                        // keys per step of a block's loop
#define WARPS 4
#define KEYS_PER_WARP (SUB / WARPS)
#define VEC (16 / sizeof(wt))
#define MAX_HD 512
#define MAX_PASSES (MAX_HD / (32 * VEC))

// Asks L2 to fetch `bytes` (a multiple of 16) from a 16-byte aligned address.
__device__ __forceinline__ void prefetch_l2(const void* p, u32 bytes) {
#if __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#else
    for (u32 off = 0; off < bytes; off += 128) asm volatile("prefetch.global.L2 [%0];" ::"l"((const char*)p + off));
#endif
}

__device__ __forceinline__ float dot16(uint4 a, uint4 b) {
    const wt* x = (const wt*)&a;
    const wt* y = (const wt*)&b;
    float acc = 0.0f;
#pragma unroll
    for (u32 u = 0; u < VEC; u++) acc += to_f32(x[u]) * to_f32(y[u]);
    return acc;
}

// This lane's 16-byte slice at dimension t of each of its keys among the step's n rows of
// `step` (keys or values): the i-th is row warp + (team + i * TEAMS) * WARPS; zeros past the
// step, the head or the lane's share of keys.
template <u32 TEAMS>
__device__ __forceinline__ void load_step(uint4 (&raw)[KEYS_PER_WARP], const wt* step, u32 n, u32 hd, u32 t,
                                          u32 warp, u32 team) {
#pragma unroll
    for (u32 i = 0; i < KEYS_PER_WARP; i++) {
        u32 j = warp + (team + i * TEAMS) * WARPS;
        raw[i] = i < KEYS_PER_WARP / TEAMS && j < n && t < hd ? *(const uint4*)(step + j * hd + t)
                                                              : make_uint4(0, 0, 0, 0);
    }
}

// Combines the `used` spans of each query head of kv head g of sequence z into out [seq][head][hd];
// when scoring, adds the group's noisy probabilities exp(y - lse) into the kv head's scores,
// heads in order so the sums are reproducible. Run by one block, the last of the group's
// decode_partial blocks to finish: the loads bypass L1, which may hold lines read before the
// other blocks wrote them.
__device__ __forceinline__ void finish_group(const SeqDesc& d, u32 g, u32 z, u32 used, const float* part_stat,
                                             const float* part_o, const float* logits, float* out, u32 heads,
                                             u32 kv_heads, u32 hd, u32 splits, u32 max_len) {
    __shared__ float head_m[64], head_inv[64], head_lse[64];
    u32 group = heads / kv_heads;
    u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    size_t head0 = (size_t)z * heads + g * group;
    for (u32 i = warp; i < group; i += warps) {
        const float* st = part_stat + (head0 + i) * splits * 4;
        float m = NEG_INF, my = NEG_INF;
        for (u32 c = lane; c < used; c += 32) {
            m = fmaxf(m, __ldcg(st + c * 4));
            my = fmaxf(my, __ldcg(st + c * 4 + 2));
        }
        m = warp_max(m);
        my = warp_max(my);
        float s = 0.0f, sy = 0.0f;
        for (u32 c = lane; c < used; c += 32) {
            s += __ldcg(st + c * 4 + 1) * expf(__ldcg(st + c * 4) - m);
            float myc = __ldcg(st + c * 4 + 2);
            if (d.scoring && myc > NEG_INF) sy += __ldcg(st + c * 4 + 3) * expf(myc - my);
        }
        s = warp_sum(s);
        sy = warp_sum(sy);
        if (lane == 0) {
            head_m[i] = m;
            head_inv[i] = 1.0f / s;
            head_lse[i] = my + logf(sy);
        }
    }
    __syncthreads();
    for (u32 k = threadIdx.x; k < group * hd; k += blockDim.x) {
        u32 i = k / hd, t = k % hd;
        const float* st = part_stat + (head0 + i) * splits * 4;
        const float* po = part_o + (head0 + i) * splits * hd + t;
        float acc = 0.0f;
#pragma unroll 16
        for (u32 c = 0; c < used; c++) acc += __ldcg(po + (size_t)c * hd) * expf(__ldcg(st + c * 4) - head_m[i]);
        out[(head0 + i) * hd + t] = acc * head_inv[i];
    }
    if (!d.scoring) return;
    // Four keys per thread at a time, their loads issued before any score is written (the
    // score stores could alias them as far as the compiler knows).
    float* score = d.score + (size_t)g * d.capacity;
    for (u32 j0 = threadIdx.x; j0 < d.len; j0 += 4 * blockDim.x) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, old[4];
        for (u32 i = 0; i < group; i++) {
#pragma unroll
            for (u32 r = 0; r < 4; r++) {
                u32 j = j0 + r * blockDim.x;
                float y = j < d.len ? __ldcg(logits + (head0 + i) * max_len + j) : NEG_INF;
                if (y > NEG_INF) acc[r] += expf(y - head_lse[i]);
            }
        }
#pragma unroll
        for (u32 r = 0; r < 4; r++) old[r] = j0 + r * blockDim.x < d.len ? score[j0 + r * blockDim.x] : 0.0f;
#pragma unroll
        for (u32 r = 0; r < 4; r++)
            if (j0 + r * blockDim.x < d.len) score[j0 + r * blockDim.x] = old[r] + acc[r];
    }
}

// Grid (heads, splits, seqs), WARPS warps; sequence z's query, key and value are row z of qkv,
// and its key and value go to cache slot len - 1. Block (h, c, z) covers key slots [c * span,
// (c + 1) * span) of sequence z in steps of SUB keys with an online softmax. Each key is read by
// a team of 32 / TEAMS lanes covering the head dimension with 16-byte loads: one team per warp
// from head_dim 32 * VEC up, more for smaller heads so that no lane idles (the backend picks
// TEAMS); warp w's teams take keys w, w + WARPS, ... Writes the span's max, sum of
// exponentials and unnormalised output to part_stat [seq][head][split][4] and part_o; when the
// sequence scores, also the noisy logits y = (x + g) / tau to logits [seq][head][max_len] and
// their max and sum of exponentials. The last block of each kv head's group then combines the
// group's spans (finish_group). Needs head_dim % VEC == 0 and <= MAX_HD.
template <u32 TEAMS>
__device__ __forceinline__ void decode_partial_teams(const float* qkv, const SeqBatch& b, u32 heads, u32 kv_heads, u32 hd,
                                     u32 rope_dims, u32 rope_halves, const float* inv_freq, float rope_scale,
                                     u32 span, u32 splits, u32 max_len, float scale, float softcap, u32 window,
                                     const float* slopes, u32 layer,
                                     float* logits, float* part_stat, float* part_o, float* out, u32* done) {
    const u32 kl = 32 / TEAMS, keys = KEYS_PER_WARP / TEAMS;
    __shared__ float e[SUB];
    __shared__ float red[WARPS][MAX_HD];
    u32 h = blockIdx.x, c = blockIdx.y, z = blockIdx.z;
    const SeqDesc& d = b.s[z];
    u32 start = c * span;
    if (start >= d.len) return;
    u32 end = min(d.len, start + span);
    u32 g = h / (heads / kv_heads);
    // L2 starts fetching the first step's keys and values while the previous kernel finishes
    // (it writes none of them; the newest slot's write below lands in L2 too).
    if (threadIdx.x == 0) {
        u32 first = min(end - start, (u32)SUB) * hd * sizeof(wt);
        prefetch_l2(d.k + ((size_t)g * d.capacity + start) * hd, first);
        prefetch_l2(d.v + ((size_t)g * d.capacity + start) * hd, first);
    }
    await_inputs();
    // Each block rotates its head's query itself, and the block whose span ends at the newest
    // slot first writes this step's key and value there (each head of a group writes the
    // same): no launch of its own for appending to the cache.
    __shared__ __align__(16) wt qh[MAX_HD];
    const float* row = qkv + (size_t)z * (heads + 2 * kv_heads) * hd;
    rotate_store(row + h * hd, qh, hd, d.qpos, rope_dims, rope_halves, inv_freq, rope_scale);
    size_t base = (size_t)g * d.capacity;
    if (end == d.len) {
        size_t slot = base + d.len - 1;
        rotate_store(row + (heads + g) * hd, d.k + slot * hd, hd, d.qpos, rope_dims, rope_halves, inv_freq,
                     rope_scale);
        const float* vsrc = row + (heads + kv_heads + g) * hd;
        for (u32 t = threadIdx.x; t < hd; t += blockDim.x) d.v[slot * hd + t] = from_f32(vsrc[t]);
        if (threadIdx.x == 0) {
            d.pos[slot] = d.qpos;
            d.score[slot] = 0.0f;
        }
    }
    __syncthreads();
    u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    u32 team = lane / kl, tl = lane % kl;
    u32 passes = (hd + kl * VEC - 1) / (kl * VEC);
    uint4 qraw[MAX_PASSES];
    float o[MAX_PASSES][VEC];
#pragma unroll
    for (u32 p = 0; p < MAX_PASSES; p++) {
        u32 t = (p * kl + tl) * VEC;
        qraw[p] = p < passes && t < hd ? *(const uint4*)(qh + t) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (u32 u = 0; u < VEC; u++) o[p][u] = 0.0f;
    }
    float m = NEG_INF, s = 0.0f, my = NEG_INF, sy = 0.0f;
    float* ly = logits + ((size_t)z * heads + h) * max_len;
    for (u32 j0 = start; j0 < end; j0 += SUB) {
        u32 n = min(end - j0, (u32)SUB);
        // L2 fetches this step's values (the first step's came before the wait) while the block
        // works on its keys. Small heads, whose steps read less, also fetch the next step's keys
        // and values (measured on an H100 at 64 sequences: 15% faster at head_dim 128, 15% slower
        // at 256).
        if (threadIdx.x == 0) {
            if (TEAMS == 1 && j0 != start) prefetch_l2(d.v + (base + j0) * hd, n * hd * sizeof(wt));
            u32 next = min(end - min(end, j0 + SUB), (u32)SUB);
            if (TEAMS > 1 && next > 0) {
                prefetch_l2(d.k + (base + j0 + SUB) * hd, next * hd * sizeof(wt));
                prefetch_l2(d.v + (base + j0 + SUB) * hd, next * hd * sizeof(wt));
            }
        }
        // The step's positions (lane j holds key j's) and the first pass of its values load
        // with the keys, so that a step waits on memory once.
        u32 lane_pos = lane < n ? d.pos[base + j0 + lane] : 0;
        uint4 first_v[KEYS_PER_WARP];
        // This lane's keys: the i-th is key warp + (team + i * TEAMS) * WARPS of the step.
        float dot[KEYS_PER_WARP];
#pragma unroll
        for (u32 i = 0; i < KEYS_PER_WARP; i++) dot[i] = 0.0f;
#pragma unroll
        for (u32 p = 0; p < MAX_PASSES; p++) {
            u32 t = (p * kl + tl) * VEC;
            if (p >= passes) break;
            uint4 kraw[KEYS_PER_WARP];
            load_step<TEAMS>(kraw, d.k + (base + j0) * hd, n, hd, t, warp, team);
            if (p == 0) load_step<TEAMS>(first_v, d.v + (base + j0) * hd, n, hd, t, warp, team);
#pragma unroll
            for (u32 i = 0; i < KEYS_PER_WARP; i++) dot[i] += dot16(qraw[p], kraw[i]);
        }
#pragma unroll
        for (u32 i = 0; i < KEYS_PER_WARP; i++) {
            if (i >= keys) break;
            u32 j = warp + (team + i * TEAMS) * WARPS;
            float x = dot[i];
            for (u32 off = kl / 2; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
            u32 kp = __shfl_sync(0xffffffffu, lane_pos, j);
            if (tl == 0 && j < n) {
                e[j] = visible(kp, d.qpos, window) ? biased_score(x * scale, softcap, slopes, h, kp, d.qpos)
                                                   : NEG_INF;
            }
        }
        __syncthreads();
        // Every warp holds the step's logits, one per lane, and updates the same running sums.
        float x = lane < n ? e[lane] : NEG_INF;
        float m_new = fmaxf(m, warp_max(x));
        float keep = m_new == NEG_INF ? 1.0f : expf(m - m_new);
        float pj = x == NEG_INF ? 0.0f : expf(x - m_new);
        s = s * keep + warp_sum(pj);
        m = m_new;
        if (d.scoring && warp == 0) {
            float y = NEG_INF;
            if (lane < n && x > NEG_INF)
                y = (x + (d.noise ? gumbel(d.seed, layer, h, d.qpos, lane_pos) : 0.0f)) / d.tau;
            if (lane < n) ly[j0 + lane] = y;
            float my_new = fmaxf(my, warp_max(y));
            float ey = y == NEG_INF ? 0.0f : expf(y - my_new);
            sy = (my_new == NEG_INF ? sy : sy * expf(my - my_new)) + warp_sum(ey);
            my = my_new;
        }
        // The weights of this lane's keys, shuffled before any lane leaves the loop below.
        float w[KEYS_PER_WARP];
#pragma unroll
        for (u32 i = 0; i < KEYS_PER_WARP; i++)
            w[i] = __shfl_sync(0xffffffffu, pj, (warp + (team + i * TEAMS) * WARPS) & 31);
#pragma unroll
        for (u32 p = 0; p < MAX_PASSES; p++) {
            u32 t = (p * kl + tl) * VEC;
            if (p >= passes) break;
            uint4 vraw[KEYS_PER_WARP];
            if (p == 0) {
#pragma unroll
                for (u32 i = 0; i < KEYS_PER_WARP; i++) vraw[i] = first_v[i];
            } else {
                load_step<TEAMS>(vraw, d.v + (base + j0) * hd, n, hd, t, warp, team);
            }
#pragma unroll
            for (u32 u = 0; u < VEC; u++) o[p][u] *= keep;
#pragma unroll
            for (u32 i = 0; i < KEYS_PER_WARP; i++) {
                const wt* vv = (const wt*)&vraw[i];
#pragma unroll
                for (u32 u = 0; u < VEC; u++) o[p][u] += w[i] * to_f32(vv[u]);
            }
        }
        __syncthreads();
    }
    // The teams of a warp hold partial outputs for the same dimensions: sum them into team 0.
#pragma unroll
    for (u32 p = 0; p < MAX_PASSES; p++) {
#pragma unroll
        for (u32 u = 0; u < VEC; u++)
            for (u32 off = kl; off < 32; off <<= 1) o[p][u] += __shfl_xor_sync(0xffffffffu, o[p][u], off);
        u32 t = (p * kl + tl) * VEC;
        if (p >= passes || t >= hd || team != 0) continue;
#pragma unroll
        for (u32 u = 0; u < VEC; u++) red[warp][t + u] = o[p][u];
    }
    __syncthreads();
    size_t pc = ((size_t)z * heads + h) * splits + c;
    for (u32 t = threadIdx.x; t < hd; t += blockDim.x) {
        float acc = 0.0f;
        for (u32 w = 0; w < WARPS; w++) acc += red[w][t];
        part_o[pc * hd + t] = acc;
    }
    if (threadIdx.x == 0) {
        part_stat[pc * 4 + 0] = m;
        part_stat[pc * 4 + 1] = s;
        part_stat[pc * 4 + 2] = my;
        part_stat[pc * 4 + 3] = sy;
    }
    // The group's last block to get here combines its spans; done[z][g] counts the blocks in
    // and is left at zero for the next launch.
    __shared__ bool last;
    u32 used = (d.len + span - 1) / span;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        u32* counter = done + (size_t)z * kv_heads + g;
        last = atomicAdd(counter, 1) == heads / kv_heads * used - 1;
        if (last) *counter = 0;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    finish_group(d, g, z, used, part_stat, part_o, logits, out, heads, kv_heads, hd, splits, max_len);
}

// The cap keeps the registers low enough for four blocks per SM; the backend sizes the grid for
// about three, leaving room for the kernels launched after it.
#define DECODE_PARTIAL(T)                                                                                 \
    extern "C" __global__ void __launch_bounds__(WARPS * 32, 4)                                           \
        decode_partial##T(const float* qkv, SeqBatch b, u32 heads, u32 kv_heads, u32 hd, u32 rope_dims,   \
                          u32 rope_halves, const float* inv_freq, float rope_scale, u32 span, u32 splits, \
                          u32 max_len, float scale, float softcap, u32 window, const float* slopes,       \
                          u32 layer, float* logits, float* part_stat, float* part_o, float* out,          \
                          u32* done) {                                                                    \
        decode_partial_teams<T>(qkv, b, heads, kv_heads, hd, rope_dims, rope_halves, inv_freq, rope_scale, \
                                span, splits, max_len, scale, softcap, window, slopes, layer, logits,     \
                                part_stat, part_o, out, done);                                            \
    }
DECODE_PARTIAL(1)
DECODE_PARTIAL(2)
DECODE_PARTIAL(4)
DECODE_PARTIAL(8)


