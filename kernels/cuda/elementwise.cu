// Per-row and element-wise kernels of a transformer layer; the same arithmetic, in the same
// order where it matters, as cascade-kernels' ops.rs.
#include "common.cuh"

#define ROW_BLOCK 128
#define ELEM_BLOCK 256

// y[t] = x[t] / rms(x[t]) * w for n rows of `cols`: scale = 1 / sqrtf(sum(x^2) / cols + eps),
// y = (x * scale) * w. The sum of squares: lane-strided fmaf partial sums, the warp tree, the
// four warps in order.
// Launch: block (128, 1, 1); grid (n, 1, 1).
extern "C" __global__ void __launch_bounds__(ROW_BLOCK)
    rms_norm(const float* x, const float* w, float* y, int cols, float eps, int n) {
    __shared__ float red[ROW_BLOCK / WARP_SIZE];
    const int row = blockIdx.x;
    if (row >= n) {
        return;  // the whole block
    }
    const float* xr = x + (i64)row * cols;
    float* yr = y + (i64)row * cols;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < cols; c += ROW_BLOCK) {
        ss = fmaf(xr[c], xr[c], ss);
    }
    ss = warp_sum(ss);
    if (threadIdx.x % WARP_SIZE == 0) {
        red[threadIdx.x / WARP_SIZE] = ss;
    }
    __syncthreads();
    const float total = ((red[0] + red[1]) + red[2]) + red[3];
    const float scale = 1.0f / sqrtf(total / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += ROW_BLOCK) {
        yr[c] = xr[c] * scale * w[c];
    }
}

// x[t][c] += b[c] for n rows of `cols`.
// Launch: block (256, 1, 1); grid (ceil(cols / 256), n, 1).
extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)
    add_bias(float* x, const float* b, int cols, int n) {
    const int c = blockIdx.x * ELEM_BLOCK + threadIdx.x;
    const int row = blockIdx.y;
    if (c < cols && row < n) {
        x[(i64)row * cols + c] += b[c];
    }
}

// x[i] += y[i].
// Launch: block (256, 1, 1); grid (ceil(len / 256), 1, 1).
extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)
    add_inplace(float* x, const float* y, int len) {
    const i64 i = (i64)blockIdx.x * ELEM_BLOCK + threadIdx.x;
    if (i < len) {
        x[i] += y[i];
    }
}

// dst[i] = src[i] (positions of a KV block copied into another: a shared prefix reused).
// Launch: block (256, 1, 1); grid (ceil(len / 256), 1, 1).
extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)
    copy_f32(float* dst, const float* src, int len) {
    const i64 i = (i64)blockIdx.x * ELEM_BLOCK + threadIdx.x;
    if (i < len) {
        dst[i] = src[i];
    }
}

// gate[i] = gate[i] / (1 + e^-gate[i]) * up[i] (ops.rs silu_mul), with the exponent clamped to
// [-87.3, 88.3] as ops.rs' exp does (so a very negative gate gives a tiny value, not -0).
// Launch: block (256, 1, 1); grid (ceil(len / 256), 1, 1).
extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)
    silu_mul(float* gate, const float* up, int len) {
    const i64 i = (i64)blockIdx.x * ELEM_BLOCK + threadIdx.x;
    if (i < len) {
        const float g = gate[i];
        const float e = expf(fminf(fmaxf(-g, -87.3f), 88.3f));
        gate[i] = g / (1.0f + e) * up[i];
    }
}

#define ROPE_MAX_HALF 256

// Rotary embeddings in place on x = [ntok][n_heads][head_dim], token t at position pos[t]
// (ops.rs rope): theta_scale = theta^(-2 / head_dim) (the exponent in f32, the power correctly
// rounded), angle_0 = pos, angle_{i+1} = angle_i * theta_scale (the same recurrence, computed by
// one thread); pairs (2i, 2i + 1), or (i, i + head_dim / 2) when neox != 0.
// head_dim even, at most 512.
// Launch: block (128, 1, 1); grid (ntok, 1, 1).
extern "C" __global__ void __launch_bounds__(ROW_BLOCK)
    rope(float* x, const int* pos, int ntok, int n_heads, int head_dim, float theta, int neox) {
    __shared__ float cos_s[ROPE_MAX_HALF];
    __shared__ float sin_s[ROPE_MAX_HALF];
    const int t = blockIdx.x;
    if (t >= ntok) {
        return;  // the whole block
    }
    const int half = head_dim / 2;
    if (threadIdx.x == 0) {
        const float e = -2.0f / (float)head_dim;
        const float theta_scale = (float)pow((double)theta, (double)e);
        float angle = (float)pos[t];
        for (int i = 0; i < half; ++i) {
            cos_s[i] = angle;
            angle *= theta_scale;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < half; i += ROW_BLOCK) {
        const float a = cos_s[i];
        sin_s[i] = sinf(a);
        cos_s[i] = cosf(a);
    }
    __syncthreads();
    float* xt = x + (i64)t * n_heads * head_dim;
    for (int k = threadIdx.x; k < n_heads * half; k += ROW_BLOCK) {
        const int h = k / half;
        const int i = k % half;
        float* head = xt + (i64)h * head_dim;
        const int a = neox ? i : 2 * i;
        const int b = neox ? i + half : 2 * i + 1;
        const float x0 = head[a];
        const float x1 = head[b];
        const float c = cos_s[i];
        const float s = sin_s[i];
        head[a] = x0 * c - x1 * s;
        head[b] = x0 * s + x1 * c;
    }
}
