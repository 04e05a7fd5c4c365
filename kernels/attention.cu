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

#define CHUNK 64

// Grid (heads, chunks), 128 threads. Writes each key's logit to `logits` [heads][len] and the
// chunk's max, sum of exponentials and unnormalised output to the partial buffers.
extern "C" __global__ void attn_decode_partial(const wt* q, const wt* k_cache, const wt* v_cache,
                                               const u32* pos, u32 capacity, u32 len, u32 heads,
                                               u32 kv_heads, u32 hd, u32 qpos, float scale,
                                               const float* slopes, float* logits, float* part_m,
                                               float* part_s, float* part_o) {
    __shared__ float e[CHUNK];
    u32 h = blockIdx.x, c = blockIdx.y;
    u32 g = h / (heads / kv_heads);
    u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    u32 start = c * CHUNK, n = min(len - start, (u32)CHUNK);
    const wt* qh = q + (size_t)h * hd;
    size_t base = (size_t)g * capacity + start;
    // Each warp takes keys in turn; lanes split the head dimension.
    for (u32 j = warp; j < n; j += warps) {
        const wt* kj = k_cache + (base + j) * hd;
        float d = 0.0f;
        for (u32 t = lane; t < hd; t += 32) d += to_f32(qh[t]) * to_f32(kj[t]);
        d = warp_sum(d);
        u32 kp = pos[base + j];
        if (lane == 0) e[j] = kp <= qpos ? d * scale + alibi(slopes, h, kp, qpos) : NEG_INF;
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
    size_t pc = (size_t)h * gridDim.y + c;
    for (u32 t = threadIdx.x; t < hd; t += blockDim.x) {
        // Four independent sums keep several loads in flight.
        float o0 = 0.0f, o1 = 0.0f, o2 = 0.0f, o3 = 0.0f;
        const wt* vt = v_cache + base * hd + t;
        u32 j = 0;
        for (; j + 4 <= n; j += 4) {
            o0 += e[j] * to_f32(vt[(size_t)j * hd]);
            o1 += e[j + 1] * to_f32(vt[(size_t)(j + 1) * hd]);
            o2 += e[j + 2] * to_f32(vt[(size_t)(j + 2) * hd]);
            o3 += e[j + 3] * to_f32(vt[(size_t)(j + 3) * hd]);
        }
        for (; j < n; j++) o0 += e[j] * to_f32(vt[(size_t)j * hd]);
        part_o[pc * hd + t] = (o0 + o1) + (o2 + o3);
    }
    if (threadIdx.x == 0) { part_m[pc] = m; part_s[pc] = s; }
}

// Grid heads. Combines the chunks into out [heads][hd]; when scoring, also the log-sum-exp of the
// noisy logits for the score pass.
extern "C" __global__ void attn_decode_combine(const float* part_m, const float* part_s,
                                               const float* part_o, u32 chunks, u32 hd, float* out,
                                               const float* logits, const u32* pos, u32 capacity,
                                               u32 len, u32 heads, u32 kv_heads, u32 qpos, u32 scoring,
                                               u32 noise, float tau, u32 seed, u32 layer, float* lse) {
    u32 h = blockIdx.x;
    float m = NEG_INF;
    for (u32 c = 0; c < chunks; c++) m = fmaxf(m, part_m[h * chunks + c]);
    float s = 0.0f;
    for (u32 c = 0; c < chunks; c++) s += part_s[h * chunks + c] * expf(part_m[h * chunks + c] - m);
    for (u32 e = threadIdx.x; e < hd; e += blockDim.x) {
        float o = 0.0f;
        for (u32 c = 0; c < chunks; c++) o += part_o[((size_t)h * chunks + c) * hd + e] * expf(part_m[h * chunks + c] - m);
        out[(size_t)h * hd + e] = o / s;
    }
    if (!scoring) return;
    u32 g = h / (heads / kv_heads);
    const u32* kpos = pos + (size_t)g * capacity;
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
    if (threadIdx.x == 0) lse[h] = my + logf(sy);
}

// Grid (kv_heads, ceil(len / 256)): score[g][j] += sum over the group's heads of the noisy
// probability of key j.
extern "C" __global__ void attn_decode_scores(const float* logits, const float* lse, const u32* pos,
                                              float* score, u32 capacity, u32 len, u32 heads,
                                              u32 kv_heads, u32 qpos, u32 noise, float tau, u32 seed,
                                              u32 layer) {
    u32 g = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= len) return;
    u32 group = heads / kv_heads;
    size_t slot = (size_t)g * capacity + j;
    float acc = 0.0f;
    for (u32 h = g * group; h < (g + 1) * group; h++) {
        float x = logits[(size_t)h * len + j];
        if (x > NEG_INF) acc += expf((x + (noise ? gumbel(seed, layer, h, qpos, pos[slot]) : 0.0f)) / tau - lse[h]);
    }
    score[slot] += acc;
}
