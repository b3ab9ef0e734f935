// The paged KV cache: storing new keys and values, and causal attention over them for a ragged
// batch.
#include "common.cuh"

#define KV_BLOCK 256

// Row i of k and v (kv_dim floats each) to row slots[i] of k_pool and v_pool (pools are rows of
// kv_dim floats; slot = block * block_size + offset).
// Launch: block (256, 1, 1); grid (ceil(kv_dim / 256), n, 1).
extern "C" __global__ void __launch_bounds__(KV_BLOCK)
    kv_store(const float* k, const float* v, float* k_pool, float* v_pool, const int* slots,
             int kv_dim, int n) {
    const int c = blockIdx.x * KV_BLOCK + threadIdx.x;
    const int i = blockIdx.y;
    if (c < kv_dim && i < n) {
        const i64 dst = (i64)slots[i] * kv_dim + c;
        const i64 src = (i64)i * kv_dim + c;
        k_pool[dst] = k[src];
        v_pool[dst] = v[src];
    }
}

#define ATT_THREADS 128
#define ATT_TILE 32    // keys per tile
#define ATT_MAX_D 256  // head_dim limit
#define ATT_MAX_G 8    // query heads per KV head limit
#define ATT_D_PER_THREAD (ATT_MAX_D / ATT_THREADS)

// Causal attention for a ragged batch over a paged cache. Query row r (q and out:
// [n_rows][n_heads][head_dim]) belongs to sequence s = seq_of_row[r] at position p = pos_of_row[r]
// and attends over that sequence's keys 0..=p; key j lives in pool row
// block_table[table_start[s] + j / block_size] * block_size + j % block_size of k_pool / v_pool
// (rows of n_kv_heads * head_dim floats). Grouped-query: query head h uses KV head
// h / (n_heads / n_kv_heads). score = dot(q, k) * scale. Limits: head_dim <= 256,
// n_heads / n_kv_heads <= 8.
//
// One block of 128 threads takes the query heads of one KV head for one row over a range of keys,
// in tiles of 32 with an online softmax (so any context length fits in fixed shared memory,
// about 42 KB static): the tile's keys go to shared memory; warp g % 4 scores head g (lane j:
// key j, dot over head_dim in order with fmaf), takes the tile maximum and the sum of e^(s - m)
// with the warp trees, and rescales its running sum; then thread d rescales its outputs o[g][d]
// and adds p_j * v_j[d] for the tile's keys in order. Every order is fixed and depends only on
// the row's own keys: deterministic and independent of the batch.
//
// Two ways to run it, whose results differ in rounding (use one of them for a model's life):
//   * attention_paged: one block per (row, KV head) over all the row's keys;
//   * attention_paged_split + attention_combine (split-K, for long contexts with few rows): the
//     keys of a row cut into splits of keys_per_split (a fixed number, e.g. 512: a row's splits
//     depend only on its own length), one block per (row, KV head, split) writing its
//     unnormalized outputs and (max, sum), then the splits merged in order. A row with a single
//     split gives bitwise attention_paged's result.

