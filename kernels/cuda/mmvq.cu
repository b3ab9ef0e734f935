// Quantized matrix times 8-bit activations for few tokens (decode, verification):
// y[t * rows + r] = W[r] . x[t] for t < ntok, W in the plain GGUF row layout, x as q8_1 blocks
// (row t's blocks at t * cols / 32, from quantize_q8_1).
//
// Launch: block (128, 1, 1); grid (rows, ceil(ntok / 16), 1); no dynamic shared memory.
// Block (r, g) computes row r for tokens 16 g .. 16 g + 15. Its 128 threads are the K-lanes of
// the canonical reduction (common.cuh): lane l handles parts l, l + 128, ... of the row, each
// part's weight words loaded once and dotted with every token's activations; then the warp tree
// and the four warps in order. A (row, token)'s result is independent of ntok, and bitwise equal
// to mmq_<type>'s.
#include "common.cuh"
#include "vecdot.cuh"

#define MMVQ_TOKENS 16

template <class T>
static __device__ __forceinline__ void mmvq_impl(const void* w, const void* xq, float* y,
                                                 int rows, int cols, int ntok) {
    __shared__ float red[MV_WARPS * MMVQ_TOKENS];
    const int row = blockIdx.x;
    const int t0 = blockIdx.y * MMVQ_TOKENS;
    if (row >= rows || t0 >= ntok) {
        return;  // the whole block
    }
    const int nt = imin(MMVQ_TOKENS, ntok - t0);
    const int nb = cols / T::QK;
    const int nparts = nb * T::PARTS;
    const int xblocks = cols / QK8_1;  // q8_1 blocks per token row
    const typename T::block* wr = (const typename T::block*)w + (i64)row * nb;
    const block_q8_1* x0 = (const block_q8_1*)xq + (i64)t0 * xblocks;

    float acc[MMVQ_TOKENS];
#pragma unroll
    for (int t = 0; t < MMVQ_TOKENS; ++t) {
        acc[t] = 0.0f;
    }
    for (int p = threadIdx.x; p < nparts; p += MV_LANES) {
        const int kb = p / T::PARTS;
        const int part = p % T::PARTS;
        const typename T::W wv = T::load_w(wr + kb, part);
        const block_q8_1* xb = x0 + kb * (T::QK / QK8_1);
#pragma unroll
        for (int t = 0; t < MMVQ_TOKENS; ++t) {
            if (t < nt) {
                const typename T::A a = T::load_a(xb + (i64)t * xblocks, part);
                acc[t] += T::dot(wv, a);
            }
        }
    }
    mv_reduce(acc, nt, red);
    for (int t = threadIdx.x; t < nt; t += MV_LANES) {
        y[(i64)(t0 + t) * rows + row] = mv_combine(red, MMVQ_TOKENS, t);
    }
}

#define MMVQ_KERNEL(name, T)                                                                     \
    extern "C" __global__ void __launch_bounds__(MV_LANES)                                      \
        name(const void* w, const void* xq, float* y, int rows, int cols, int ntok) {            \
        mmvq_impl<T>(w, xq, y, rows, cols, ntok);                                                \
    }

MMVQ_KERNEL(mmvq_q4_0, TQ4_0)
MMVQ_KERNEL(mmvq_q4_1, TQ4_1)
MMVQ_KERNEL(mmvq_q5_0, TQ5_0)
MMVQ_KERNEL(mmvq_q8_0, TQ8_0)
MMVQ_KERNEL(mmvq_q4_k, TQ4_K)
MMVQ_KERNEL(mmvq_q6_k, TQ6_K)
