// Matrix-vector products for decode (the large matrix products of prefill go to cuBLAS), and the
// small helpers around cuBLAS: activations to the weight type, bias add.

#define VEC (16 / sizeof(wt))

// out[r][o] = x[r] . w[o] (+ bias[o]) for ROWS rows: one warp per output, reading each weight
// row once with 16-byte loads. ROWS is a template parameter so the sums stay in registers.
template <int ROWS>
__device__ void gemv_rows(const float* x, const wt* w, const wt* bias, float* out, u32 n_out, u32 n_in,
                          u32 has_bias) {
    u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    u32 o = blockIdx.x * (blockDim.x >> 5) + warp;
    if (o >= n_out) return;
    const wt* wr = w + (size_t)o * n_in;
    float acc[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) acc[r] = 0.0f;
    if (n_in % VEC == 0) {
        // Eight 16-byte loads per lane are issued before any is used, so a warp keeps 4 KiB of
        // its row in flight: decode is bound by memory latency and bandwidth, not arithmetic.
        for (u32 base = lane * VEC; base < n_in; base += 32 * VEC * 8) {
            uint4 raw[8];
#pragma unroll
            for (int u = 0; u < 8; u++) {
                u32 i = base + u * 32 * VEC;
                raw[u] = i < n_in ? *(const uint4*)(wr + i) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < 8; u++) {
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
        for (u32 i = lane; i < n_in; i += 32) {
            float wv = to_f32(wr[i]);
#pragma unroll
            for (int r = 0; r < ROWS; r++) acc[r] += wv * x[(size_t)r * n_in + i];
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0) out[(size_t)r * n_out + o] = has_bias ? s + to_f32(bias[o]) : s;
    }
}

// Grid: ceil(n_out / 8) blocks of 256 threads.
#define GEMV(R)                                                                                   \
    extern "C" __global__ void gemv##R(const float* x, const wt* w, const wt* bias, float* out,   \
                                       u32 n_out, u32 n_in, u32 has_bias) {                      \
        gemv_rows<R>(x, w, bias, out, n_out, n_in, has_bias);                                    \
    }
GEMV(1)
GEMV(2)
GEMV(3)
GEMV(4)

extern "C" __global__ void to_wt(const float* x, wt* out, u32 n) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f32(x[i]);
}

extern "C" __global__ void add_bias(float* out, const wt* bias, u32 rows, u32 n_out) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows * n_out) out[i] += to_f32(bias[i % n_out]);
}
