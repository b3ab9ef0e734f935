// Quantized matrix times 8-bit activations on the tensor cores (prompt rows, prefill-sized
// batches): y[t * rows + r] = W[r] . x[t], same operands and output as mmq_<type>.
//
// Launch: block (128, 1, 1); grid (ceil(rows / 64), ceil(ntok / 32), 1); no dynamic shared
// memory. Needs sm_75 (mma.sync on 8-bit integers: common.cuh's mma_s8_16816); the host launches
// these kernels only on such devices (and on the host shim).
//
// Block (i, j) computes rows 64 i .. 64 i + 63 for tokens 32 j .. 32 j + 31. Per step of 256
// values along K, the block unpacks its 64 rows' quants to 8-bit integers in shared memory (with
// each sub-block's float scale and minimum), and its 32 tokens' activations (with each 32-value
// block's scale and exact integer sum); then warp w multiplies rows 16 w .. 16 w + 15 by the 32
// tokens: per sub-block (32 values, 16 for Q6_K) one exact integer sum per (row, token) from
// mma_s8_16816, turned into that sub-block's float contribution and added to the output's
// accumulator.
//
// The order of operations, per output (row, token): the sub-blocks' contributions
//     c = d8 * ((float)isum * Ds + (float)asum * Ms)
// (d8: the activation block's scale, asum its integer sum; Ds, Ms: the weight sub-block's scale
// and minimum as floats) added one after the other in K order, starting from 0. That depends on
// the row and the token alone, never on the tile, the launch or ntok, so a row is bitwise the same
// in any batch. It is not mmvq_<type>'s order (which sums per 8-value part across 128 lanes):
// the model routes rows by what they are (prompt positions here, generated ones through MMVQ /
// MMQ), never by how many share a batch, so that exact speculation still equals target-only.
#include "common.cuh"

#define MMA_ROWS 64
#define MMA_TOKENS 32
#define MMA_STEP 256                 // values of K per staging step
#define MMA_STRIDE (MMA_STEP / 4 + 4)  // ints per staged row: 4 of padding keep fragment loads
                                       // free of bank conflicts (8 rows x 4 ints hit 32 banks)

// Unpacked weights, per type: the 16 values of chunk c (values 16 c .. 16 c + 15 of the row)
// as 8-bit integers, four per int in value order, and sub-block s's float scale and minimum.
// A value of the row is Ds * q + Ms (before its activation), q the unpacked integer.

// A 32-value type whose blocks carry one f16 scale `d` and no minimum.
template <class B>
struct ScaleD {
    typedef B block;
    enum { QK = 32, SUB = 32 };
    static __device__ __forceinline__ float2 scale(const block* row, int s) {
        return make_float2(__half2float(row[s].d), 0.0f);
    }
};

struct MQ4_0 : ScaleD<block_q4_0> {
    static __device__ __forceinline__ void quants16(const block* row, int c, int (&q)[4]) {
        const block* b = row + c / 2;
        const int shift = 4 * (c % 2);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            q[k] = __vsubss4((get_int_b2(b->qs, k) >> shift) & 0x0F0F0F0F, 0x08080808);
        }
    }
};

struct MQ4_1 {
    typedef block_q4_1 block;
    enum { QK = 32, SUB = 32 };
    static __device__ __forceinline__ void quants16(const block* row, int c, int (&q)[4]) {
        const block* b = row + c / 2;
        const int shift = 4 * (c % 2);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            q[k] = (get_int_b4(b->qs, k) >> shift) & 0x0F0F0F0F;
        }
    }
    static __device__ __forceinline__ float2 scale(const block* row, int s) {
        return __half22float2(row[s].dm);
    }
};

