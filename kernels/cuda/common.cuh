// cascade CUDA kernels: common definitions.
//
// Compiled two ways from the same text:
//   * by NVRTC (cascade-gpu's nvrtc.rs), all sources in one program, with --fmad=false so that no
//     multiply-add is contracted behind our back (explicit fmaf where we want one): every float
//     operation is the IEEE one the source spells, in the order it spells;
//   * by a C++20 compiler for the host shim (gpu/shim/), which defines the CUDA dialect
//     (threadIdx, __syncthreads, warp shuffles, __dp4a, __half) before including these files.
//
// Rules every kernel keeps (DESIGN.md, invariant 1):
//   * fixed reduction orders: warp xor-shuffle trees and fixed sequences over warps, no atomics;
//   * a row's result never depends on how many rows (tokens, sequences) share the launch;
//   * only threadIdx/blockIdx/blockDim/gridDim, __syncthreads, __shfl_*_sync with the full mask
//     and every lane of the warp present, __dp4a, __vsubss4, __half conversions, fixed-size
//     __shared__ arrays. No early return before a barrier unless the whole block returns.
#pragma once

#if defined(__CUDACC_RTC__)
#include <cuda_fp16.h>
#endif

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

typedef signed char i8;
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu

// ---- GGML block formats (ggml-common.h), packed little endian as in GGUF files --------------

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK8_0 32
#define QK8_1 32
#define QK_K 256

struct block_q4_0 {
    __half d;    // scale
    u8 qs[16];   // nibbles: value j in low nibble of qs[j], value j+16 in the high one
};               // 18 bytes

struct block_q4_1 {
    __half2 dm;  // scale, minimum
    u8 qs[16];
};               // 20 bytes

struct block_q5_0 {
    __half d;
    u8 qh[4];    // fifth bit of each value
    u8 qs[16];
};               // 22 bytes

struct block_q8_0 {
    __half d;
    i8 qs[32];
};               // 34 bytes

struct block_q4_K {
    __half2 dm;      // super-block scale for the scales, for the minimums
    u8 scales[12];   // 8 scales and 8 minimums of 6 bits
    u8 qs[128];
};                   // 144 bytes

struct block_q6_K {
    u8 ql[128];      // low 4 bits
    u8 qh[64];       // high 2 bits
    i8 scales[16];   // 8-bit sub-block scales
    __half d;
};                   // 210 bytes

// Activations quantized to 8 bits (ggml's block_q8_1): ds = (d, d * sum(qs)), the sum taken over
// the 32 integer quants (exact), so ds.y is the block's value sum as the integer path sees it.
struct block_q8_1 {
    __half2 ds;
    i8 qs[32];
};               // 36 bytes

static_assert(sizeof(block_q4_0) == 18, "block_q4_0 layout");
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 layout");
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 layout");
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 layout");
static_assert(sizeof(block_q4_K) == 144, "block_q4_K layout");
static_assert(sizeof(block_q6_K) == 210, "block_q6_K layout");
static_assert(sizeof(block_q8_1) == 36, "block_q8_1 layout");

// Alignment the kernels need of a weight matrix's first byte (rows follow at whole blocks):
// 4 bytes for Q4_1 and Q4_K (32-bit loads of their quants), 2 for the other block types (16-bit
// loads); of the q8_1 activations: 4 bytes.

// ---- small helpers ----------------------------------------------------------------------------

static __device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
static __device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

// The i-th 32-bit word of 2-byte aligned data (two 16-bit loads).
static __device__ __forceinline__ int get_int_b2(const void* x, int i) {
    const u16* x16 = (const u16*)x;
    return (int)((u32)x16[2 * i] | ((u32)x16[2 * i + 1] << 16));
}

// The i-th 32-bit word of 4-byte aligned data.
static __device__ __forceinline__ int get_int_b4(const void* x, int i) {
    return ((const int*)x)[i];
}

