// LayerNorm (with or without bias) and RMSNorm, one block per row, f32 statistics. Rows of up to
// PER_THREAD * blockDim values stay in registers between the passes.

#define PER_THREAD 16

extern "C" __global__ void norm_rows(const float* x, const wt* weight, const wt* bias, float* out,
                                     u32 dim, float eps, u32 rms, u32 has_bias) {
    await_inputs();
    const float* xr = x + (size_t)blockIdx.x * dim;
    float* yr = out + (size_t)blockIdx.x * dim;
    bool cached = dim <= PER_THREAD * blockDim.x;
    float v[PER_THREAD];
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < PER_THREAD; k++) {
        u32 d = threadIdx.x + k * blockDim.x;
        v[k] = cached && d < dim ? xr[d] : 0.0f;
        s += v[k];
    }
    if (!cached) {
        s = 0.0f;
        for (u32 d = threadIdx.x; d < dim; d += blockDim.x) s += xr[d];
    }
    float mean = rms ? 0.0f : block_reduce(s, false) / dim;
    float q = 0.0f;
    if (cached) {
#pragma unroll
        for (int k = 0; k < PER_THREAD; k++) {
            u32 d = threadIdx.x + k * blockDim.x;
            if (d < dim) q += (v[k] - mean) * (v[k] - mean);
        }
    } else {
        for (u32 d = threadIdx.x; d < dim; d += blockDim.x) q += (xr[d] - mean) * (xr[d] - mean);
    }
    float inv = rsqrtf(block_reduce(q, false) / dim + eps);
#pragma unroll
    for (int k = 0; k < PER_THREAD; k++) {
        u32 d = threadIdx.x + k * blockDim.x;
        if (!cached || d >= dim) break;
        float y = (v[k] - mean) * inv * to_f32(weight[d]);
        yr[d] = has_bias ? y + to_f32(bias[d]) : y;
    }
    if (!cached) {
        for (u32 d = threadIdx.x; d < dim; d += blockDim.x) {
            float y = (xr[d] - mean) * inv * to_f32(weight[d]);
            yr[d] = has_bias ? y + to_f32(bias[d]) : y;
        }
    }
}
