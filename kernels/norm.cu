// LayerNorm (with or without bias) and RMSNorm, one block per row, f32 statistics.

extern "C" __global__ void norm_rows(const float* x, const wt* weight, const wt* bias, float* out,
                                u32 dim, float eps, u32 rms, u32 has_bias) {
    const float* xr = x + (size_t)blockIdx.x * dim;
    float* yr = out + (size_t)blockIdx.x * dim;
    float mean = 0.0f;
    if (!rms) {
        float s = 0.0f;
        for (u32 d = threadIdx.x; d < dim; d += blockDim.x) s += xr[d];
        mean = block_reduce(s, false) / dim;
    }
    float s = 0.0f;
    for (u32 d = threadIdx.x; d < dim; d += blockDim.x) {
        float c = xr[d] - mean;
        s += c * c;
    }
    float inv = rsqrtf(block_reduce(s, false) / dim + eps);
    for (u32 d = threadIdx.x; d < dim; d += blockDim.x) {
        float y = (xr[d] - mean) * inv * to_f32(weight[d]);
        yr[d] = has_bias ? y + to_f32(bias[d]) : y;
    }
}
