// The CUDA dialect of kernels/cuda/*.cu as plain C++20, so that the host shim runs the very same
// kernel sources on the CPU. Each CUDA thread of a block is a fiber (its own stack, switched in
// user space, shim.cpp) on one OS thread; `__syncthreads` and every warp shuffle are barriers
// at which the fiber stops and the next ready fiber of the block runs, and a barrier opens when
// every fiber of the block (of the warp, for a shuffle) has reached it. Between barriers a fiber
// runs alone, so the only interleavings are at barriers. Independent blocks may run on several
// OS threads at once, each block's fibers on one of them: `__shared__` is a `static
// thread_local`, one copy per OS thread, which the fibers of the block running there share.
// `threadIdx` and the lane state are per-fiber values that the scheduler sets on every switch
// (fibers never move between OS threads).
//
// A thread that returns from the kernel drops out of its block's and its warp's barriers (as an
// exited thread on the GPU), so a whole-block early return is fine. A shuffle needs every lane
// of the warp (as the kernels' full masks promise); a barrier or shuffle that not every thread
// (lane) reaches is a deadlock, which the shim detects and reports (the launch fails).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static thread_local
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) alignas(n)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
typedef dim3 uint3;

// Per OS thread; threadIdx rewritten on every fiber switch, the others per block.
inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace cascade_shim {

// One warp's exchange buffer and barrier: shuffles alternate between two slot arrays, so one
// barrier per shuffle suffices (a lane writing slots[p] again has passed the barrier of the
// shuffle after the one that last read them).
struct Warp {
    alignas(64) uint64_t slots[2][32];
    unsigned arrived = 0;  // lanes stopped at the current shuffle
    unsigned live = 0;     // lanes that have not returned from the kernel
};

// What the shuffles read of the running fiber.
struct Lane {
    Warp* warp = nullptr;
    unsigned lane = 0;
    unsigned warp_size = 32;  // lanes in this warp (the last warp of a block may be partial)
    unsigned parity = 0;
};

// The running fiber's lane state (set on every switch).
inline thread_local Lane* t_lane = nullptr;

// shim.cpp: stop the running fiber until every live thread of its block (lane of its warp) has
// arrived.
void block_barrier();
void warp_barrier();

template <class T>
inline T exchange(T v, unsigned src) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a small value");
    Lane& s = *t_lane;  // this fiber's own, valid across the barrier
    uint64_t* slots = s.warp->slots[s.parity];
    s.parity ^= 1;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    slots[s.lane] = bits;
    warp_barrier();
    if (src >= s.warp_size) {
        return v;
    }
    T out;
    bits = slots[src];
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}

// Every lane's `v` (a full warp): one barrier, as a shuffle (the same alternating slots).
inline void gather(uint64_t v, uint64_t (&all)[32]) {
    Lane& s = *t_lane;
    uint64_t* slots = s.warp->slots[s.parity];
    s.parity ^= 1;
    slots[s.lane] = v;
    warp_barrier();
    for (unsigned l = 0; l < 32; ++l) {
        all[l] = slots[l];
    }
}

inline int8_t byte_of(uint32_t word, unsigned k) { return (int8_t)(uint8_t)(word >> (8 * k)); }

}  // namespace cascade_shim

// mma.sync m16n8k16 s8 (common.cuh): each lane publishes its fragments, then computes its own four
// outputs from every lane's, by the PTX ISA's fragment layout. A full warp only.
inline void mma_s8_16816(int (&d)[4], int a0, int a1, int b) {
    using namespace cascade_shim;
    if (t_lane->warp_size != 32) {
        std::abort();  // a partial warp cannot run a warp-wide matrix product
    }
    uint64_t as[32], bs[32];
    gather((uint64_t)(uint32_t)a0 | ((uint64_t)(uint32_t)a1 << 32), as);
    gather((uint64_t)(uint32_t)b, bs);
    const unsigned g = t_lane->lane / 4, t = t_lane->lane % 4;
    for (unsigned e = 0; e < 4; ++e) {
        const unsigned row = g + 8 * (e / 2);  // of A and D
        const unsigned col = 2 * t + e % 2;    // of B and D
        int sum = 0;
        for (unsigned k = 0; k < 16; ++k) {
            // A[row][k]: lane (row % 8) * 4 + k / 4, a0 for rows 0..7, a1 for 8..15.
            const uint64_t af = as[(row % 8) * 4 + k / 4];
            const uint32_t aw = (uint32_t)(af >> (32 * (row / 8)));
            // B[k][col]: lane col * 4 + k / 4.
            const uint32_t bw = (uint32_t)bs[col * 4 + k / 4];
            sum += (int)byte_of(aw, k % 4) * (int)byte_of(bw, k % 4);
        }
        d[e] = (int)((uint32_t)d[e] + (uint32_t)sum);  // wraps, as the instruction without .satfinite
    }
}