struct MQ5_0 : ScaleD<block_q5_0> {
    static __device__ __forceinline__ void quants16(const block* row, int c, int (&q)[4]) {
        const block* b = row + c / 2;
        const int half = c % 2;
        const u32 qh = (u32)get_int_b2(b->qh, 0) >> (16 * half);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int lo = (get_int_b2(b->qs, k) >> (4 * half)) & 0x0F0F0F0F;
            const int h = (int)(qh >> (4 * k));
            const int hi = ((h << 4) & 0x00000010) | ((h << 11) & 0x00001000) |
                           ((h << 18) & 0x00100000) | ((h << 25) & 0x10000000);
            q[k] = __vsubss4(lo | hi, 0x10101010);
        }
    }
};

struct MQ8_0 : ScaleD<block_q8_0> {
    static __device__ __forceinline__ void quants16(const block* row, int c, int (&q)[4]) {
        const block* b = row + c / 2;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            q[k] = get_int_b2(b->qs, 4 * (c % 2) + k);
        }
    }
};

struct MQ4_K {
    typedef block_q4_K block;
    enum { QK = 256, SUB = 32 };
    // Values 64 j .. 64 j + 31 are the low nibbles of qs[32 j ..], the next 32 the high ones.
    static __device__ __forceinline__ void quants16(const block* row, int c, int (&q)[4]) {
        const block* b = row + c / 16;
        const int v = 16 * (c % 16);
        const u8* base = b->qs + 32 * (v / 64) + v % 32;
        const int shift = 4 * ((v % 64) / 32);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            q[k] = (get_int_b4(base, k) >> shift) & 0x0F0F0F0F;
        }
    }
    // ggml's get_scale_min_k4: 6-bit scales and minimums of the 8 sub-blocks.
    static __device__ __forceinline__ float2 scale(const block* row, int s) {
        const block* b = row + s / 8;
        const int j = s % 8;
        const u8* sc = b->scales;
        int d, m;
        if (j < 4) {
            d = sc[j] & 63;
            m = sc[j + 4] & 63;
        } else {
            d = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4);
            m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
        }
        const float2 dm = __half22float2(b->dm);
        return make_float2(dm.x * (float)d, -(dm.y * (float)m));
    }
};

struct MQ6_K {
    typedef block_q6_K block;
    enum { QK = 256, SUB = 16 };
    // Value v = 128 n + 32 qq + l: low bits in nibble qq / 2 of ql[64 n + 32 (qq % 2) + l], high
    // bits 2 qq.. of qh[32 n + l]; sub-block v / 16 has scale scales[v / 16].
    static __device__ __forceinline__ void quants16(const block* row, int c, int (&q)[4]) {
        const block* b = row + c / 16;
        const int s = c % 16;
        const int n = s / 8, qq = (s % 8) / 2, l0 = 16 * (s % 2);
        const u8* ql = b->ql + 64 * n + 32 * (qq % 2) + l0;
        const u8* qh = b->qh + 32 * n + l0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int lo = (get_int_b2(ql, k) >> (4 * (qq / 2))) & 0x0F0F0F0F;
            const int hi = (((u32)get_int_b2(qh, k) >> (2 * qq)) & 0x03030303) << 4;
            q[k] = __vsubss4(lo | hi, 0x20202020);
        }
    }
    static __device__ __forceinline__ float2 scale(const block* row, int s) {
        const block* b = row + s / 16;
        return make_float2(__half2float(b->d) * (float)b->scales[s % 16], 0.0f);
    }
};

// The block's shared tiles for one step of K.
struct MmaTiles {
    int wq[MMA_ROWS * MMA_STRIDE];
    int xq[MMA_TOKENS * MMA_STRIDE];
    float2 wsc[MMA_ROWS * (MMA_STEP / 16)];  // (Ds, Ms) per row and sub-block
    float xd[MMA_TOKENS * (MMA_STEP / 32)];  // activation block scales
    float xs[MMA_TOKENS * (MMA_STEP / 32)];  // activation block sums (exact integers)
};

