// Matrix-vector products for decode (the large matrix products of prefill go to cuBLAS), and the
// small helpers around cuBLAS: activations to the weight type, bias and activation epilogue.

#define VEC (16 / sizeof(wt))

// Weights are read once per token and never reused: load them around L1.
__device__ __forceinline__ uint4 load_stream(const wt* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

// LOADS 16-byte loads of weight row `wr` for one lane from element `base`, zero past n_in.
template <int LOADS>
__device__ __forceinline__ void load_weights(uint4 (&raw)[LOADS], const wt* wr, u32 base, u32 n_in) {
#pragma unroll
    for (int u = 0; u < LOADS; u++) {
        u32 i = base + u * 32 * VEC;
        raw[u] = i < n_in ? load_stream(wr + i) : make_uint4(0, 0, 0, 0);
    }
}

// out[r][o] = act(x[r] . w[o] (+ bias[o])) for ROWS rows (act as in activate()), or
// out[r][o] += x[r] . w[o] (+ bias[o]) when `accumulate` (a residual add folded in). One warp
// per output: each lane keeps four 16-byte loads of the weight row in flight, which measured
// fastest on an H100 (2.3-3.05 TB/s from 4096x4096 to 50400x4096 in f16, against 2.0-2.95 for
// eight loads and 256-thread blocks). The first loads go out before waiting for the previous
// kernel, which computes x. ROWS is a template parameter so the sums stay in registers.
template <int ROWS>
__device__ void gemv_rows(const float* x, const wt* w, const wt* bias, float* out, u32 n_out, u32 n_in,
                          u32 has_bias, u32 accumulate, u32 act) {
    const int LOADS = 4;
    const u32 STEP = 32 * VEC * LOADS;
    u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    u32 o = blockIdx.x * (blockDim.x >> 5) + warp;
    if (o >= n_out) return;
    const wt* wr = w + (size_t)o * n_in;
    float acc[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) acc[r] = 0.0f;
    if (n_in % VEC == 0) {
        uint4 raw[LOADS];
        load_weights(raw, wr, lane * VEC, n_in);
        await_inputs();
        for (u32 base = lane * VEC; base < n_in; base += STEP) {
            if (base != lane * VEC) load_weights(raw, wr, base, n_in);
#pragma unroll
            for (int u = 0; u < LOADS; u++) {
                u32 i = base + u * 32 * VEC;
                if (i >= n_in) break;
                const wt* wv = (const wt*)&raw[u];
#pragma unroll
                for (int r = 0; r < ROWS; r++) {
                    const float4* xr = (const float4*)(x + (size_t)r * n_in + i);
#pragma unroll
                    for (u32 k = 0; k < VEC / 4; k++) {
                        float4 xv = xr[k];
                        acc[r] += to_f32(wv[4 * k]) * xv.x + to_f32(wv[4 * k + 1]) * xv.y +
                                  to_f32(wv[4 * k + 2]) * xv.z + to_f32(wv[4 * k + 3]) * xv.w;
                    }
                }
            }
        }
    } else {
        await_inputs();
        for (u32 i = lane; i < n_in; i += 32) {
            float wv = to_f32(wr[i]);
#pragma unroll
            for (int r = 0; r < ROWS; r++) acc[r] += wv * x[(size_t)r * n_in + i];
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        float s = warp_sum(acc[r]);
        if (has_bias) s += to_f32(bias[o]);
        if (lane == 0) out[(size_t)r * n_out + o] = accumulate ? out[(size_t)r * n_out + o] + s : activate(s, act);
    }
}

// Grid: ceil(n_out / 4) blocks of 128 threads.
#define GEMV(R)                                                                                   \
    extern "C" __global__ void gemv##R(const float* x, const wt* w, const wt* bias, float* out,   \
                                       u32 n_out, u32 n_in, u32 has_bias, u32 accumulate,        \
                                       u32 act) {                                                 \
        gemv_rows<R>(x, w, bias, out, n_out, n_in, has_bias, accumulate, act);                   \
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
