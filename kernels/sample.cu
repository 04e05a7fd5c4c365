// Sampling on the device, in one block; only the token id goes back to the host.

// Greedy: the index of the largest logit, the lowest index on ties; 0xffffffff when a logit is
// NaN. Logits are read four at a time (the buffer starts 16-byte aligned), so each thread has
// several loads in flight.
extern "C" __global__ void argmax(const float* logits, u32 n, u32* out) {
    await_inputs();
    __shared__ float best_v[1024];
    __shared__ u32 best_i[1024];
    float v = NEG_INF;
    u32 idx = 0xffffffffu;
    bool nan = false;
    auto take = [&](float x, u32 i) {
        if (x > v) { v = x; idx = i; }
        nan |= isnan(x);
    };
#pragma unroll 4
    for (u32 i = threadIdx.x * 4; i + 4 <= n; i += blockDim.x * 4) {
        float4 x = *(const float4*)(logits + i);
        take(x.x, i), take(x.y, i + 1), take(x.z, i + 2), take(x.w, i + 3);
    }
    for (u32 i = n / 4 * 4 + threadIdx.x; i < n; i += blockDim.x) take(logits[i], i);
    bool any_nan = __syncthreads_or(nan);
    best_v[threadIdx.x] = v;
    best_i[threadIdx.x] = idx;
    __syncthreads();
    for (u32 s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float ov = best_v[threadIdx.x + s];
            u32 oi = best_i[threadIdx.x + s];
            if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x])) {
                best_v[threadIdx.x] = ov;
                best_i[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = any_nan ? 0xffffffffu : best_i[0];
}

// Temperature / top-k / top-p sampling: what Draw::pick (src/engine/sampling.rs) draws for the
// same uniform value u, without sorting. Logits map to u32 keys in total_cmp order; the sorted
// order is descending key, then ascending index, and a `Cut` names the prefix ending at one
// token. top-k, then top-p, then the draw itself each cut the prefix at the first token where
// the running weight (a count for top-k, else exp((logit - max) / T)) exceeds a threshold,
// found by bisection over keys with block-wide sums, then over that key's indices. The sums are
// f32 (the host's are f64), so a draw within a near-tie of a boundary may differ.

// Orders u32 keys as f32::total_cmp orders the logits.
__device__ __forceinline__ u32 order_key(float x) {
    u32 b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}

// A token of the sorted order, standing for the prefix that ends with it.
struct Cut {
    u32 key;
    u32 index;
};

__device__ __forceinline__ bool within(u32 key, u32 i, Cut c) {
    return key > c.key || (key == c.key && i <= c.index);
}

struct Row {
    const float* logits;
    u32 n;
    float temperature;
    u32 top_key;  // the largest key, and its logit
    float top_logit;
};

// The total weight of the tokens in both prefixes: 1 each when counting, else
// exp((logit - top_logit) / temperature).
__device__ float mass(Row r, Cut a, Cut b, bool count) {
    float s = 0.0f;
    for (u32 i = threadIdx.x; i < r.n; i += blockDim.x) {
        float x = r.logits[i];
        u32 k = order_key(x);
        if (within(k, i, a) && within(k, i, b))
            s += count ? 1.0f : expf((x - r.top_logit) / r.temperature);
    }
    return block_reduce(s, false);
}

// The first token of prefix `c` at which the running weight exceeds `threshold`, or its last
// token.
__device__ Cut cut(Row r, Cut c, float threshold, bool count) {
    // The largest key whose tokens, with those above them, weigh more than the threshold.
    u32 lo = c.key, hi = r.top_key;
    while (lo < hi) {
        u32 mid = hi - (hi - lo) / 2;
        if (mass(r, c, Cut{mid, 0xffffffffu}, count) > threshold) lo = mid; else hi = mid - 1;
    }
    // Among that key's tokens, in index order.
    u32 first = 0, last = 0;
    for (u32 i = threadIdx.x; i < r.n; i += blockDim.x) {
        u32 k = order_key(r.logits[i]);
        if (k == lo && within(k, i, c)) { first = max(first, ~i); last = max(last, i); }
    }
    first = ~block_max_u32(first);
    last = block_max_u32(last);
    while (first < last) {
        u32 mid = first + (last - first) / 2;
        if (mass(r, c, Cut{lo, mid}, count) > threshold) last = mid; else first = mid + 1;
    }
    return Cut{lo, first};
}

extern "C" __global__ void sample(const float* logits, u32 n, float temperature, u32 top_k, float top_p,
                                  float u, u32* out) {
    await_inputs();
    u32 top_key = 0, bottom = 0;
    bool nan = false;
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
        float x = logits[i];
        u32 k = order_key(x);
        top_key = max(top_key, k);
        bottom = max(bottom, ~k);
        nan |= isnan(x);
    }
    // No token for logits that hold a NaN: 0xffffffff tells the host.
    if (__syncthreads_or(nan)) {
        if (threadIdx.x == 0) out[0] = 0xffffffffu;
        return;
    }
    top_key = block_max_u32(top_key);
    float top_logit = __uint_as_float((top_key & 0x80000000u) ? top_key & 0x7fffffffu : ~top_key);
    Row r = {logits, n, temperature, top_key, top_logit};
    // Every token: the smallest key, any index.
    Cut all = {~block_max_u32(bottom), 0xffffffffu};
    Cut c = all;
    if (top_k > 0 && top_k < n) c = cut(r, c, (float)(top_k - 1), true);
    if (top_p < 1.0f) c = cut(r, c, top_p * mass(r, c, all, false), false);
    c = cut(r, c, u * mass(r, c, all, false), false);
    if (threadIdx.x == 0) out[0] = c.index;
}
