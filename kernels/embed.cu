// Token and position embeddings, and row copies.

// out[r][d] = table[ids[r]][d]
extern "C" __global__ void embed(const wt* table, const u32* ids, float* out, u32 rows, u32 dim) {
    await_inputs();
    u32 r = blockIdx.x;
    const wt* src = table + (size_t)ids[r] * dim;
    for (u32 d = threadIdx.x; d < dim; d += blockDim.x) out[(size_t)r * dim + d] = to_f32(src[d]);
}

// x[r][d] += table[first + r][d]
extern "C" __global__ void add_positions(float* x, const wt* table, u32 first, u32 dim) {
    await_inputs();
    u32 r = blockIdx.x;
    const wt* src = table + (size_t)(first + r) * dim;
    for (u32 d = threadIdx.x; d < dim; d += blockDim.x) x[(size_t)r * dim + d] += to_f32(src[d]);
}