// The online softmax of the query heads of KV head kvh of row r over keys j_begin..j_end
// (j_begin < j_end). Leaves the unnormalized outputs in o (o[g][e]: head g, dimension
// tid + 128 e) and each head's running maximum and sum in ml_s[2 g], ml_s[2 g + 1] (shared), all
// threads past a barrier.
static __device__ __forceinline__ void attn_range(
    const float* q, const float* k_pool, const float* v_pool, const int* table, int r, int kvh,
    int j_begin, int j_end, int n_heads, int n_kv_heads, int head_dim, int block_size, float scale,
    float (&o)[ATT_MAX_G][ATT_D_PER_THREAD], float* ml_s) {
    __shared__ float q_s[ATT_MAX_G * ATT_MAX_D];
    __shared__ float k_s[ATT_TILE * (ATT_MAX_D + 1)];
    __shared__ float p_s[ATT_MAX_G * ATT_TILE];
    __shared__ float alpha_s[ATT_MAX_G];
    __shared__ int slot_s[ATT_TILE];

    const int tid = threadIdx.x;
    const int lane = tid % WARP_SIZE;
    const int warp = tid / WARP_SIZE;
    const int G = n_heads / n_kv_heads;
    const int D = head_dim;
    const int ld = D + 1;  // padded rows: lanes read different keys without bank conflicts
    const i64 kv_dim = (i64)n_kv_heads * D;

    const float* qr = q + ((i64)r * n_heads + (i64)kvh * G) * D;
    for (int i = tid; i < G * D; i += ATT_THREADS) {
        q_s[i] = qr[i];
    }
#pragma unroll
    for (int g = 0; g < ATT_MAX_G; ++g) {
#pragma unroll
        for (int e = 0; e < ATT_D_PER_THREAD; ++e) {
            o[g][e] = 0.0f;
        }
    }
    // Running maximum and sum of the heads this warp scores: g = warp, warp + 4.
    float m_run[ATT_MAX_G / 4];
    float l_run[ATT_MAX_G / 4];
#pragma unroll
    for (int gi = 0; gi < ATT_MAX_G / 4; ++gi) {
        m_run[gi] = -INFINITY;
        l_run[gi] = 0.0f;
    }

    for (int j0 = j_begin; j0 < j_end; j0 += ATT_TILE) {
        const int nk = imin(ATT_TILE, j_end - j0);
        if (tid < ATT_TILE) {
            const int j = j0 + tid;
            slot_s[tid] = tid < nk ? table[j / block_size] * block_size + j % block_size : 0;
        }
        __syncthreads();
        for (int i = tid; i < nk * D; i += ATT_THREADS) {
            const int j = i / D;
            const int d = i % D;
            k_s[j * ld + d] = k_pool[(i64)slot_s[j] * kv_dim + (i64)kvh * D + d];
        }
        __syncthreads();
#pragma unroll
        for (int gi = 0; gi < ATT_MAX_G / 4; ++gi) {
            const int g = warp + 4 * gi;
            if (g < G) {  // warp-uniform
                float sc = -INFINITY;
                if (lane < nk) {
                    float acc = 0.0f;
                    const float* qg = q_s + g * D;
                    const float* kj = k_s + lane * ld;
                    for (int d = 0; d < D; ++d) {
                        acc = fmaf(qg[d], kj[d], acc);
                    }
                    sc = acc * scale;
                }
                const float m_new = fmaxf(m_run[gi], warp_max(sc));
                const float p = lane < nk ? expf(sc - m_new) : 0.0f;
                const float tile_sum = warp_sum(p);
                const float alpha = expf(m_run[gi] - m_new);  // 0 on the first tile
                l_run[gi] = l_run[gi] * alpha + tile_sum;
                m_run[gi] = m_new;
                p_s[g * ATT_TILE + lane] = p;
                if (lane == 0) {
                    alpha_s[g] = alpha;
                }
            }
        }
        __syncthreads();
#pragma unroll
        for (int e = 0; e < ATT_D_PER_THREAD; ++e) {
            const int d = tid + e * ATT_THREADS;
            if (d < D) {
#pragma unroll
                for (int g = 0; g < ATT_MAX_G; ++g) {
                    if (g < G) {
                        o[g][e] *= alpha_s[g];
                    }
                }
                for (int j = 0; j < nk; ++j) {
                    const float vj = v_pool[(i64)slot_s[j] * kv_dim + (i64)kvh * D + d];
#pragma unroll
                    for (int g = 0; g < ATT_MAX_G; ++g) {
                        if (g < G) {
                            o[g][e] = fmaf(p_s[g * ATT_TILE + j], vj, o[g][e]);
                        }
                    }
                }
            }
        }
        __syncthreads();
    }
    // The maxima and sums live in the scoring warps; share them.
    if (lane == 0) {
#pragma unroll
        for (int gi = 0; gi < ATT_MAX_G / 4; ++gi) {
            const int g = warp + 4 * gi;
            if (g < G) {
                ml_s[2 * g] = m_run[gi];
                ml_s[2 * g + 1] = l_run[gi];
            }
        }
    }
    __syncthreads();
}

// Launch: block (128, 1, 1); grid (n_rows, n_kv_heads, 1); no dynamic shared memory.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attention_paged(const float* q, const float* k_pool, const float* v_pool,
                    const int* block_table, const int* seq_of_row, const int* pos_of_row,
                    const int* table_start, float* out, int n_rows, int n_heads, int n_kv_heads,
                    int head_dim, int block_size, float scale) {
    __shared__ float ml_s[2 * ATT_MAX_G];
    const int r = blockIdx.x;
    const int kvh = blockIdx.y;
    if (r >= n_rows || kvh >= n_kv_heads) {
        return;  // the whole block
    }
    const int G = n_heads / n_kv_heads;
    const int D = head_dim;
    const int* table = block_table + table_start[seq_of_row[r]];
    float o[ATT_MAX_G][ATT_D_PER_THREAD];
    attn_range(q, k_pool, v_pool, table, r, kvh, 0, pos_of_row[r] + 1, n_heads, n_kv_heads,
               head_dim, block_size, scale, o, ml_s);
    float* orow = out + ((i64)r * n_heads + (i64)kvh * G) * D;
#pragma unroll
    for (int e = 0; e < ATT_D_PER_THREAD; ++e) {
        const int d = threadIdx.x + e * ATT_THREADS;
        if (d < D) {
#pragma unroll
            for (int g = 0; g < ATT_MAX_G; ++g) {
                if (g < G) {
                    orow[g * D + d] = o[g][e] / ml_s[2 * g + 1];
                }
            }
        }
    }
}

