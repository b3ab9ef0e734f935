// Float matrix times float activations: y[t * rows + r] = W[r] . x[t] (x row-major [ntok][cols]),
// W as f32, f16 or bf16 rows (any cols).
//
// Launch: block (128, 1, 1); grid (rows, ceil(ntok / 16), 1); no dynamic shared memory.
// The canonical reduction of common.cuh with one element per part: lane l adds
// w[c] * x[t][c] (fmaf) for c = l, l + 128, ... in order, then the warp tree and the warps in
// order; a (row, token)'s result does not depend on ntok.
#include "common.cuh"

#define MV_TOKENS 16

static __device__ __forceinline__ float mv_load(const float* w, i64 i) { return w[i]; }
static __device__ __forceinline__ float mv_load(const __half* w, i64 i) { return __half2float(w[i]); }
static __device__ __forceinline__ float mv_load(const u16* w, i64 i) { return bf16_to_float(w[i]); }

template <class WT>
static __device__ __forceinline__ void mv_impl(const WT* w, const float* x, float* y, int rows,
                                               int cols, int ntok) {
    __shared__ float red[MV_WARPS * MV_TOKENS];
    const int row = blockIdx.x;
    const int t0 = blockIdx.y * MV_TOKENS;
    if (row >= rows || t0 >= ntok) {
        return;  // the whole block
    }
    const int nt = imin(MV_TOKENS, ntok - t0);
    const WT* wr = w + (i64)row * cols;
    const float* x0 = x + (i64)t0 * cols;
    float acc[MV_TOKENS];
#pragma unroll
    for (int t = 0; t < MV_TOKENS; ++t) {
        acc[t] = 0.0f;
    }
    for (int c = threadIdx.x; c < cols; c += MV_LANES) {
        const float wv = mv_load(wr, c);
#pragma unroll
        for (int t = 0; t < MV_TOKENS; ++t) {
            if (t < nt) {
                acc[t] = fmaf(wv, x0[(i64)t * cols + c], acc[t]);
            }
        }
    }
    mv_reduce(acc, nt, red);
    for (int t = threadIdx.x; t < nt; t += MV_LANES) {
        y[(i64)(t0 + t) * rows + row] = mv_combine(red, MV_TOKENS, t);
    }
}

extern "C" __global__ void __launch_bounds__(MV_LANES)
    mv_f32(const float* w, const float* x, float* y, int rows, int cols, int ntok) {
    mv_impl(w, x, y, rows, cols, ntok);
}

extern "C" __global__ void __launch_bounds__(MV_LANES)
    mv_f16(const __half* w, const float* x, float* y, int rows, int cols, int ntok) {
    mv_impl(w, x, y, rows, cols, ntok);
}

extern "C" __global__ void __launch_bounds__(MV_LANES)
    mv_bf16(const unsigned short* w, const float* x, float* y, int rows, int cols, int ntok) {
    mv_impl((const u16*)w, x, y, rows, cols, ntok);
}
