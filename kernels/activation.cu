// Elementwise ops: GELU (erf and tanh forms) in place, SwiGLU or GeGLU from fused [gate | up]
// rows, residual add.

extern "C" __global__ void gelu(float* x, u32 n, u32 tanh_form) {
    await_inputs();
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = activate(x[i], tanh_form ? 2 : 1);
}

// out = act(gate) * up: SiLU of the gate (SwiGLU), or with `gelu` its GELU in the tanh form
// (GeGLU).
extern "C" __global__ void swiglu(const float* x, float* out, u32 rows, u32 width, u32 gelu) {
    await_inputs();
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * width) return;
    u32 r = i / width, c = i % width;
    float gate = x[(size_t)r * 2 * width + c], up = x[(size_t)r * 2 * width + width + c];
    float act = gelu ? activate(gate, 2) : gate / (1.0f + expf(-gate));
    out[i] = act * up;
}

extern "C" __global__ void add(float* x, const float* y, u32 n) {
    await_inputs();
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}
