// Greedy sampling on the device: the index of the largest logit, the lowest index on ties.

extern "C" __global__ void argmax(const float* logits, u32 n, u32* out) {
    await_inputs();
    __shared__ float best_v[1024];
    __shared__ u32 best_i[1024];
    float v = NEG_INF;
    u32 idx = 0xffffffffu;
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
        if (logits[i] > v) { v = logits[i]; idx = i; }
    }
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
    if (threadIdx.x == 0) out[0] = best_i[0];
}
