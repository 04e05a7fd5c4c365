// Attention over the per-head compacted KV cache, with the Keyformer score accumulation fused in.
//
// Cache layout per layer: k, v [kv_head][slot][head_dim] (wt), pos and score [kv_head][slot].
// Slots are not kept in position order on the GPU: positions decide causality, ALiBi and
// eviction candidates. Positions: rope_dims > 0 selects rotary (pairs: 0 = interleaved (2i, 2i+1),
// 1 = halves (i, i + dims/2)); slopes != 0 selects ALiBi.

// One block per (row, head) over heads then kv heads: rotate q into `q` (wt, [rows][heads][hd]);
// rotate k and copy v into cache slots len + row, with their positions and zero scores.
extern "C" __global__ void attn_append(const float* qkv, u32 heads, u32 kv_heads, u32 hd, u32 first_pos,
                                       u32 rope_dims, u32 rope_halves, const float* inv_freq, wt* q,
                                       wt* k_cache, wt* v_cache, u32* pos, float* score, u32 capacity,
                                       u32 len) {
    u32 r = blockIdx.x, hh = blockIdx.y;
    u32 stride = (heads + 2 * kv_heads) * hd;
    u32 p = first_pos + r;
    const float* src;
    wt* dst;
    if (hh < heads) {
        src = qkv + (size_t)r * stride + hh * hd;
        dst = q + ((size_t)r * heads + hh) * hd;
    } else {
        u32 g = hh - heads;
        size_t slot = (size_t)g * capacity + len + r;
        src = qkv + (size_t)r * stride + (heads + g) * hd;
        dst = k_cache + slot * hd;
        const float* vsrc = qkv + (size_t)r * stride + (heads + kv_heads + g) * hd;
        for (u32 d = threadIdx.x; d < hd; d += blockDim.x) v_cache[slot * hd + d] = from_f32(vsrc[d]);
        if (threadIdx.x == 0) { pos[slot] = p; score[slot] = 0.0f; }
    }
    for (u32 d = threadIdx.x; d < hd; d += blockDim.x) {
        if (d >= rope_dims) { dst[d] = from_f32(src[d]); continue; }
        u32 half = rope_dims / 2;
        u32 i = rope_halves ? (d < half ? d : d - half) : d / 2;
        u32 a = rope_halves ? i : 2 * i, b = rope_halves ? i + half : 2 * i + 1;
        float sn, cs;
        sincosf((float)p * inv_freq[i], &sn, &cs);
        float xa = src[a], xb = src[b];
        dst[d] = from_f32(d == a ? xa * cs - xb * sn : xb * cs + xa * sn);
    }
}

__device__ __forceinline__ float alibi(const float* slopes, u32 h, u32 key_pos, u32 query_pos) {
    return slopes ? slopes[h] * ((float)key_pos - (float)query_pos) : 0.0f;
}

// ---- Prefill: S = Q K^T comes from cuBLAS for a tile of query rows; these kernels finish it.

// One block per (head, tile row): turns the row of raw dot products in S into P = softmax (wt,
// for the P V product) and, when scoring, overwrites S with the noisy probabilities
// exp((x + g) / tau - lse) whose column sums are the scores. Keys after the query are masked.
extern "C" __global__ void attn_prefill_softmax(float* s, wt* p, const u32* pos, u32 capacity, u32 len,
                                                u32 heads, u32 kv_heads, u32 tile_rows, u32 first_pos,
                                                float scale, const float* slopes, u32 scoring, u32 noise,
                                                float tau, u32 seed, u32 layer) {
    u32 h = blockIdx.x, i = blockIdx.y;
    u32 g = h / (heads / kv_heads);
    u32 qpos = first_pos + i;
    float* row = s + ((size_t)h * tile_rows + i) * len;
    wt* prow = p + ((size_t)h * tile_rows + i) * len;
    const u32* kpos = pos + (size_t)g * capacity;
    float m = NEG_INF;
    for (u32 j = threadIdx.x; j < len; j += blockDim.x) {
        if (kpos[j] <= qpos) {
            float x = row[j] * scale + alibi(slopes, h, kpos[j], qpos);
            row[j] = x;
            m = fmaxf(m, x);
        }
    }
    m = block_reduce(m, true);
    float sum = 0.0f;
    for (u32 j = threadIdx.x; j < len; j += blockDim.x)
        if (kpos[j] <= qpos) sum += expf(row[j] - m);
    sum = block_reduce(sum, false);
    for (u32 j = threadIdx.x; j < len; j += blockDim.x)
        prow[j] = from_f32(kpos[j] <= qpos ? expf(row[j] - m) / sum : 0.0f);
    if (!scoring) return;
    // Noisy logits, then the row's log-sum-exp, then the normalised noisy probabilities.
    float my = NEG_INF;
    for (u32 j = threadIdx.x; j < len; j += blockDim.x) {
        if (kpos[j] <= qpos) {
            float y = (row[j] + (noise ? gumbel(seed, layer, h, qpos, kpos[j]) : 0.0f)) / tau;
            row[j] = y;
            my = fmaxf(my, y);
        }
    }
    my = block_reduce(my, true);
    float sy = 0.0f;
    for (u32 j = threadIdx.x; j < len; j += blockDim.x)
        if (kpos[j] <= qpos) sy += expf(row[j] - my);
    float lse = my + logf(block_reduce(sy, false));
    for (u32 j = threadIdx.x; j < len; j += blockDim.x)
        row[j] = kpos[j] <= qpos ? expf(row[j] - lse) : 0.0f;
}

