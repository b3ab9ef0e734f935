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
// Values each thread of a `topk_rows` block holds in registers: a block takes a segment of
// 256 x 16 = 4096 values.
#define TOPK_PER_THREAD 16
#define TOPK_SEG (SAMPLE_BLOCK * TOPK_PER_THREAD)

// The k (<= 64) largest values of each segment of each row, in descending order, ties by lowest
// id, NaN never taken; past the segment's values, id -1 and -inf. Row r's values are
// vals[r * len .. (r + 1) * len]; their ids are their columns (ids null, and then only those with
// valid[id] != 0 when valid is not null) or ids[r * len + c] (ids < 0 are not values).
// Segment s of row r writes out_idx / out_val[(r * segs + s) * k + rank], segs = gridDim.y.
//
// The order is a total order, so the k best of a row are the k best of its segments' k best:
// a second launch over those (ids given, len = segs * k) continues until one segment is left, and
// the result is the same whatever the segmentation. Each thread keeps its values in registers;
// k rounds, each a block-wide best among the values after the previous pick.
// Launch: block (256, 1, 1); grid (n, ceil(len / 4096), 1).
extern "C" __global__ void __launch_bounds__(SAMPLE_BLOCK)
    topk_rows(const float* vals, const int* ids, const unsigned char* valid, int len, int n, int k,
              int* out_idx, float* out_val) {
    __shared__ float red_v[SAMPLE_BLOCK / WARP_SIZE];
    __shared__ int red_i[SAMPLE_BLOCK / WARP_SIZE];
    const int row = blockIdx.x;
    if (row >= n) {
        return;  // the whole block
    }
    const i64 base = (i64)row * len;
    float v[TOPK_PER_THREAD];
    int id[TOPK_PER_THREAD];
#pragma unroll
    for (int j = 0; j < TOPK_PER_THREAD; ++j) {
        const int c = blockIdx.y * TOPK_SEG + j * SAMPLE_BLOCK + threadIdx.x;
        v[j] = -INFINITY;
        id[j] = -1;  // no value (sel_better never takes it)
        if (c < len) {
            const int i = ids == nullptr ? c : ids[base + c];
            if (i >= 0 && (valid == nullptr || valid[i] != 0)) {
                v[j] = vals[base + c];
                id[j] = i;
            }
        }
    }
    int* oi = out_idx + ((i64)row * gridDim.y + blockIdx.y) * k;
    float* ov = out_val + ((i64)row * gridDim.y + blockIdx.y) * k;
    float pv = INFINITY;
    int pi = -1;  // the previous pick; -1: none (everything comes after it)
    for (int round = 0; round < k && round < TOPK_MAX; ++round) {
        float bv = -INFINITY;
        int bi = -1;
#pragma unroll
        for (int j = 0; j < TOPK_PER_THREAD; ++j) {
            const bool after = pi < 0 || v[j] < pv || (v[j] == pv && id[j] > pi);
            if (after && sel_better(v[j], id[j], bv, bi)) {
                bv = v[j];
                bi = id[j];
            }
        }
        block_best(bv, bi, red_v, red_i);
        if (threadIdx.x == 0) {
            oi[round] = bi;
            ov[round] = bi < 0 ? -INFINITY : bv;
        }
        if (bi < 0) {
            // Nothing left (block-uniform): fill the rest.
            for (int rest = round + 1 + threadIdx.x; rest < k; rest += SAMPLE_BLOCK) {
                oi[rest] = -1;
                ov[rest] = -INFINITY;
            }
            break;
        }
        pv = bv;
        pi = bi;
    }
}
