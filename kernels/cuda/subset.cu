// The restricted output layer of a draft (FR-Spec): logits for a subset of the vocabulary and
// for each sequence's own context tokens, every other id -inf. The CPU engine's
// `Model::output_rows` / `extra_logits`, on the device.
#include "common.cuh"

#define SUBSET_BLOCK 256

// dst row i = the `row_bytes` bytes of row ids[i] of src (weight rows gathered into a small
// matrix of their own, in their stored type).
// Launch: block (256, 1, 1); grid (ceil(row_bytes / 256), n, 1).
extern "C" __global__ void __launch_bounds__(SUBSET_BLOCK)
    gather_bytes(const unsigned char* src, const int* ids, int n, int row_bytes,
                 unsigned char* dst) {
    const int b = blockIdx.x * SUBSET_BLOCK + threadIdx.x;
    const int i = blockIdx.y;
    if (b < row_bytes && i < n) {
        dst[(i64)i * row_bytes + b] = src[(i64)ids[i] * row_bytes + b];
    }
}

// Row r of out ([n][vocab]) = -inf, but out[r][sub_ids[j]] = sub[r][j] for the k subset ids and
// out[r][ext_ids[e]] = ext[r][e] for the extra columns e listed for that row
// (row_ext[row_ext_start[r] .. row_ext_start[r + 1]]). The ids are distinct: every element is
// written by one thread after the fill.
// Launch: block (256, 1, 1); grid (n, 1, 1).
extern "C" __global__ void __launch_bounds__(SUBSET_BLOCK)
    scatter_logits(float* out, int vocab, int n, const float* sub, const int* sub_ids, int k,
                   const float* ext, const int* ext_ids, int u, const int* row_ext_start,
                   const int* row_ext) {
    const int r = blockIdx.x;
    if (r >= n) {
        return;  // the whole block
    }
    float* o = out + (i64)r * vocab;
    for (int c = threadIdx.x; c < vocab; c += SUBSET_BLOCK) {
        o[c] = -INFINITY;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < k; j += SUBSET_BLOCK) {
        o[sub_ids[j]] = sub[(i64)r * k + j];
    }
    for (int e = row_ext_start[r] + threadIdx.x; e < row_ext_start[r + 1]; e += SUBSET_BLOCK) {
        const int col = row_ext[e];
        o[ext_ids[col]] = ext[(i64)r * u + col];
    }
}
