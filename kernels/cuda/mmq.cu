// Quantized matrix times 8-bit activations for many tokens (prefill): same operands and output
// as mmvq_<type> (y[t * rows + r] = W[r] . x[t]), any ntok.
//
// Launch: block (128, 1, 1); grid (ceil(rows / 4), ceil(ntok / 8), 1); no dynamic shared memory.
// Block (i, j) computes the tile of rows 4 i .. 4 i + 3 and tokens 8 j .. 8 j + 7, held in
// registers (4 x 8 accumulators per thread): each K-lane loads a part's activation words of the 8
// tokens once and reuses them for 4 rows, and each row's weight words once for 8 tokens (dp4a
// on registers; a lane's data is its own, so no shared-memory staging is needed). The reduction is
// the canonical one of common.cuh, with the same part order as mmvq_<type>: for every (row,
// token) the result is bitwise mmvq's, whatever ntok and whichever kernel a batch size picks.
// (No tensor-core path yet.)
#include "common.cuh"
#include "vecdot.cuh"

#define MMQ_ROWS 4
#define MMQ_TOKENS 8

template <class T>
static __device__ __forceinline__ void mmq_impl(const void* w, const void* xq, float* y,
                                                int rows, int cols, int ntok) {
    __shared__ float red[MV_WARPS * MMQ_ROWS * MMQ_TOKENS];
    const int r0 = blockIdx.x * MMQ_ROWS;
    const int t0 = blockIdx.y * MMQ_TOKENS;
    if (r0 >= rows || t0 >= ntok) {
        return;  // the whole block
    }
    const int nr = imin(MMQ_ROWS, rows - r0);
    const int nt = imin(MMQ_TOKENS, ntok - t0);
    const int nb = cols / T::QK;
    const int nparts = nb * T::PARTS;
    const int xblocks = cols / QK8_1;
    const typename T::block* w0 = (const typename T::block*)w + (i64)r0 * nb;
    const block_q8_1* x0 = (const block_q8_1*)xq + (i64)t0 * xblocks;

    float acc[MMQ_ROWS * MMQ_TOKENS];
#pragma unroll
    for (int i = 0; i < MMQ_ROWS * MMQ_TOKENS; ++i) {
        acc[i] = 0.0f;
    }
    for (int p = threadIdx.x; p < nparts; p += MV_LANES) {
        const int kb = p / T::PARTS;
        const int part = p % T::PARTS;
        const block_q8_1* xb = x0 + kb * (T::QK / QK8_1);
        typename T::A a[MMQ_TOKENS];
#pragma unroll
        for (int t = 0; t < MMQ_TOKENS; ++t) {
            if (t < nt) {
                a[t] = T::load_a(xb + (i64)t * xblocks, part);
            }
        }
#pragma unroll
        for (int r = 0; r < MMQ_ROWS; ++r) {
            if (r < nr) {
                const typename T::W wv = T::load_w(w0 + (i64)r * nb + kb, part);
#pragma unroll
                for (int t = 0; t < MMQ_TOKENS; ++t) {
                    if (t < nt) {
                        acc[r * MMQ_TOKENS + t] += T::dot(wv, a[t]);
                    }
                }
            }
        }
    }
    mv_reduce(acc, MMQ_ROWS * MMQ_TOKENS, red);
    for (int i = threadIdx.x; i < MMQ_ROWS * MMQ_TOKENS; i += MV_LANES) {
        const int r = i / MMQ_TOKENS;
        const int t = i % MMQ_TOKENS;
        if (r < nr && t < nt) {
            y[(i64)(t0 + t) * rows + r0 + r] = mv_combine(red, MMQ_ROWS * MMQ_TOKENS, i);
        }
    }
}

#define MMQ_KERNEL(name, T)                                                                      \
    extern "C" __global__ void __launch_bounds__(MV_LANES)                                      \
        name(const void* w, const void* xq, float* y, int rows, int cols, int ntok) {            \
        mmq_impl<T>(w, xq, y, rows, cols, ntok);                                                 \
    }

MMQ_KERNEL(mmq_q4_0, TQ4_0)
MMQ_KERNEL(mmq_q4_1, TQ4_1)
MMQ_KERNEL(mmq_q5_0, TQ5_0)
MMQ_KERNEL(mmq_q8_0, TQ8_0)
MMQ_KERNEL(mmq_q4_k, TQ4_K)
MMQ_KERNEL(mmq_q6_k, TQ6_K)
