// The parts of a matrix-vector product that do not depend on the weight's format, shared by
// kernels/matmul.cu (weights in the storage type) and kernels/quant.cu (block formats): the
// backend prepends this file to both (after common.cuh).

// Weights are read once per token and never reused: load them around L1.
__device__ __forceinline__ uint4 load_stream(const void* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

// The norm a product folds in: LayerNorm (with bias when b is set) or RMSNorm; w null for none.
struct FoldedNorm {
    const wt* w;
    const wt* b;
    float eps;
    u32 rms;
};
// The kernel parameters of a FoldedNorm.
#define NORM_PARAMS const wt *norm_w, const wt *norm_b, float eps, u32 rms

// norm(x) of ROWS rows of n into dynamic shared memory, with norm_rows' statistics (two passes,
// f32), for the whole block; returns the staged rows. Each thread keeps to its own columns
// between the passes, so only the reductions synchronise.
template <int ROWS>
__device__ const float* stage_norm(const float* x, u32 n, FoldedNorm nm) {
    extern __shared__ float staged[];
    for (int r = 0; r < ROWS; r++) {
        const float* xr = x + (size_t)r * n;
        float* sr = staged + (size_t)r * n;
        float s = 0.0f;
        for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
            sr[i] = xr[i];
            s += sr[i];
        }
        float mean = nm.rms ? 0.0f : block_reduce(s, false) / n;
        float q = 0.0f;
        for (u32 i = threadIdx.x; i < n; i += blockDim.x) q += (sr[i] - mean) * (sr[i] - mean);
        float inv = rsqrtf(block_reduce(q, false) / n + nm.eps);
        for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
            float y = (sr[i] - mean) * inv * to_f32(nm.w[i]);
            sr[i] = nm.b ? y + to_f32(nm.b[i]) : y;
        }
    }
    __syncthreads();
    return staged;
}

// One output's share of a warp: the output, and which of `split` consecutive column ranges.
// With few outputs of long rows (GPT-J's fc_out: 4096 of 16384 columns) one warp each cannot
// keep enough loads in flight, so several warps of a block share an output.
struct Share {
    u32 o, part, split;
    __device__ Share(u32 split) : split(split) {
        u32 w = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
        o = w / split;
        part = w % split;
    }
};

// Output o of each row (rows `stride` apart in out) from the sums of the share's warps, added in
// part order so results are reproducible: out[r][o] = act(sum + bias), or out[r][o] += sum + bias
// when `accumulate` (a residual add folded in). Every warp of the block comes here, live or not, for the barrier
// (named barriers per output would cost occupancy: ptxas reserves all 16 for a computed id).
template <int ROWS>
__device__ __forceinline__ void store_rows(float (&acc)[ROWS], Share sh, bool live, float bias, float* out,
                                           u32 stride, u32 accumulate, u32 act) {
    __shared__ float partial[32][ROWS];
    u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float s[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) s[r] = warp_sum(acc[r]);
    if (sh.split > 1) {
#pragma unroll
        for (int r = 0; r < ROWS; r++) partial[warp][r] = s[r];
        __syncthreads();
#pragma unroll
        for (int r = 0; r < ROWS; r++)
            for (u32 k = 1; k < sh.split; k++) s[r] += partial[warp + k][r];
    }
    if (!live || sh.part != 0 || lane != 0) return;
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        float* y = out + (size_t)r * stride + sh.o;
        *y = accumulate ? *y + s[r] + bias : activate(s[r] + bias, act);
    }
}

