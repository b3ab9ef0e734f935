// Embedding gather: out[i][c] = dequantize(table row ids[i])[c], bitwise cascade-kernels'
// quant::dequantize (the same float operations per value).
// Launch: block (256, 1, 1); grid (ceil(cols / 256), n, 1).
#include "common.cuh"

#define GET_ROWS_BLOCK 256

struct GF32 {
    static __device__ __forceinline__ i64 row_bytes(int cols) { return (i64)cols * 4; }
    static __device__ __forceinline__ float get(const u8* row, int c) { return ((const float*)row)[c]; }
};

struct GF16 {
    static __device__ __forceinline__ i64 row_bytes(int cols) { return (i64)cols * 2; }
    static __device__ __forceinline__ float get(const u8* row, int c) {
        return __half2float(((const __half*)row)[c]);
    }
};

struct GBF16 {
    static __device__ __forceinline__ i64 row_bytes(int cols) { return (i64)cols * 2; }
    static __device__ __forceinline__ float get(const u8* row, int c) {
        return bf16_to_float(((const u16*)row)[c]);
    }
};

struct GQ4_0 {
    static __device__ __forceinline__ i64 row_bytes(int cols) { return (i64)(cols / 32) * sizeof(block_q4_0); }
    static __device__ __forceinline__ float get(const u8* row, int c) {
        const block_q4_0* b = (const block_q4_0*)row + c / 32;
        const int j = c % 32;
        const int q = j < 16 ? (b->qs[j] & 0x0f) : (b->qs[j - 16] >> 4);
        return (float)(q - 8) * __half2float(b->d);
    }
};

struct GQ4_1 {
    static __device__ __forceinline__ i64 row_bytes(int cols) { return (i64)(cols / 32) * sizeof(block_q4_1); }
    static __device__ __forceinline__ float get(const u8* row, int c) {
        const block_q4_1* b = (const block_q4_1*)row + c / 32;
        const int j = c % 32;
        const int q = j < 16 ? (b->qs[j] & 0x0f) : (b->qs[j - 16] >> 4);
        return (float)q * __low2float(b->dm) + __high2float(b->dm);
    }
};

struct GQ5_0 {
    static __device__ __forceinline__ i64 row_bytes(int cols) { return (i64)(cols / 32) * sizeof(block_q5_0); }
    static __device__ __forceinline__ float get(const u8* row, int c) {
        const block_q5_0* b = (const block_q5_0*)row + c / 32;
        const int j = c % 32;
        const u32 qh = (u32)b->qh[0] | ((u32)b->qh[1] << 8) | ((u32)b->qh[2] << 16) | ((u32)b->qh[3] << 24);
        const int lo = j < 16 ? (b->qs[j] & 0x0f) : (b->qs[j - 16] >> 4);
        const int hi = (int)((qh >> j) & 1u) << 4;
        return (float)((lo | hi) - 16) * __half2float(b->d);
    }
};

struct GQ8_0 {
    static __device__ __forceinline__ i64 row_bytes(int cols) { return (i64)(cols / 32) * sizeof(block_q8_0); }
    static __device__ __forceinline__ float get(const u8* row, int c) {
        const block_q8_0* b = (const block_q8_0*)row + c / 32;
        return (float)b->qs[c % 32] * __half2float(b->d);
    }
};

struct GQ4_K {
    static __device__ __forceinline__ i64 row_bytes(int cols) { return (i64)(cols / QK_K) * sizeof(block_q4_K); }
    static __device__ __forceinline__ float get(const u8* row, int c) {
        const block_q4_K* b = (const block_q4_K*)row + c / QK_K;
        const int k = c % QK_K;
        const int j = k / 64;
        const int l = k % 64;
        const int sub = 2 * j + (l >= 32 ? 1 : 0);
        const u8* q = b->scales;
        int sc, m;
        if (sub < 4) {
            sc = q[sub] & 63;
            m = q[sub + 4] & 63;
        } else {
            sc = (q[sub + 4] & 0x0f) | ((q[sub - 4] >> 6) << 4);
            m = (q[sub + 4] >> 4) | ((q[sub] >> 6) << 4);
        }
        const float d1 = __low2float(b->dm) * (float)sc;
        const float m1 = __high2float(b->dm) * (float)m;
        const int v = l < 32 ? (b->qs[32 * j + l] & 0x0f) : (b->qs[32 * j + l - 32] >> 4);
        return d1 * (float)v - m1;
    }
};

struct GQ6_K {
    static __device__ __forceinline__ i64 row_bytes(int cols) { return (i64)(cols / QK_K) * sizeof(block_q6_K); }
    static __device__ __forceinline__ float get(const u8* row, int c) {
        const block_q6_K* b = (const block_q6_K*)row + c / QK_K;
        const int k = c % QK_K;
        const int n = k / 128;
        const int r = k % 128;
        const int l = r % 32;
        const int quarter = r / 32;
        const u8* ql = b->ql + 64 * n;
        const u8* qh = b->qh + 32 * n;
        const i8* sc = b->scales + 8 * n;
        const int is = l / 16;
        int q;
        switch (quarter) {
            case 0: q = (ql[l] & 0x0f) | ((qh[l] & 3) << 4); break;
            case 1: q = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4); break;
            case 2: q = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4); break;
            default: q = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4); break;
        }
        return __half2float(b->d) * (float)sc[is + 2 * quarter] * (float)(q - 32);
    }
};

template <class G>
static __device__ __forceinline__ void get_rows_impl(const void* table, const int* ids, float* out,
                                                     int cols, int n) {
    const int c = blockIdx.x * GET_ROWS_BLOCK + threadIdx.x;
    const int i = blockIdx.y;
    if (c < cols && i < n) {
        const u8* row = (const u8*)table + (i64)ids[i] * G::row_bytes(cols);
        out[(i64)i * cols + c] = G::get(row, c);
    }
}

#define GET_ROWS_KERNEL(name, G)                                                                 \
    extern "C" __global__ void __launch_bounds__(GET_ROWS_BLOCK)                                \
        name(const void* table, const int* ids, float* out, int cols, int n) {                   \
        get_rows_impl<G>(table, ids, out, cols, n);                                              \
    }

GET_ROWS_KERNEL(get_rows_f32, GF32)
GET_ROWS_KERNEL(get_rows_f16, GF16)
GET_ROWS_KERNEL(get_rows_bf16, GBF16)
GET_ROWS_KERNEL(get_rows_q4_0, GQ4_0)
GET_ROWS_KERNEL(get_rows_q4_1, GQ4_1)
GET_ROWS_KERNEL(get_rows_q5_0, GQ5_0)
GET_ROWS_KERNEL(get_rows_q8_0, GQ8_0)
GET_ROWS_KERNEL(get_rows_q4_k, GQ4_K)
GET_ROWS_KERNEL(get_rows_q6_k, GQ6_K)
