// Integer dot products of one weight block part with 8-bit activations (q8_1), after llama.cpp's
// ggml-cuda/vecdotq.cuh (the MMVQ formulas), split so that a part's weight data is loaded once
// and used for every token.
//
// A weight block of QK values is cut into PARTS parts; a part is what one K-lane handles: its
// weight words (load_w), the matching activation words of one token (load_a), and the part's
// float contribution (dot). The activation blocks of one weight block are QK / 32 consecutive
// block_q8_1 (xb points at the first). mmvq_*, mmq_* call the same three functions, in the same
// order per (row, token), so their results agree bitwise.
#pragma once
#include "common.cuh"

struct TQ4_0 {
    typedef block_q4_0 block;
    enum { QK = 32, PARTS = 2 };
    struct W { int v[2]; float d; };
    struct A { int u[4]; float2 ds; };
    static __device__ __forceinline__ W load_w(const block* b, int part) {
        const int iqs = 2 * part;
        W w;
        w.v[0] = get_int_b2(b->qs, iqs);
        w.v[1] = get_int_b2(b->qs, iqs + 1);
        w.d = __half2float(b->d);
        return w;
    }
    static __device__ __forceinline__ A load_a(const block_q8_1* xb, int part) {
        const int iqs = 2 * part;
        A a;
        a.u[0] = get_int_b4(xb->qs, iqs);
        a.u[1] = get_int_b4(xb->qs, iqs + 4);
        a.u[2] = get_int_b4(xb->qs, iqs + 1);
        a.u[3] = get_int_b4(xb->qs, iqs + 5);
        a.ds = __half22float2(xb->ds);
        return a;
    }
    static __device__ __forceinline__ float dot(const W& w, const A& a) {
        int sumi = 0;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            sumi = __dp4a((w.v[i] >> 0) & 0x0F0F0F0F, a.u[2 * i + 0], sumi);
            sumi = __dp4a((w.v[i] >> 4) & 0x0F0F0F0F, a.u[2 * i + 1], sumi);
        }
        // The -8 offset of the 16 values of this part: 8 * (half the block's sum).
        return w.d * ((float)sumi * a.ds.x - 4.0f * a.ds.y);
    }
};

struct TQ4_1 {
    typedef block_q4_1 block;
    enum { QK = 32, PARTS = 2 };
    struct W { int v[2]; float2 dm; };
    typedef TQ4_0::A A;
    static __device__ __forceinline__ W load_w(const block* b, int part) {
        const int iqs = 2 * part;
        W w;
        w.v[0] = get_int_b4(b->qs, iqs);
        w.v[1] = get_int_b4(b->qs, iqs + 1);
        w.dm = __half22float2(b->dm);
        return w;
    }
    static __device__ __forceinline__ A load_a(const block_q8_1* xb, int part) {
        return TQ4_0::load_a(xb, part);
    }
    static __device__ __forceinline__ float dot(const W& w, const A& a) {
        int sumi = 0;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            sumi = __dp4a((w.v[i] >> 0) & 0x0F0F0F0F, a.u[2 * i + 0], sumi);
            sumi = __dp4a((w.v[i] >> 4) & 0x0F0F0F0F, a.u[2 * i + 1], sumi);
        }
        const float d4d8 = w.dm.x * a.ds.x;
        const float m4s8 = w.dm.y * a.ds.y;
        // The minimum times the sum of this part's 16 activations: half the block's.
        return (float)sumi * d4d8 + m4s8 * 0.5f;
    }
};

struct TQ5_0 {
    typedef block_q5_0 block;
    enum { QK = 32, PARTS = 2 };
    struct W { int vl[2]; int vh[2]; float d; };
    typedef TQ4_0::A A;
    static __device__ __forceinline__ W load_w(const block* b, int part) {
        const int iqs = 2 * part;
        W w;
        const int qh = get_int_b2(b->qh, 0);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            w.vl[i] = get_int_b2(b->qs, iqs + i);
            w.vh[i] = (int)((u32)qh >> (4 * (iqs + i)));
        }
        w.d = __half2float(b->d);
        return w;
    }
    static __device__ __forceinline__ A load_a(const block_q8_1* xb, int part) {
        return TQ4_0::load_a(xb, part);
    }
    static __device__ __forceinline__ float dot(const W& w, const A& a) {
        int sumi = 0;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int vl = w.vl[i];
            const int vh = w.vh[i];
            int vi0 = (vl >> 0) & 0x0F0F0F0F;
            vi0 |= (vh << 4) & 0x00000010;
            vi0 |= (vh << 11) & 0x00001000;
            vi0 |= (vh << 18) & 0x00100000;
            vi0 |= (vh << 25) & 0x10000000;
            sumi = __dp4a(vi0, a.u[2 * i + 0], sumi);
            int vi1 = (vl >> 4) & 0x0F0F0F0F;
            vi1 |= (int)((u32)vh >> 12) & 0x00000010;
            vi1 |= (int)((u32)vh >> 5) & 0x00001000;
            vi1 |= (vh << 2) & 0x00100000;
            vi1 |= (vh << 9) & 0x10000000;
            sumi = __dp4a(vi1, a.u[2 * i + 1], sumi);
        }
        return w.d * ((float)sumi * a.ds.x - 8.0f * a.ds.y);
    }
};

