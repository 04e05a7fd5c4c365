// Elementwise ops: GELU (erf and tanh forms) in place, SwiGLU from fused [gate | up] rows,
// residual add.

extern "C" __global__ void gelu(float* x, u32 n, u32 tanh_form) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    if (tanh_form) {
        x[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    } else {
        x[i] = 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
    }
}

extern "C" __global__ void swiglu(const float* x, float* out, u32 rows, u32 width) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * width) return;
    u32 r = i / width, c = i % width;
    float gate = x[(size_t)r * 2 * width + c], up = x[(size_t)r * 2 * width + width + c];
    out[i] = gate / (1.0f + expf(-gate)) * up;
}

extern "C" __global__ void add(float* x, const float* y, u32 n) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}
