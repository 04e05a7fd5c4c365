// Matrix-vector products for decode (the large matrix products of prefill go to cuBLAS), and the
// small helpers around cuBLAS: activations to the weight type, bias and activation epilogue.

#define VEC (16 / sizeof(wt))

// LOADS 16-byte loads of one output's weights w for one lane from column `base`, zero from `end`
// on.
template <int LOADS>
__device__ __forceinline__ void load_weights(uint4 (&raw)[LOADS], const wt* w, u32 base, u32 end) {
#pragma unroll
    for (int u = 0; u < LOADS; u++) {
        u32 i = base + u * 32 * VEC;
        raw[u] = i < end ? load_stream(w + i) : make_uint4(0, 0, 0, 0);
    }
}

// acc[r] += x[r] . w over this share's columns of n, for ROWS rows of x, by one warp; `live`
// false for a warp past the outputs, which only helps stage the norm. Each lane loads the next
// two 16-byte slices of weights while it multiplies the current two. The first loads go out
// before waiting for the previous kernel, which computes x, and an `early` product (whose x no
// kernel still running writes) does not wait at all. With a norm, the block stages norm(x)
// after waiting and reads that. ROWS is a template parameter so the sums stay in registers.
template <int ROWS>
__device__ __forceinline__ void dot_rows(float (&acc)[ROWS], const float* x, const wt* w, u32 n, Share sh, bool live,
                                         FoldedNorm norm, bool early) {
    const int LOADS = 2;
    const u32 STEP = 32 * VEC * LOADS;
    u32 lane = threadIdx.x & 31;
    u32 chunk = (n + sh.split * STEP - 1) / (sh.split * STEP) * STEP;
    u32 begin = min(n, sh.part * chunk), end = min(n, begin + chunk);
    bool vec = n % VEC == 0;
    uint4 raw[LOADS], next[LOADS];
    if (vec && live) load_weights(raw, w, begin + lane * VEC, end);
    if (!early) await_inputs();
    if (norm.w) x = stage_norm<ROWS>(x, n, norm);
    if (!live) return;
    if (vec) {
        for (u32 base = begin + lane * VEC; base < end; base += STEP) {
            if (base + STEP < end) load_weights(next, w, base + STEP, end);
#pragma unroll
            for (int u = 0; u < LOADS; u++) {
                u32 i = base + u * 32 * VEC;
                if (i >= end) break;
                const wt* wv = (const wt*)&raw[u];
#pragma unroll
                for (int r = 0; r < ROWS; r++) {
                    const float4* xr = (const float4*)(x + (size_t)r * n + i);
#pragma unroll
                    for (u32 k = 0; k < VEC / 4; k++) {
                        float4 xv = xr[k];
                        acc[r] += to_f32(wv[4 * k]) * xv.x + to_f32(wv[4 * k + 1]) * xv.y +
                                  to_f32(wv[4 * k + 2]) * xv.z + to_f32(wv[4 * k + 3]) * xv.w;
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < LOADS; u++) raw[u] = next[u];
        }
    } else {
        for (u32 i = begin + lane; i < end; i += 32) {
            float wv = to_f32(w[i]);
#pragma unroll
            for (int r = 0; r < ROWS; r++) acc[r] += wv * x[(size_t)r * n + i];
        }
    }
}

// Every kernel below takes ROWS rows of x at once, bias pointers may be null, and the grid has
// `split` warps per output (a power of two up to 4): blocks of 128 threads, or 512 with a
// folded norm (norm_w set; each block stages the rows' norm in ROWS * n_in floats of dynamic
// shared memory, and larger blocks stage it fewer times).
//
// gemv: out[r][o] = act(x[r] . w[o] + bias[o]), or out[r][o] += x[r] . w[o] + bias[o] when
// `accumulate`. An `early` product streams without waiting for the kernels before it: neither
// x nor out may be written by a kernel still running (a parallel block's MLP output product,
// while the attention runs). Its last block waits at the end, so that it finishes after the
// kernels before it like every other kernel (the next kernel's wait relies on that).
//
// gemv_pair: two products of one input in one launch (a parallel block's attention and MLP
// input products): outputs [0, n_a) from w_a into out_a, the next n_b from w_b into out_b
// through act_b. One launch instead of two keeps every SM streaming weights across the pair.
#define GEMV(R)                                                                                      \
    extern "C" __global__ void gemv##R(const float* x, const wt* w, const wt* bias, float* out,      \
                                       u32 n_out, u32 n_in, u32 accumulate, u32 act, u32 early,      \
                                       NORM_PARAMS, u32 split) {                                     \
        Share sh(split);                                                                             \
        bool live = sh.o < n_out;                                                                    \
        float acc[R] = {};                                                                           \
        const wt* wo = w + (size_t)sh.o * n_in;                                                      \
        dot_rows<R>(acc, x, wo, n_in, sh, live, {norm_w, norm_b, eps, rms}, early);                  \
        float bo = bias && live ? to_f32(bias[sh.o]) : 0.0f;                                         \
        store_rows<R>(acc, sh, live, bo, out, n_out, accumulate, act);                               \
        if (early && blockIdx.x == gridDim.x - 1 && threadIdx.x == 0) await_inputs();                \
    }                                                                                                \
    extern "C" __global__ void gemv_pair##R(const float* x, u32 n_in, const wt* w_a, const wt* bias_a, \
                                            float* out_a, u32 n_a, const wt* w_b, const wt* bias_b,  \
                                            float* out_b, u32 n_b, u32 act_b, NORM_PARAMS, u32 split) { \
        Share sh(split);                                                                             \
        bool b = sh.o >= n_a;                                                                        \
        const wt *w = b ? w_b : w_a, *bias = b ? bias_b : bias_a;                                    \
        u32 n_out = b ? n_b : n_a;                                                                   \
        if (b) sh.o -= n_a;                                                                          \
        bool live = sh.o < n_out;                                                                    \
        float acc[R] = {};                                                                           \
        const wt* wo = w + (size_t)sh.o * n_in;                                                      \
        dot_rows<R>(acc, x, wo, n_in, sh, live, {norm_w, norm_b, eps, rms}, false);                  \
        float bo = bias && live ? to_f32(bias[sh.o]) : 0.0f;                                         \
        store_rows<R>(acc, sh, live, bo, b ? out_b : out_a, n_out, 0, b ? act_b : 0);                \
    }
