// Shared by every kernel file; the backend prepends it (with the storage-type defines) before
// compiling each file with NVRTC, so no CUDA headers are needed at run time.
//
// Defines set by the backend:
//   W_F16 / W_BF16 / W_F32: how weights and the KV cache are stored (type `wt`).

typedef unsigned int u32;
#define NEG_INF __int_as_float(0xff800000)

#if defined(W_F32)
typedef float wt;
__device__ __forceinline__ float to_f32(wt x) { return x; }
__device__ __forceinline__ wt from_f32(float x) { return x; }
#elif defined(W_F16)
typedef unsigned short wt;
__device__ __forceinline__ float to_f32(wt x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
}
__device__ __forceinline__ wt from_f32(float x) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
}
#elif defined(W_BF16)
typedef unsigned short wt;
__device__ __forceinline__ float to_f32(wt x) { return __uint_as_float(((u32)x) << 16); }
__device__ __forceinline__ wt from_f32(float x) {
    // Round to nearest even; NaN stays NaN.
    u32 u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (wt)((u >> 16) | 0x40u);
    return (wt)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
#endif

// Programmatic dependent launch (sm_90 and later): the backend lets each kernel start while the
// one before it in the stream is finishing, so launches and the loads of weights that no kernel
// writes overlap that kernel's tail. Every kernel calls this before it touches memory that other
// kernels write: it waits for the previous kernel's writes, then lets the next kernel start.
__device__ __forceinline__ void await_inputs() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Lets the next kernel start before this one waits: for kernels that have nothing to stream
// first, so that the kernel after them can start on work that depends on none of them
// (a parallel block's MLP output product while the attention runs). Still safe: every kernel waits before it
// touches what others write, and a wait returns only once the previous kernel has finished,
// which itself waited for the one before.
__device__ __forceinline__ void allow_next() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ u32 warp_max_u32(u32 v) {
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum or max for blocks of up to 1024 threads; every thread gets the result.
__device__ float block_reduce(float v, bool is_max) {
    __shared__ float partial[32];
    __shared__ float result;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = is_max ? warp_max(v) : warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int warps = (blockDim.x + 31) >> 5;
        float x = lane < warps ? partial[lane] : (is_max ? NEG_INF : 0.0f);
        x = is_max ? warp_max(x) : warp_sum(x);
        if (lane == 0) result = x;
    }
    __syncthreads();
    return result;
}

// Block-wide maximum of u32 values, under the same contract as block_reduce.
__device__ u32 block_max_u32(u32 v) {
    __shared__ u32 partial[32];
    __shared__ u32 result;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max_u32(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int warps = (blockDim.x + 31) >> 5;
        u32 x = warp_max_u32(lane < warps ? partial[lane] : 0u);
        if (lane == 0) result = x;
    }
    __syncthreads();
    return result;
}

// Activations fused into other kernels: 0 none, 1 GELU (erf), 2 GELU (tanh form).
__device__ __forceinline__ float activate(float v, u32 act) {
    if (act == 1) return 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
    if (act == 2) return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    return v;
}

// The Gumbel-noise hash of src/kv/noise.rs, bit for bit.
__device__ __forceinline__ u32 fmix32(u32 h) {
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

__device__ __forceinline__ float gumbel(u32 seed, u32 layer, u32 head, u32 qpos, u32 kpos) {
    u32 words[4] = {layer, head, qpos, kpos};
    u32 h = seed;
    for (int i = 0; i < 4; i++) h = fmix32(h ^ (words[i] * 0xcc9e2d51u)) * 5u + 0xe6546b64u;
    h = fmix32(h);
    float u = ((float)(h >> 9) + 0.5f) / 8388608.0f;
    return -logf(-logf(u));
}

// One sequence of a batched decode step; the layout matches SeqDesc in
// src/backend/cuda/attention.rs. Passed by value in a SeqBatch kernel parameter.
#define MAX_SEQS 128
struct SeqDesc {
    wt* k;
    wt* v;
    u32* pos;
    float* score;
    u32 capacity;      // slots per kv head
    u32 len;           // tokens held, this step's token included
    u32 qpos;          // position of this step's token
    u32 scoring;       // add this step's (noisy) probabilities into the scores
    u32 noise;
    float tau;
    u32 seed;
    u32 evict;         // evict one token per kv head after this step
    u32 sinks;
    u32 window_start;  // first position of the recent window
};
struct SeqBatch {
    SeqDesc s[MAX_SEQS];
};
