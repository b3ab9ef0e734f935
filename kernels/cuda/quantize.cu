// Activations to 8-bit blocks for the integer matrix products.
//
// quantize_q8_1: n rows of `cols` floats (cols a multiple of 32), row-major, into n * cols / 32
// block_q8_1 (row t's blocks at t * cols / 32). Per block of 32 values, as llama.cpp:
// d = amax / 127, q = roundf(x / d) (0 when amax is 0); ds = (half(d), half(d * sum(q))).
// Launch: block (256, 1, 1), one warp per q8_1 block; grid (ceil(n * cols / 32 / 8), 1, 1).
#include "common.cuh"

#define QUANTIZE_BLOCK 256

extern "C" __global__ void __launch_bounds__(QUANTIZE_BLOCK)
    quantize_q8_1(const float* x, void* y, int cols, int n) {
    const i64 nblocks = (i64)n * (cols / QK8_1);
    const i64 ib = (i64)blockIdx.x * (QUANTIZE_BLOCK / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (ib >= nblocks) {
        return;  // the whole warp; no block barrier below
    }
    const int lane = threadIdx.x % WARP_SIZE;
    const float xi = x[ib * QK8_1 + lane];
    const float amax = warp_max(fabsf(xi));
    const float d = amax / 127.0f;
    const int q = amax == 0.0f ? 0 : (int)roundf(xi / d);
    int sum = q;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        sum += __shfl_xor_sync(FULL_MASK, sum, off);
    }
    block_q8_1* yb = (block_q8_1*)y + ib;
    yb->qs[lane] = (i8)q;
    if (lane == 0) {
        yb->ds = __floats2half2_rn(d, d * (float)sum);
    }
}