struct TQ8_0 {
    typedef block_q8_0 block;
    enum { QK = 32, PARTS = 4 };
    struct W { int v[2]; float d; };
    struct A { int u[2]; float d; };
    static __device__ __forceinline__ W load_w(const block* b, int part) {
        const int iqs = 2 * part;
        W w;
        w.v[0] = get_int_b2(b->qs, iqs);
        w.v[1] = get_int_b2(b->qs, iqs + 1);
        w.d = __half2float(b->d);
        return w;
    }
    static __device__ __forceinline__ A load_a(const block_q8_1* xb, int part) {
        const int iqs = 2 * part;
        A a;
        a.u[0] = get_int_b4(xb->qs, iqs);
        a.u[1] = get_int_b4(xb->qs, iqs + 1);
        a.d = __low2float(xb->ds);
        return a;
    }
    static __device__ __forceinline__ float dot(const W& w, const A& a) {
        int sumi = __dp4a(w.v[0], a.u[0], 0);
        sumi = __dp4a(w.v[1], a.u[1], sumi);
        return w.d * a.d * (float)sumi;
    }
};

struct TQ4_K {
    typedef block_q4_K block;
    enum { QK = 256, PARTS = 16 };
    // Two 16-value runs of two sub-blocks (low and high nibbles of the same bytes).
    struct W { int v[2]; int sc[2]; int m[2]; float2 dm; };
    struct A { int u[4]; float d8[2]; };
    static __device__ __forceinline__ W load_w(const block* b, int part) {
        const int iqs = 2 * part;
        const int bq8_offset = 2 * (iqs / 8);
        const int* q4 = (const int*)(b->qs + 16 * bq8_offset + 4 * ((iqs / 2) % 4));
        W w;
        w.v[0] = q4[0];
        w.v[1] = q4[4];
        const u16* scales = (const u16*)b->scales;
        const int j = bq8_offset / 2;
        u32 aux0, aux1;
        if (j < 2) {
            aux0 = scales[j + 0] & 0x3f3f;
            aux1 = scales[j + 2] & 0x3f3f;
        } else {
            aux0 = ((scales[j + 2] >> 0) & 0x0f0f) | ((scales[j - 2] & 0xc0c0) >> 2);
            aux1 = ((scales[j + 2] >> 4) & 0x0f0f) | ((scales[j - 0] & 0xc0c0) >> 2);
        }
        w.sc[0] = (int)(aux0 & 0xff);
        w.sc[1] = (int)(aux0 >> 8);
        w.m[0] = (int)(aux1 & 0xff);
        w.m[1] = (int)(aux1 >> 8);
        w.dm = __half22float2(b->dm);
        return w;
    }
    static __device__ __forceinline__ A load_a(const block_q8_1* xb, int part) {
        const int iqs = 2 * part;
        const int bq8_offset = 2 * (iqs / 8);
        A a;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const block_q8_1* bq8i = xb + bq8_offset + i;
            a.d8[i] = __low2float(bq8i->ds);
            const int* q8 = (const int*)bq8i->qs + ((iqs / 2) % 4);
            a.u[2 * i + 0] = q8[0];
            a.u[2 * i + 1] = q8[4];
        }
        return a;
    }
    static __device__ __forceinline__ float dot(const W& w, const A& a) {
        float sumf_d = 0.0f;
        float sumf_m = 0.0f;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int v0i = (w.v[0] >> (4 * i)) & 0x0F0F0F0F;
            const int v1i = (w.v[1] >> (4 * i)) & 0x0F0F0F0F;
            const int dot1 = __dp4a(v1i, a.u[2 * i + 1], __dp4a(v0i, a.u[2 * i + 0], 0));
            const int dot2 = __dp4a(0x01010101, a.u[2 * i + 1], __dp4a(0x01010101, a.u[2 * i + 0], 0));
            sumf_d += a.d8[i] * (float)(dot1 * w.sc[i]);
            sumf_m += a.d8[i] * (float)(dot2 * w.m[i]);
        }
        return w.dm.x * sumf_d - w.dm.y * sumf_m;
    }
};

struct TQ6_K {
    typedef block_q6_K block;
    enum { QK = 256, PARTS = 32 };
    // Four values of one 32-value run and the four 64 values further (same ql bytes).
    struct W { int vl; int vh; int sc[2]; float d; };
    struct A { int u[2]; float d8[2]; };
    static __device__ __forceinline__ W load_w(const block* b, int part) {
        const int iqs = part;
        const int scale_offset = 8 * (iqs / 16) + (iqs % 16) / 4;
        const int vh_shift = 2 * ((iqs % 16) / 8);
        W w;
        w.vl = get_int_b2(b->ql, iqs);
        w.vh = (int)((u32)get_int_b2(b->qh, 8 * (iqs / 16) + iqs % 8) >> vh_shift);
        w.sc[0] = b->scales[scale_offset];
        w.sc[1] = b->scales[scale_offset + 4];
        w.d = __half2float(b->d);
        return w;
    }
    static __device__ __forceinline__ A load_a(const block_q8_1* xb, int part) {
        const int iqs = part;
        const int bq8_offset = 4 * (iqs / 16) + (iqs % 16) / 8;
        A a;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const block_q8_1* bq8i = xb + bq8_offset + 2 * i;
            a.u[i] = get_int_b4(bq8i->qs, iqs % 8);
            a.d8[i] = __low2float(bq8i->ds);
        }
        return a;
    }
    static __device__ __forceinline__ float dot(const W& w, const A& a) {
        float sumf = 0.0f;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int vil = (w.vl >> (4 * i)) & 0x0F0F0F0F;
            const int vih = ((w.vh >> (4 * i)) << 4) & 0x30303030;
            const int vi = __vsubss4(vil | vih, 0x20202020);
            sumf += a.d8[i] * (float)(__dp4a(vi, a.u[i], 0) * w.sc[i]);
        }
        return w.d * sumf;
    }
};