// Stages step `ks` (values 256 ks ..) of rows r0.. and tokens t0..; rows, tokens and blocks past
// the ends are zeros. `nsub`: sub-blocks of this step (fewer at the end of a 32-value type's row).
template <class T>
static __device__ __forceinline__ void mma_stage(MmaTiles& s, const typename T::block* w0,
                                                 const block_q8_1* x0, int ks, int nr, int nt,
                                                 int nb, int xblocks, int nsub) {
    const int nchunks = nsub * T::SUB / 16;
    for (int i = threadIdx.x; i < MMA_ROWS * (MMA_STEP / 16); i += MV_LANES) {
        const int r = i / (MMA_STEP / 16);
        const int c = i % (MMA_STEP / 16);
        int q[4] = {0, 0, 0, 0};
        if (r < nr && c < nchunks) {
            T::quants16(w0 + (i64)r * nb, ks * (MMA_STEP / 16) + c, q);
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            s.wq[r * MMA_STRIDE + 4 * c + k] = q[k];
        }
    }
    const int subs = MMA_STEP / T::SUB;
    for (int i = threadIdx.x; i < MMA_ROWS * subs; i += MV_LANES) {
        const int r = i / subs;
        const int j = i % subs;
        s.wsc[r * (MMA_STEP / 16) + j] = r < nr && j < nsub
                                             ? T::scale(w0 + (i64)r * nb, ks * subs + j)
                                             : make_float2(0.0f, 0.0f);
    }
    const int nab = (nsub * T::SUB + 31) / 32;  // activation blocks of this step
    for (int i = threadIdx.x; i < MMA_TOKENS * (MMA_STEP / 32); i += MV_LANES) {
        const int t = i / (MMA_STEP / 32);
        const int b = i % (MMA_STEP / 32);
        int sum = 0;
        float d = 0.0f;
        if (t < nt && b < nab) {
            const block_q8_1* xb = x0 + (i64)t * xblocks + ks * (MMA_STEP / 32) + b;
            d = __low2float(xb->ds);
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const int v = get_int_b4(xb->qs, k);
                s.xq[t * MMA_STRIDE + 8 * b + k] = v;
                sum = __dp4a(v, 0x01010101, sum);
            }
        } else {
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                s.xq[t * MMA_STRIDE + 8 * b + k] = 0;
            }
        }
        s.xd[t * (MMA_STEP / 32) + b] = d;
        s.xs[t * (MMA_STEP / 32) + b] = (float)sum;
    }
}

// Warp w's products of one staged step: rows 16 w .., all 32 tokens, `nsub` sub-blocks, added to
// acc[n-tile][fragment element] (the accumulator layout of mma_s8_16816).
template <class T>
static __device__ __forceinline__ void mma_step(const MmaTiles& s, float (&acc)[4][4], int nsub) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int g = lane / 4, t = lane % 4;
    const int* wa = s.wq + (16 * warp + g) * MMA_STRIDE + t;
    for (int j = 0; j < nsub; ++j) {
        int sums[4][4];
#pragma unroll
        for (int n = 0; n < 4; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                sums[n][e] = 0;
            }
        }
#pragma unroll
        for (int h = 0; h < T::SUB / 16; ++h) {
            const int k = (j * T::SUB + 16 * h) / 4;
            const int a0 = wa[k];
            const int a1 = wa[8 * MMA_STRIDE + k];
#pragma unroll
            for (int n = 0; n < 4; ++n) {
                mma_s8_16816(sums[n], a0, a1, s.xq[(8 * n + g) * MMA_STRIDE + t + k]);
            }
        }
        const int ab = j * T::SUB / 32;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float2 sc = s.wsc[(16 * warp + g + 8 * (e / 2)) * (MMA_STEP / 16) + j];
#pragma unroll
            for (int n = 0; n < 4; ++n) {
                const int tok = 8 * n + 2 * t + e % 2;
                const float c = s.xd[tok * (MMA_STEP / 32) + ab] *
                                ((float)sums[n][e] * sc.x + s.xs[tok * (MMA_STEP / 32) + ab] * sc.y);
                acc[n][e] += c;
            }
        }
    }
}