// score[g][j] += sum over the group's heads and the tile's rows of S[h][i][j], in a fixed order.
extern "C" __global__ void attn_prefill_columns(const float* s, float* score, u32 capacity, u32 len,
                                                u32 heads, u32 kv_heads, u32 tile_rows) {
    u32 g = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= len) return;
    u32 group = heads / kv_heads;
    float acc = 0.0f;
    for (u32 h = g * group; h < (g + 1) * group; h++)
        for (u32 i = 0; i < tile_rows; i++) acc += s[((size_t)h * tile_rows + i) * len + j];
    score[(size_t)g * capacity + j] += acc;
}

// ---- Decode: one query row, split over chunks of key slots (flash-decoding).

#define CHUNK 32
#define WARPS 4
#define VEC (16 / sizeof(wt))
#define MAX_HD 512

// Grid (heads, chunks), WARPS warps. Each warp takes every WARPS-th key of the chunk; its lanes
// cover the head dimension with 16-byte loads, and the keys' loads are issued together. Writes
// each key's logit to `logits` [heads][len] and the chunk's max, sum of exponentials and
// unnormalised output to the partial buffers. Needs head_dim % VEC == 0 and <= MAX_HD.
extern "C" __global__ void attn_decode_partial(const wt* q, const wt* k_cache, const wt* v_cache,
                                               const u32* pos, u32 capacity, u32 len, u32 heads,
                                               u32 kv_heads, u32 hd, u32 qpos, float scale,
                                               const float* slopes, float* logits, float* part_m,
                                               float* part_s, float* part_o) {
    __shared__ float e[CHUNK];
    __shared__ float red[WARPS][MAX_HD];
    const u32 per_warp = CHUNK / WARPS;
    u32 h = blockIdx.x, c = blockIdx.y;
    u32 g = h / (heads / kv_heads);
    u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    u32 start = c * CHUNK, n = min(len - start, (u32)CHUNK);
    const wt* qh = q + (size_t)h * hd;
    size_t base = (size_t)g * capacity + start;

    float d[per_warp];
#pragma unroll
    for (u32 jj = 0; jj < per_warp; jj++) d[jj] = 0.0f;
    for (u32 t = lane * VEC; t < hd; t += 32 * VEC) {
        uint4 qraw = *(const uint4*)(qh + t);
        const wt* qv = (const wt*)&qraw;
        uint4 kraw[per_warp];
#pragma unroll
        for (u32 jj = 0; jj < per_warp; jj++) {
            u32 j = warp + jj * WARPS;
            kraw[jj] = j < n ? *(const uint4*)(k_cache + (base + j) * hd + t) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (u32 jj = 0; jj < per_warp; jj++) {
            const wt* kv = (const wt*)&kraw[jj];
#pragma unroll
            for (u32 u = 0; u < VEC; u++) d[jj] += to_f32(qv[u]) * to_f32(kv[u]);
        }
    }
#pragma unroll
    for (u32 jj = 0; jj < per_warp; jj++) {
        u32 j = warp + jj * WARPS;
        float dot = warp_sum(d[jj]);
        if (lane == 0 && j < n) {
            u32 kp = pos[base + j];
            e[j] = kp <= qpos ? dot * scale + alibi(slopes, h, kp, qpos) : NEG_INF;
        }
    }
    __syncthreads();
    float m = NEG_INF;
    for (u32 j = threadIdx.x; j < n; j += blockDim.x) {
        logits[(size_t)h * len + start + j] = e[j];
        m = fmaxf(m, e[j]);
    }
    m = block_reduce(m, true);
    float s = 0.0f;
    for (u32 j = threadIdx.x; j < n; j += blockDim.x) {
        e[j] = expf(e[j] - m);
        s += e[j];
    }
    s = block_reduce(s, false);

    // Each warp sums its keys' values over the dimensions its lanes cover, then warps add up.
    for (u32 t = lane * VEC; t < hd; t += 32 * VEC) {
        float o[VEC];
#pragma unroll
        for (u32 u = 0; u < VEC; u++) o[u] = 0.0f;
        uint4 vraw[per_warp];
#pragma unroll
        for (u32 jj = 0; jj < per_warp; jj++) {
            u32 j = warp + jj * WARPS;
            vraw[jj] = j < n ? *(const uint4*)(v_cache + (base + j) * hd + t) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (u32 jj = 0; jj < per_warp; jj++) {
            u32 j = warp + jj * WARPS;
            if (j >= n) break;
            const wt* vv = (const wt*)&vraw[jj];
#pragma unroll
            for (u32 u = 0; u < VEC; u++) o[u] += e[j] * to_f32(vv[u]);
        }
#pragma unroll
        for (u32 u = 0; u < VEC; u++) red[warp][t + u] = o[u];
    }
    __syncthreads();
    size_t pc = (size_t)h * gridDim.y + c;
    for (u32 t = threadIdx.x; t < hd; t += blockDim.x) {
        float o = 0.0f;
        for (u32 w = 0; w < WARPS; w++) o += red[w][t];
        part_o[pc * hd + t] = o;
    }
    if (threadIdx.x == 0) { part_m[pc] = m; part_s[pc] = s; }
}

// Grid kv_heads, 256 threads. For each query head of the group: combines the chunks into out
// [heads][hd] and, when scoring, the log-sum-exp of its noisy logits; then adds the group's
// noisy probabilities into the kv head's scores, heads in order so the sums are reproducible.
extern "C" __global__ void attn_decode_finish(const float* part_m, const float* part_s,
                                              const float* part_o, u32 chunks, u32 hd, float* out,
                                              const float* logits, const u32* pos, float* score,
                                              u32 capacity, u32 len, u32 heads, u32 kv_heads, u32 qpos,
                                              u32 scoring, u32 noise, float tau, u32 seed, u32 layer) {
    __shared__ float lse[64];
    u32 g = blockIdx.x, group = heads / kv_heads;
    const u32* kpos = pos + (size_t)g * capacity;
    for (u32 h = g * group; h < (g + 1) * group; h++) {
        float m = NEG_INF;
        for (u32 c = 0; c < chunks; c++) m = fmaxf(m, part_m[h * chunks + c]);
        float s = 0.0f;
        for (u32 c = 0; c < chunks; c++) s += part_s[h * chunks + c] * expf(part_m[h * chunks + c] - m);
        for (u32 t = threadIdx.x; t < hd; t += blockDim.x) {
            float o = 0.0f;
            for (u32 c = 0; c < chunks; c++) o += part_o[((size_t)h * chunks + c) * hd + t] * expf(part_m[h * chunks + c] - m);
            out[(size_t)h * hd + t] = o / s;
        }
        if (!scoring) continue;
        float my = NEG_INF;
        for (u32 j = threadIdx.x; j < len; j += blockDim.x) {
            float x = logits[(size_t)h * len + j];
            if (x > NEG_INF) my = fmaxf(my, (x + (noise ? gumbel(seed, layer, h, qpos, kpos[j]) : 0.0f)) / tau);
        }
        my = block_reduce(my, true);
        float sy = 0.0f;
        for (u32 j = threadIdx.x; j < len; j += blockDim.x) {
            float x = logits[(size_t)h * len + j];
            if (x > NEG_INF) sy += expf((x + (noise ? gumbel(seed, layer, h, qpos, kpos[j]) : 0.0f)) / tau - my);
        }
        sy = block_reduce(sy, false);
        if (threadIdx.x == 0) lse[h - g * group] = my + logf(sy);
    }
    if (!scoring) return;
    __syncthreads();
    for (u32 j = threadIdx.x; j < len; j += blockDim.x) {
        float acc = 0.0f;
        for (u32 h = g * group; h < (g + 1) * group; h++) {
            float x = logits[(size_t)h * len + j];
            if (x > NEG_INF) acc += expf((x + (noise ? gumbel(seed, layer, h, qpos, kpos[j]) : 0.0f)) / tau - lse[h - g * group]);
        }
        score[(size_t)g * capacity + j] += acc;
    }
}