// Split-K, first pass: block (r, kvh, z) takes keys z * keys_per_split .. of row r (nothing when
// the row has fewer keys) and writes, for each of its query heads h, the unnormalized outputs to
// part_o[((r * n_heads + h) * gridDim.z + z) * head_dim + d] and (max, sum) to
// part_ml[((r * n_heads + h) * gridDim.z + z) * 2 + {0, 1}].
// Launch: block (128, 1, 1); grid (n_rows, n_kv_heads, ceil(longest row's keys / keys_per_split)).
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attention_paged_split(const float* q, const float* k_pool, const float* v_pool,
                          const int* block_table, const int* seq_of_row, const int* pos_of_row,
                          const int* table_start, float* part_o, float* part_ml, int n_rows,
                          int n_heads, int n_kv_heads, int head_dim, int block_size, float scale,
                          int keys_per_split) {
    __shared__ float ml_s[2 * ATT_MAX_G];
    const int r = blockIdx.x;
    const int kvh = blockIdx.y;
    const int z = blockIdx.z;
    if (r >= n_rows || kvh >= n_kv_heads) {
        return;  // the whole block
    }
    const int n_keys = pos_of_row[r] + 1;
    const i64 j_begin = (i64)z * keys_per_split;
    if (j_begin >= n_keys) {
        return;  // the whole block: this row has fewer splits
    }
    const int j_end = (int)(j_begin + keys_per_split < n_keys ? j_begin + keys_per_split : n_keys);
    const int G = n_heads / n_kv_heads;
    const int D = head_dim;
    const int* table = block_table + table_start[seq_of_row[r]];
    float o[ATT_MAX_G][ATT_D_PER_THREAD];
    attn_range(q, k_pool, v_pool, table, r, kvh, (int)j_begin, j_end, n_heads, n_kv_heads,
               head_dim, block_size, scale, o, ml_s);
    const i64 splits = gridDim.z;
#pragma unroll
    for (int g = 0; g < ATT_MAX_G; ++g) {
        if (g < G) {
            const i64 at = ((i64)r * n_heads + (i64)kvh * G + g) * splits + z;
#pragma unroll
            for (int e = 0; e < ATT_D_PER_THREAD; ++e) {
                const int d = threadIdx.x + e * ATT_THREADS;
                if (d < D) {
                    part_o[at * D + d] = o[g][e];
                }
            }
            if (threadIdx.x == 0) {
                part_ml[at * 2] = ml_s[2 * g];
                part_ml[at * 2 + 1] = ml_s[2 * g + 1];
            }
        }
    }
}

// Split-K, second pass: out[r][h][d] = sum_z part_o[z][d] e^(m_z - M) / sum_z l_z e^(m_z - M),
// M = max_z m_z, over the row's ceil((pos_of_row[r] + 1) / keys_per_split) splits in order.
// `splits` is the first pass's gridDim.z.
// Launch: block (128, 1, 1); grid (n_rows, n_heads, 1).
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attention_combine(const float* part_o, const float* part_ml, const int* pos_of_row, float* out,
                      int n_rows, int n_heads, int head_dim, int keys_per_split, int splits) {
    const int r = blockIdx.x;
    const int h = blockIdx.y;
    if (r >= n_rows || h >= n_heads) {
        return;  // the whole block
    }
    const int n_split = (pos_of_row[r] + keys_per_split) / keys_per_split;
    const i64 base = ((i64)r * n_heads + h) * splits;
    float m = -INFINITY;
    for (int z = 0; z < n_split; ++z) {
        m = fmaxf(m, part_ml[(base + z) * 2]);
    }
    // Starting from the first split's terms (not from 0), so that one split gives exactly
    // o * 1 / (l * 1): attention_paged's bits.
    float l = part_ml[base * 2 + 1] * expf(part_ml[base * 2] - m);
    for (int z = 1; z < n_split; ++z) {
        l += part_ml[(base + z) * 2 + 1] * expf(part_ml[(base + z) * 2] - m);
    }
    for (int d = threadIdx.x; d < head_dim; d += ATT_THREADS) {
        float acc = part_o[base * head_dim + d] * expf(part_ml[base * 2] - m);
        for (int z = 1; z < n_split; ++z) {
            acc += part_o[(base + z) * head_dim + d] * expf(part_ml[(base + z) * 2] - m);
        }
        out[((i64)r * n_heads + h) * head_dim + d] = acc / l;
    }
}