GEMV(1)
GEMV(2)
GEMV(3)
GEMV(4)

// Eight consecutive values in the storage type: one 16-byte store in f16 and bf16.
struct __align__(16) Packed8 {
    wt v[8];
};

// Element-wise kernels over n values handle eight per thread, so that loads and stores are 16
// bytes wide (one value per thread ran at a third of the card's bandwidth in prefill); a
// thread's eight start at a multiple of eight, and the last thread takes what remains.
__device__ __forceinline__ u32 first_of_eight() { return (blockIdx.x * blockDim.x + threadIdx.x) * 8; }

extern "C" __global__ void to_wt(const float* x, wt* out, u32 n) {
    await_inputs();
    u32 i = first_of_eight();
    if (i + 8 <= n) {
        float4 a = *(const float4*)(x + i), b = *(const float4*)(x + i + 4);
        float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
        Packed8 p;
#pragma unroll
        for (int k = 0; k < 8; k++) p.v[k] = from_f32(f[k]);
        *(Packed8*)(out + i) = p;
    } else {
        for (; i < n; i++) out[i] = from_f32(x[i]);
    }
}

// out = act(out + bias) after a cuBLAS product of `rows` rows of n_out; bias may be null.
extern "C" __global__ void bias_act(float* out, const wt* bias, u32 rows, u32 n_out, u32 act) {
    await_inputs();
    u32 i = first_of_eight(), n = rows * n_out;
    if (i >= n) return;
    u32 col = i % n_out;
    // act(x + bias) of value i, then of i + 1, ...: the column moves on with each call.
    auto next = [&](float x) {
        float y = activate(x + (bias ? to_f32(bias[col]) : 0.0f), act);
        col = col + 1 == n_out ? 0 : col + 1;
        return y;
    };
    if (i + 8 <= n) {
        float4 a = *(const float4*)(out + i), b = *(const float4*)(out + i + 4);
        float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int k = 0; k < 8; k++) f[k] = next(f[k]);
        *(float4*)(out + i) = make_float4(f[0], f[1], f[2], f[3]);
        *(float4*)(out + i + 4) = make_float4(f[4], f[5], f[6], f[7]);
    } else {
        for (; i < n; i++) out[i] = next(out[i]);
    }
}
