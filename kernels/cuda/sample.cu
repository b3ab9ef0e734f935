// Greedy and top-k selection over logits rows (engine/src/sampler.rs: the largest value, the
// lowest index on ties; NaN never selected).
#include "common.cuh"

#define SAMPLE_BLOCK 256

// Whether (v, i) comes before (bv, bi) in the order "larger value first, then lower index";
// bi < 0 is "nothing yet", NaN never comes first.
static __device__ __forceinline__ bool sel_better(float v, int i, float bv, int bi) {
    if (v != v || i < 0) {
        return false;
    }
    return bi < 0 || v > bv || (v == bv && i < bi);
}

// Block-wide best of each thread's (v, i): warp trees (the order is a total order, so every
// lane agrees), then the warps in order. Result in every thread.
static __device__ __forceinline__ void block_best(float& v, int& i, float* red_v, int* red_i) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(FULL_MASK, v, off);
        const int oi = __shfl_xor_sync(FULL_MASK, i, off);
        if (sel_better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
    const int warp = threadIdx.x / WARP_SIZE;
    if (threadIdx.x % WARP_SIZE == 0) {
        red_v[warp] = v;
        red_i[warp] = i;
    }
    __syncthreads();
    v = red_v[0];
    i = red_i[0];
    for (int w = 1; w < SAMPLE_BLOCK / WARP_SIZE; ++w) {
        if (sel_better(red_v[w], red_i[w], v, i)) {
            v = red_v[w];
            i = red_i[w];
        }
    }
    __syncthreads();  // red_* may be reused
}

// out_idx[r], out_val[r] = the largest logit of row r among the ids with valid[id] != 0 (every
// id when valid is null) and its index (lowest on ties); -1 and -inf when the row has no such
// non-NaN value. Greedy decoding on the device: a step copies back one id per row.
// Launch: block (256, 1, 1); grid (n, 1, 1).
extern "C" __global__ void __launch_bounds__(SAMPLE_BLOCK)
    argmax_rows(const float* logits, const unsigned char* valid, int vocab, int n, int* out_idx,
                float* out_val) {
    __shared__ float red_v[SAMPLE_BLOCK / WARP_SIZE];
    __shared__ int red_i[SAMPLE_BLOCK / WARP_SIZE];
    const int row = blockIdx.x;
    if (row >= n) {
        return;  // the whole block
    }
    const float* lr = logits + (i64)row * vocab;
    float bv = -INFINITY;
    int bi = -1;
    for (int c = threadIdx.x; c < vocab; c += SAMPLE_BLOCK) {
        const float v = lr[c];
        if ((valid == nullptr || valid[c] != 0) && sel_better(v, c, bv, bi)) {
            bv = v;
            bi = c;
        }
    }
    block_best(bv, bi, red_v, red_i);
    if (threadIdx.x == 0) {
        out_idx[row] = bi;
        out_val[row] = bi < 0 ? -INFINITY : bv;
    }
}

#define TOPK_MAX 64

// The k (<= 64) largest logits of each row, in descending order, ties by lowest index:
// out_idx[r * k + i], out_val[r * k + i]; past the row's non-NaN values, -1 and -inf.
// k rounds, each a block-wide best among the values after the previous pick in that order (k
// passes over the row).
// Launch: block (256, 1, 1); grid (n, 1, 1).
extern "C" __global__ void __launch_bounds__(SAMPLE_BLOCK)
    topk_rows(const float* logits, int vocab, int n, int k, int* out_idx, float* out_val) {
    __shared__ float red_v[SAMPLE_BLOCK / WARP_SIZE];
    __shared__ int red_i[SAMPLE_BLOCK / WARP_SIZE];
    const int row = blockIdx.x;
    if (row >= n) {
        return;  // the whole block
    }
    const float* lr = logits + (i64)row * vocab;
    float pv = INFINITY;
    int pi = -1;  // the previous pick; -1: none (everything comes after it)
    for (int round = 0; round < k && round < TOPK_MAX; ++round) {
        float bv = -INFINITY;
        int bi = -1;
        for (int c = threadIdx.x; c < vocab; c += SAMPLE_BLOCK) {
            const float v = lr[c];
            const bool after = pi < 0 || v < pv || (v == pv && c > pi);
            if (after && sel_better(v, c, bv, bi)) {
                bv = v;
                bi = c;
            }
        }
        block_best(bv, bi, red_v, red_i);
        if (threadIdx.x == 0) {
            out_idx[(i64)row * k + round] = bi;
            out_val[(i64)row * k + round] = bi < 0 ? -INFINITY : bv;
        }
        if (bi < 0) {
            // Nothing left (block-uniform): fill the rest.
            for (int rest = round + 1 + threadIdx.x; rest < k; rest += SAMPLE_BLOCK) {
                out_idx[(i64)row * k + rest] = -1;
                out_val[(i64)row * k + rest] = -INFINITY;
            }
            break;
        }
        pv = bv;
        pi = bi;
    }
}
