// Matrix-vector products for decode (the large matrix products of prefill go to cuBLAS), and the
// small helpers around cuBLAS: activations to the weight type, bias add.

#define VEC (16 / sizeof(wt))
#define MAX_ROWS 4

// out[r][o] = x[r] . w[o] (+ bias[o]) for up to MAX_ROWS rows: one warp per output, reading each
// weight row once with 16-byte loads. Grid: ceil(n_out / 8) blocks of 256 threads.
extern "C" __global__ void gemv(const float* x, const wt* w, const wt* bias, float* out,
                                u32 rows, u32 n_out, u32 n_in, u32 has_bias) {
    u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    u32 o = blockIdx.x * (blockDim.x >> 5) + warp;
    if (o >= n_out) return;
    const wt* wr = w + (size_t)o * n_in;
    float acc[MAX_ROWS] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (n_in % VEC == 0) {
#pragma unroll 4
        for (u32 i = lane * VEC; i < n_in; i += 32 * VEC) {
            uint4 raw = *(const uint4*)(wr + i);
            const wt* wv = (const wt*)&raw;
            for (u32 r = 0; r < rows; r++) {
                const float* xr = x + (size_t)r * n_in + i;
#pragma unroll
                for (u32 k = 0; k < VEC; k++) acc[r] += to_f32(wv[k]) * xr[k];
            }
        }
    } else {
        for (u32 i = lane; i < n_in; i += 32) {
            float wv = to_f32(wr[i]);
            for (u32 r = 0; r < rows; r++) acc[r] += wv * x[(size_t)r * n_in + i];
        }
    }
    for (u32 r = 0; r < rows; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0) out[(size_t)r * n_out + o] = has_bias ? s + to_f32(bias[o]) : s;
    }
}

extern "C" __global__ void to_wt(const float* x, wt* out, u32 n) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f32(x[i]);
}

extern "C" __global__ void add_bias(float* out, const wt* bias, u32 rows, u32 n_out) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows * n_out) out[i] += to_f32(bias[i % n_out]);
}