template <class T>
static __device__ __forceinline__ void mmq_mma_impl(const void* w, const void* xq, float* y,
                                                    int rows, int cols, int ntok) {
    __shared__ MmaTiles tiles;
    const int r0 = blockIdx.x * MMA_ROWS;
    const int t0 = blockIdx.y * MMA_TOKENS;
    if (r0 >= rows || t0 >= ntok) {
        return;  // the whole block
    }
    const int nr = imin(MMA_ROWS, rows - r0);
    const int nt = imin(MMA_TOKENS, ntok - t0);
    const int nb = cols / T::QK;
    const int xblocks = cols / QK8_1;
    const typename T::block* w0 = (const typename T::block*)w + (i64)r0 * nb;
    const block_q8_1* x0 = (const block_q8_1*)xq + (i64)t0 * xblocks;
    float acc[4][4];
#pragma unroll
    for (int n = 0; n < 4; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            acc[n][e] = 0.0f;
        }
    }
    const int steps = (cols + MMA_STEP - 1) / MMA_STEP;
    for (int ks = 0; ks < steps; ++ks) {
        const int nsub = imin(MMA_STEP, cols - ks * MMA_STEP) / T::SUB;
        mma_stage<T>(tiles, w0, x0, ks, nr, nt, nb, xblocks, nsub);
        __syncthreads();
        mma_step<T>(tiles, acc, nsub);
        __syncthreads();
    }
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const int r = 16 * warp + lane / 4 + 8 * (e / 2);
#pragma unroll
        for (int n = 0; n < 4; ++n) {
            const int tok = 8 * n + 2 * (lane % 4) + e % 2;
            if (r < nr && tok < nt) {
                y[(i64)(t0 + tok) * rows + r0 + r] = acc[n][e];
            }
        }
    }
}

#define MMQ_MMA_KERNEL(name, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(MV_LANES)                                      \
        name(const void* w, const void* xq, float* y, int rows, int cols, int ntok) {            \
        mmq_mma_impl<T>(w, xq, y, rows, cols, ntok);                                             \
    }

MMQ_MMA_KERNEL(mmq_mma_q4_0, MQ4_0)
MMQ_MMA_KERNEL(mmq_mma_q4_1, MQ4_1)
MMQ_MMA_KERNEL(mmq_mma_q5_0, MQ5_0)
MMQ_MMA_KERNEL(mmq_mma_q8_0, MQ8_0)
MMQ_MMA_KERNEL(mmq_mma_q4_k, MQ4_K)
MMQ_MMA_KERNEL(mmq_mma_q6_k, MQ6_K)

// A check of mma_s8_16816's fragment layout, on the shim and on a GPU alike (one warp):
// d = c + a b for a 16 x 16 (row major), b 16 x 8 (k major: b[k * 8 + n]), c and d 16 x 8 (row
// major), every fragment built byte by byte from the layout common.cuh states.
extern "C" __global__ void __launch_bounds__(WARP_SIZE)
    mma_probe(const i8* a, const i8* b, const int* c, int* d) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int g = lane / 4, t = lane % 4;
    int a0 = 0, a1 = 0, bf = 0;
    for (int k = 0; k < 4; ++k) {
        a0 |= (int)((u32)(u8)a[g * 16 + 4 * t + k] << (8 * k));
        a1 |= (int)((u32)(u8)a[(g + 8) * 16 + 4 * t + k] << (8 * k));
        bf |= (int)((u32)(u8)b[(4 * t + k) * 8 + g] << (8 * k));
    }
    int acc[4];
    for (int e = 0; e < 4; ++e) {
        acc[e] = c[(g + 8 * (e / 2)) * 8 + 2 * t + e % 2];
    }
    mma_s8_16816(acc, a0, a1, bf);
    for (int e = 0; e < 4; ++e) {
        d[(g + 8 * (e / 2)) * 8 + 2 * t + e % 2] = acc[e];
    }
}