inline void __syncthreads() { cascade_shim::block_barrier(); }

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
    const unsigned lane = cascade_shim::t_lane->lane;
    const unsigned src = lane ^ (unsigned)lane_mask;
    // Outside the lane's segment of `width`: its own value, as on the GPU.
    if ((src & ~(unsigned)(width - 1)) != (lane & ~(unsigned)(width - 1))) {
        return cascade_shim::exchange(v, lane);
    }
    return cascade_shim::exchange(v, src);
}

template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    const unsigned lane = cascade_shim::t_lane->lane;
    const unsigned in_seg = lane & (unsigned)(width - 1);
    const unsigned src = in_seg + delta < (unsigned)width ? lane + delta : lane;
    return cascade_shim::exchange(v, src);
}

template <class T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
    const unsigned lane = cascade_shim::t_lane->lane;
    const unsigned in_seg = lane & (unsigned)(width - 1);
    const unsigned src = in_seg >= delta ? lane - delta : lane;
    return cascade_shim::exchange(v, src);
}

template <class T>
inline T __shfl_sync(unsigned, T v, int src_lane, int width = 32) {
    const unsigned lane = cascade_shim::t_lane->lane;
    const unsigned base = lane & ~(unsigned)(width - 1);
    return cascade_shim::exchange(v, base + ((unsigned)src_lane & (unsigned)(width - 1)));
}

// ---- integer intrinsics ----------------------------------------------------------------------

inline int __dp4a(int a, int b, int c) {
    int sum = c;
    for (int i = 0; i < 4; ++i) {
        sum += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
    }
    return sum;
}

// Per-byte signed saturating subtraction.
inline int __vsubss4(int a, int b) {
    uint32_t r = 0;
    for (int i = 0; i < 4; ++i) {
        int d = (int)(int8_t)(a >> (8 * i)) - (int)(int8_t)(b >> (8 * i));
        d = d < -128 ? -128 : (d > 127 ? 127 : d);
        r |= (uint32_t)(uint8_t)(int8_t)d << (8 * i);
    }
    return (int)r;
}

inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}

template <class T>
inline T __ldg(const T* p) {
    return *p;
}

// ---- half precision --------------------------------------------------------------------------

struct __half {
    uint16_t __x;
};
struct alignas(4) __half2 {
    __half x, y;
};
struct float2 {
    float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }

inline float __half2float(__half h) {
    const uint32_t sign = (uint32_t)(h.__x & 0x8000u) << 16;
    const uint32_t exp = (h.__x >> 10) & 0x1f;
    uint32_t mant = h.__x & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {
            // Subnormal: normalize.
            int e = -1;
            do {
                ++e;
                mant <<= 1;
            } while ((mant & 0x400u) == 0);
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    return __uint_as_float(bits);
}

// Round to nearest, ties to even (as __float2half_rn).
inline __half __float2half_rn(float f) {
    const uint32_t x = __float_as_uint(f);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    uint16_t out;
    if (ax >= 0x7f800000u) {
        out = ax > 0x7f800000u ? (uint16_t)0x7e00 : (uint16_t)0x7c00;  // NaN, inf
    } else if (ax >= 0x477ff000u) {
        out = 0x7c00;  // rounds past 65504
    } else if (ax < 0x38800000u) {
        // Subnormal half (or zero): value = m * 2^-24, m = round(|f| * 2^24).
        const int e = (int)(ax >> 23);
        if (e < 102) {
            out = 0;  // below half the smallest subnormal
        } else {
            const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
            const int shift = 126 - e;  // |f| * 2^24 = m * 2^(e - 127 - 23 + 24)
            const uint32_t q = m >> shift;
            const uint32_t rem = m & ((1u << shift) - 1);
            const uint32_t halfway = 1u << (shift - 1);
            out = (uint16_t)(q + ((rem > halfway || (rem == halfway && (q & 1))) ? 1 : 0));
        }
    } else {
        const uint32_t e = (ax >> 23) - 127 + 15;
        const uint32_t m = ax & 0x7fffffu;
        uint32_t h = (e << 10) | (m >> 13);
        const uint32_t rem = m & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) {
            ++h;  // may carry into the exponent, correctly
        }
        out = (uint16_t)h;
    }
    return __half{(uint16_t)(sign | out)};
}
inline __half __float2half(float f) { return __float2half_rn(f); }

inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
inline __half2 __floats2half2_rn(float a, float b) {
    return __half2{__float2half_rn(a), __float2half_rn(b)};
}
inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }

static_assert(sizeof(__half) == 2 && sizeof(__half2) == 4 && alignof(__half2) == 4);