static __device__ __forceinline__ float bf16_to_float(u16 b) {
    return __uint_as_float((u32)b << 16);
}

// Sum over the 32 lanes of a warp: an xor butterfly, so every lane ends with the same bits
// (float addition is commutative) and the order is fixed: offsets 16, 8, 4, 2, 1.
static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        v += __shfl_xor_sync(FULL_MASK, v, off);
    }
    return v;
}

static __device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, off));
    }
    return v;
}

// ---- tensor cores -----------------------------------------------------------------------------
//
// d += A (16 x 16, 8-bit signed, row major) times B (16 x 8, 8-bit signed, column major), exact
// 32-bit integer sums: one warp's mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 (sm_80 on;
// two m8n8k16 on sm_75).
// Fragments, per lane (g = lane / 4, t = lane % 4; four 8-bit values per int, in k order), as the
// PTX ISA lays them out:
//   a0 = A[g][4 t .. 4 t + 3], a1 = A[g + 8][4 t .. 4 t + 3], b = B[4 t .. 4 t + 3][g],
//   d[0], d[1] = D[g][2 t], D[g][2 t + 1]; d[2], d[3] = D[g + 8][2 t], D[g + 8][2 t + 1].
// Every lane of the warp must call it together. The host shim defines it (cuda_shim.hpp) by the
// same layout.
#if defined(__CUDACC_RTC__)
static __device__ __forceinline__ void mma_s8_16816(int (&d)[4], int a0, int a1, int b) {
#if __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5}, {%6}, "
        "{%0, %1, %2, %3};"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(b));
#elif __CUDA_ARCH__ >= 750
    // Turing (T4): two m8n8k16, rows 0..7 then 8..15, whose fragments are the halves of the
    // m16n8k16 ones; integer sums, so the same results bit for bit.
    asm("mma.sync.aligned.m8n8k16.row.col.s32.s8.s8.s32 {%0, %1}, {%2}, {%3}, {%0, %1};"
        : "+r"(d[0]), "+r"(d[1])
        : "r"(a0), "r"(b));
    asm("mma.sync.aligned.m8n8k16.row.col.s32.s8.s8.s32 {%0, %1}, {%2}, {%3}, {%0, %1};"
        : "+r"(d[2]), "+r"(d[3])
        : "r"(a1), "r"(b));
#else
    __trap();  // never launched below sm_75
#endif
}
#endif

// ---- the canonical row reduction of the matrix-vector kernels ---------------------------------
//
// mmvq_*, mmq_* and mv_* give every output (row, token) the same order of operations:
//   1. 128 K-lanes: lane l (0..127) adds, in order, the contributions of the parts
//      p = l, l + 128, l + 256, ... of the row (a part is one lane's share of one weight block,
//      or one element for the float kernels);
//   2. warp_sum over the 32 lanes of each warp;
//   3. ((w0 + w1) + w2) + w3 over the four warps.
// So a (row, token) result is bitwise the same whichever kernel computes it and however many
// tokens share the launch.
#define MV_LANES 128
#define MV_WARPS 4

// Step 2 for the first `n` of the N values each thread holds (n block-uniform): each warp's
// sums land in red[warp * N + i] (`red`: shared, MV_WARPS * N floats), then a barrier.
template <int N>
static __device__ __forceinline__ void mv_reduce(const float (&acc)[N], int n, float* red) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
#pragma unroll
    for (int i = 0; i < N; ++i) {
        if (i < n) {
            const float s = warp_sum(acc[i]);
            if (lane == 0) {
                red[warp * N + i] = s;
            }
        }
    }
    __syncthreads();
}

// Step 3 for value i after mv_reduce.
static __device__ __forceinline__ float mv_combine(const float* red, int n_per_warp, int i) {
    return ((red[i] + red[n_per_warp + i]) + red[2 * n_per_warp + i]) + red[3 * n_per_warp + i];
}
