//! AVX2 and AVX-512 VNNI integer products. One generic body per weight type, compiled twice:
//! `VNNI = true` under `avx512vnni` (`vpdpbusd` / `vpdpwssd`), `VNNI = false` under plain AVX2
//! (`vpmaddubsw` + `vpmaddwd`). Both compute exactly the integer sums and float operations of
//! the portable twin (`portable.rs`), so all three agree bitwise.
//!
//! Loop order (32-value types, Q5_K): for each weight row, for each tile of up to `TILE` tokens,
//! for each block: unpack the block once into registers, then dot it with every token of the
//! tile. A row is read from memory once per call and reused from L1 by later tiles.
//!
//! Q4_K and Q6_K (the bulk of a `Q4_K_M` file) take eight rows at a time, one row per 32-bit
//! lane: the super-block's quants are transposed in registers once per tile, after which one
//! `vpdpbusd` does 32 multiply-adds and the group scales cost one `vpmulld` per group and token
//! instead of one multiply per pair of bytes. Rows past the last whole eight use the portable
//! twin, which has the same arithmetic.
//!
//! # Safety contract of this module
//! Every `unsafe fn` here is reached only through `rows_avx2`, `rows_vnni` or `peak_*`, which
//! `qdot::matmul_q8_with` and `qdot::peak_loop` call after checking (a) that the CPU has the
//! instruction set (`Isa::detected`), and (b) that the matrix data is exactly rows x row bytes
//! of its type (whole groups of eight rows when interleaved), that the activations hold `n`
//! tokens of the matrix's columns in the block size its type needs (`Q8Acts::consistent`), and
//! that `out` holds `n x rows` floats, of which a task writes only its own rows. Each helper's
//! `# Safety` says what it reads; the `SAFETY` line of its body ties that to (a) and (b).

use std::arch::x86_64::*;

use cascade_weights::Layout;

use super::{Kernel, OutRows, WeightBlocks};
use crate::q8::Q8Acts;
use crate::quant::f16_at;

pub(crate) mod amx;

pub(crate) use amx::usable as amx_usable;

const TILE: usize = 16;

/// `acc + Σ_{k<4} w[4l+k] * a[4l+k]` per i32 lane, `w` unsigned, `a` signed.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn dot4<const VNNI: bool>(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
    // SAFETY: registers only, on a CPU with the features (module contract, (a)).
    unsafe {
        if VNNI {
            _mm256_dpbusd_epi32(acc, w, a)
        } else {
            let p = _mm256_maddubs_epi16(w, a);
            _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
        }
    }
}

/// `acc + a[2l] * b[2l] + a[2l+1] * b[2l+1]` per i32 lane, 16-bit signed inputs (exact).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn dot2_i16<const VNNI: bool>(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    // SAFETY: registers only, on a CPU with the features (module contract, (a)).
    unsafe {
        if VNNI {
            _mm256_dpwssd_epi32(acc, a, b)
        } else {
            _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
        }
    }
}

/// `acc + Σ_{k<4} w[4l+k] * a[4l+k] * sc[..]` with 16-bit scales per pair of bytes.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn dot4_scaled<const VNNI: bool>(
    acc: __m256i,
    w: __m256i,
    a: __m256i,
    sc: __m256i,
) -> __m256i {
    // SAFETY: registers only, on a CPU with the features (module contract, (a)).
    unsafe {
        let p = _mm256_maddubs_epi16(w, a);
        if VNNI {
            _mm256_dpwssd_epi32(acc, p, sc)
        } else {
            _mm256_add_epi32(acc, _mm256_madd_epi16(p, sc))
        }
    }
}

/// The portable twin's summation tree: `(v0+v4 + v2+v6) + (v1+v5 + v3+v7)`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn hsum8(v: __m256) -> f32 {
    // SAFETY: registers only, on a CPU with the features (module contract, (a)).
    unsafe {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
    }
}

/// # Safety
/// `p` must be valid for reading 32 bytes. The CPU must have AVX2, FMA and F16C, and AVX-512
/// F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    // SAFETY: an unaligned load of the 32 bytes the caller vouches for.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// 16 bytes of nibbles into 32 values: low nibbles first, then high nibbles.
///
/// # Safety
/// `p` must be valid for reading 16 bytes. The CPU must have AVX2, FMA and F16C, and AVX-512
/// F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn nibbles32(p: *const u8) -> __m256i {
    // SAFETY: an unaligned load of the 16 bytes the caller vouches for.
    unsafe {
        let x = _mm_loadu_si128(p as *const __m128i);
        let v = _mm256_set_m128i(_mm_srli_epi16(x, 4), x);
        _mm256_and_si256(v, _mm256_set1_epi8(0x0f))
    }
}

/// Bit `i` of the 32-bit little-endian word at `p` as `0x10` in byte `i`.
///
/// # Safety
/// `p` must be valid for reading 4 bytes. The CPU must have AVX2, FMA and F16C, and AVX-512
/// F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn bits32_as_16(p: *const u8) -> __m256i {
    // SAFETY: reads the 4 bytes the caller vouches for.
    unsafe {
        let x = u32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]);
        let shuf = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        );
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuf);
        let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
        let set = _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }
}

/// `lo` with 0x10 added to byte i where bit i of the 32-bit word at `p` is set (the fifth bit of
/// Q5_0/Q5_1). With AVX-512 the word is the byte mask of one masked add.
///
/// # Safety
/// `p` must be valid for reading 4 bytes. The CPU must have AVX2, FMA and F16C, and AVX-512
/// F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn fifth_bit<const VNNI: bool>(lo: __m256i, p: *const u8) -> __m256i {
    // SAFETY: an unaligned read of the 4 bytes the caller vouches for.
    unsafe {
        if VNNI {
            let k = (p as *const u32).read_unaligned();
            _mm256_mask_add_epi8(lo, k, lo, _mm256_set1_epi8(0x10))
        } else {
            _mm256_or_si256(lo, bits32_as_16(p))
        }
    }
}

/// The quants of one 32-value block (unsigned, or signed for Q8_0); its scale and minimum come
/// from [`scales8`].
///
/// # Safety
/// `b` must point to one whole block of `kind`'s type. The CPU must have AVX2, FMA and F16C, and
/// AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn unpack_b32<const VNNI: bool>(kind: Kernel, b: *const u8) -> __m256i {
    // SAFETY: every offset read (at most the block's size) lies inside the block the caller vouches
    // for.
    unsafe {
        match kind {
            Kernel::Q4_0 => nibbles32(b.add(2)),
            Kernel::Q4_1 => nibbles32(b.add(4)),
            Kernel::Q5_0 => fifth_bit::<VNNI>(nibbles32(b.add(6)), b.add(2)),
            Kernel::Q5_1 => fifth_bit::<VNNI>(nibbles32(b.add(8)), b.add(4)),
            Kernel::Q8_0 => load(b.add(2)),
            Kernel::Q4K | Kernel::Q5K | Kernel::Q6K => unreachable!("not a 32-value block type"),
        }
    }
}

/// Eight f32 at `p`, or the first `n` of them and zeros.
///
/// # Safety
/// `p` must be valid for reading `n` (at most 8) f32. The CPU must have AVX2, FMA and F16C, and
/// AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn load8_padded(p: *const f32, n: usize) -> __m256 {
    // SAFETY: reads `n <= 8` floats the caller vouches for, or 8 when `n == 8`.
    unsafe {
        if n == 8 {
            _mm256_loadu_ps(p)
        } else {
            let mut buf = [0f32; 8];
            std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
            _mm256_loadu_ps(buf.as_ptr())
        }
    }
}

/// The f16 at byte `at` of block `i` of a group, as raw bits (0 past the group's end).
///
/// # Safety
/// When `i < nblk`, the two bytes at `p + i * bb + at` must be readable.
#[inline(always)]
unsafe fn h16(p: *const u8, bb: usize, i: usize, at: usize, nblk: usize) -> i16 {
    // SAFETY: read only when `i < nblk`, where the caller vouches for the bytes.
    unsafe {
        if i < nblk {
            (p.add(i * bb + at) as *const i16).read_unaligned()
        } else {
            0
        }
    }
}

/// Scales and minimums of up to eight consecutive 32-value blocks as f32 vectors (zero lanes
/// past `nblk`), built in registers.
///
/// # Safety
/// `p` must point to `nblk` (at most 8) consecutive blocks of `kind`'s type. The CPU must have
/// AVX2, FMA and F16C, and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn scales8(kind: Kernel, p: *const u8, nblk: usize) -> (__m256, __m256) {
    // SAFETY: `h16` reads only inside the `nblk` blocks the caller vouches for.
    unsafe {
        let bb = kind.dtype().block_bytes();
        let h = |at: usize| {
            _mm256_cvtph_ps(_mm_set_epi16(
                h16(p, bb, 7, at, nblk),
                h16(p, bb, 6, at, nblk),
                h16(p, bb, 5, at, nblk),
                h16(p, bb, 4, at, nblk),
                h16(p, bb, 3, at, nblk),
                h16(p, bb, 2, at, nblk),
                h16(p, bb, 1, at, nblk),
                h16(p, bb, 0, at, nblk),
            ))
        };
        let d = h(0);
        let m = match kind {
            Kernel::Q4_0 => _mm256_mul_ps(_mm256_set1_ps(-8.0), d),
            Kernel::Q5_0 => _mm256_mul_ps(_mm256_set1_ps(-16.0), d),
            Kernel::Q4_1 | Kernel::Q5_1 => h(2),
            _ => _mm256_setzero_ps(),
        };
        (d, m)
    }
}

/// One group of `N` blocks (8, or fewer at the end of a row) for every token of the tile.
///
/// # Safety
/// `blk` must point to `N` whole blocks of `kind` inside a row of the checked matrix, and the
/// tile's tokens must have those blocks in `a`; `out` as in [`rows_b32`]. The CPU must have AVX2,
/// FMA and F16C, and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn group_b32<const VNNI: bool, const N: usize>(
    kind: Kernel,
    blk: *const u8,
    a: &Q8Acts,
    g: usize,
    t0: usize,
    nt: usize,
    accf0: &mut [__m256; TILE],
    accf1: &mut [__m256; TILE],
    accm: &mut [__m256; TILE],
) {
    // SAFETY: every load is inside a row of `w` or a token of `a` and every store inside `out`
    // (module contract, (b)); the CPU has the features ((a)).
    unsafe {
        let (cols, nb) = (a.cols, a.cols / 32);
        let bb = kind.dtype().block_bytes();
        let signed = kind == Kernel::Q8_0;
        let mut q = [_mm256_setzero_si256(); 8];
        let mut qa = [_mm256_setzero_si256(); 8];
        for i in 0..N {
            let qi = unpack_b32::<VNNI>(kind, blk.add(i * bb));
            q[i] = qi;
            qa[i] = if signed { _mm256_sign_epi8(qi, qi) } else { qi };
        }
        let (dwv, mwv) = scales8(kind, blk, N);
        let mut sarr = [0f32; 8];
        for t in 0..nt {
            let tt = t0 + t;
            let dav = load8_padded(a.d.as_ptr().add(tt * nb + 8 * g), N);
            _mm256_storeu_ps(sarr.as_mut_ptr(), _mm256_mul_ps(dwv, dav));
            let ap = a.qs.as_ptr().add(tt * cols + 256 * g) as *const u8;
            let (mut f0, mut f1) = (accf0[t], accf1[t]);
            for i in 0..N {
                let av = load(ap.add(32 * i));
                let av = if signed {
                    _mm256_sign_epi8(av, q[i])
                } else {
                    av
                };
                let isum = dot4::<VNNI>(_mm256_setzero_si256(), qa[i], av);
                let sv = _mm256_broadcast_ss(&*sarr.as_ptr().add(i));
                if i % 2 == 0 {
                    f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), sv, f0);
                } else {
                    f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), sv, f1);
                }
            }
            accf0[t] = f0;
            accf1[t] = f1;
            if !signed {
                let dsv = load8_padded(a.dsum32.as_ptr().add(tt * nb + 8 * g), N);
                accm[t] = _mm256_fmadd_ps(mwv, dsv, accm[t]);
            }
        }
    }
}

/// Evaluates `$call` with `$n` a constant equal to `$len` (1 to 8, the blocks of a group of
/// 32-value blocks), so each case is fully unrolled with its blocks in registers.
macro_rules! with_group_len {
    ($len:expr, $n:ident => $call:expr) => {
        match $len {
            1 => {
                const $n: usize = 1;
                $call
            }
            2 => {
                const $n: usize = 2;
                $call
            }
            3 => {
                const $n: usize = 3;
                $call
            }
            4 => {
                const $n: usize = 4;
                $call
            }
            5 => {
                const $n: usize = 5;
                $call
            }
            6 => {
                const $n: usize = 6;
                $call
            }
            7 => {
                const $n: usize = 7;
                $call
            }
            _ => {
                const $n: usize = 8;
                $call
            }
        }
    };
}

/// [`group_b32`] for a single token with the accumulators in registers: the same operations in
/// the same order, so results are bitwise those of the batched path.
///
/// # Safety
/// As [`group_b32`], for one token. The CPU must have AVX2, FMA and F16C, and AVX-512 F/BW/VL/VNNI
/// when `VNNI`.
#[inline(always)]
unsafe fn group1_b32<const VNNI: bool, const N: usize>(
    kind: Kernel,
    blk: *const u8,
    a: &Q8Acts,
    g: usize,
    acc: (__m256, __m256, __m256),
) -> (__m256, __m256, __m256) {
    // SAFETY: every load is inside a row of `w` or a token of `a` and every store inside `out`
    // (module contract, (b)); the CPU has the features ((a)).
    unsafe {
        let bb = kind.dtype().block_bytes();
        let signed = kind == Kernel::Q8_0;
        let (mut f0, mut f1, mut m) = acc;
        let (dwv, mwv) = scales8(kind, blk, N);
        let s = _mm256_mul_ps(dwv, load8_padded(a.d.as_ptr().add(8 * g), N));
        let ap = a.qs.as_ptr().add(256 * g) as *const u8;
        for i in 0..N {
            let q = unpack_b32::<VNNI>(kind, blk.add(i * bb));
            let av = load(ap.add(32 * i));
            let (qa, av) = if signed {
                (_mm256_sign_epi8(q, q), _mm256_sign_epi8(av, q))
            } else {
                (q, av)
            };
            let isum = dot4::<VNNI>(_mm256_setzero_si256(), qa, av);
            let sv = _mm256_permutevar8x32_ps(s, _mm256_set1_epi32(i as i32));
            if i % 2 == 0 {
                f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), sv, f0);
            } else {
                f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), sv, f1);
            }
        }
        if !signed {
            let dsv = load8_padded(a.dsum32.as_ptr().add(8 * g), N);
            m = _mm256_fmadd_ps(mwv, dsv, m);
        }
        (f0, f1, m)
    }
}

/// One token (a decode step): [`rows_b32`] without the token tiles.
///
/// # Safety
/// `w` and `a` as `matmul_q8_with` checked them (module contract, (b)); rows `r0..r1` inside `w`;
/// `out` valid for rows `0..r1 - r0` of every token of `a`. The CPU must have AVX2, FMA and F16C,
/// and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn rows1_b32<const VNNI: bool>(
    kind: Kernel,
    w: &WeightBlocks,
    a: &Q8Acts,
    r0: usize,
    r1: usize,
    out: OutRows,
) {
    // SAFETY: every load is inside a row of `w` or a token of `a` and every store inside `out`
    // (module contract, (b)); the CPU has the features ((a)).
    unsafe {
        let bb = kind.dtype().block_bytes();
        let nb = a.cols / 32;
        for r in r0..r1 {
            let row = w.row(r).as_ptr();
            let z = _mm256_setzero_ps();
            let mut acc = (z, z, z);
            for g in 0..nb.div_ceil(8) {
                let blk = row.add(8 * g * bb);
                acc = with_group_len!(nb - 8 * g, N => group1_b32::<VNNI, N>(kind, blk, a, g, acc));
            }
            out.set(r - r0, 0, hsum8(_mm256_add_ps(acc.0, acc.1)) + hsum8(acc.2));
        }
    }
}

/// # Safety
/// `w` and `a` as `matmul_q8_with` checked them (module contract, (b)); rows `r0..r1` inside `w`;
/// `out` valid for rows `0..r1 - r0` of every token of `a`. The CPU must have AVX2, FMA and F16C,
/// and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn rows_b32<const VNNI: bool>(
    kind: Kernel,
    w: &WeightBlocks,
    a: &Q8Acts,
    r0: usize,
    r1: usize,
    out: OutRows,
) {
    // SAFETY: every load is inside a row of `w` or a token of `a` and every store inside `out`
    // (module contract, (b)); the CPU has the features ((a)).
    unsafe {
        let n = a.n;
        let bb = kind.dtype().block_bytes();
        let nb = a.cols / 32;
        let mut accf0 = [_mm256_setzero_ps(); TILE];
        let mut accf1 = [_mm256_setzero_ps(); TILE];
        let mut accm = [_mm256_setzero_ps(); TILE];
        for r in r0..r1 {
            let row = w.row(r).as_ptr();
            for t0 in (0..n).step_by(TILE) {
                let nt = TILE.min(n - t0);
                accf0[..nt].fill(_mm256_setzero_ps());
                accf1[..nt].fill(_mm256_setzero_ps());
                accm[..nt].fill(_mm256_setzero_ps());
                for g in 0..nb.div_ceil(8) {
                    let blk = row.add(8 * g * bb);
                    let (f0, f1, m) = (&mut accf0, &mut accf1, &mut accm);
                    with_group_len!(
                        nb - 8 * g,
                        N => group_b32::<VNNI, N>(kind, blk, a, g, t0, nt, f0, f1, m)
                    );
                }
                for t in 0..nt {
                    let v = hsum8(_mm256_add_ps(accf0[t], accf1[t])) + hsum8(accm[t]);
                    out.set(r - r0, t0 + t, v);
                }
            }
        }
    }
}

const KMASK1: u32 = 0x3f3f_3f3f;
const KMASK2: u32 = 0x0f0f_0f0f;
const KMASK3: u32 = 0x0303_0303;

/// Q4_K / Q5_K packed 6-bit scales and mins (12 bytes at `p`) as 16-bit lanes: scales in
/// lanes 0..8, mins in lanes 8..16 (ggml's `utmp` unpacking).
///
/// # Safety
/// `p` must be valid for reading 12 bytes (a super-block's packed scales). The CPU must have AVX2,
/// FMA and F16C, and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn k4_scales_mins(p: *const u8) -> __m256i {
    // SAFETY: reads the 12 bytes the caller vouches for.
    unsafe {
        let mut u = [0u32; 4];
        std::ptr::copy_nonoverlapping(p, u.as_mut_ptr() as *mut u8, 12);
        u[3] = ((u[2] >> 4) & KMASK2) | (((u[1] >> 6) & KMASK3) << 4);
        let aux = u[1] & KMASK1;
        u[1] = (u[2] & KMASK2) | (((u[0] >> 6) & KMASK3) << 4);
        u[2] = aux;
        u[0] &= KMASK1;
        _mm256_cvtepu8_epi16(_mm_set_epi32(
            u[3] as i32,
            u[2] as i32,
            u[1] as i32,
            u[0] as i32,
        ))
    }
}

/// Byte shuffles, one per group `j`, that broadcast 16-bit lane `j` of a 128-bit lane
/// (Q4_K/Q5_K scales). Tables, so that building them costs one load, not 32 inserts.
static BCAST16: [[u8; 32]; 8] = {
    let mut t = [[0u8; 32]; 8];
    let mut j = 0;
    while j < 8 {
        let mut k = 0;
        while k < 32 {
            t[j][k] = (2 * j + k % 2) as u8;
            k += 1;
        }
        j += 1;
    }
    t
};

/// Byte shuffles, one per group `g`, that pick byte `2g` eight times then `2g + 1` eight times
/// (Q6_K scales).
static PAIR8: [[u8; 16]; 8] = {
    let mut t = [[0u8; 16]; 8];
    let mut g = 0;
    while g < 8 {
        let mut k = 0;
        while k < 16 {
            t[g][k] = (2 * g + k / 8) as u8;
            k += 1;
        }
        g += 1;
    }
    t
};

/// One Q5_K super-block unpacked: eight groups of 32 quants, each group's 16-bit scale vector,
/// the 16-bit factors of the minimum term per pair of 16-value sums, and the float factors:
/// `accf += isum * d * d_a`, `accm += mprod * -(dm * d_a)`. (Q4_K and Q6_K have the 8-row
/// kernels below.)
struct SuperBlock {
    q: [__m256i; 8],
    scv: [__m256i; 8],
    mfac: __m256i,
    d: f32,
    dm: f32,
}

/// Q4_K-style (`FIVE = false`) and Q5_K super-blocks.
///
/// # Safety
/// `blk` must point to one whole Q4_K (144 bytes) or, when `FIVE`, Q5_K (176 bytes) super-block.
/// The CPU must have AVX2, FMA and F16C, and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn unpack_q45k<const FIVE: bool>(blk: *const u8) -> SuperBlock {
    // SAFETY: every offset read lies inside the super-block the caller vouches for.
    unsafe {
        let low = _mm256_set1_epi8(0x0f);
        let one = _mm256_set1_epi8(1);
        let head = std::slice::from_raw_parts(blk, 4);
        let sm = k4_scales_mins(blk.add(4));
        let sc = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sm));
        let mut scv = [_mm256_setzero_si256(); 8];
        for (j, v) in scv.iter_mut().enumerate() {
            *v = _mm256_shuffle_epi8(sc, load(BCAST16[j].as_ptr()));
        }
        let mn = _mm256_extracti128_si256(sm, 1);
        let mins16 = _mm256_set_m128i(_mm_unpackhi_epi16(mn, mn), _mm_unpacklo_epi16(mn, mn));
        let qs = blk.add(if FIVE { 48 } else { 16 });
        let qh = if FIVE {
            load(blk.add(16))
        } else {
            _mm256_setzero_si256()
        };
        let mut q = [_mm256_setzero_si256(); 8];
        for jj in 0..4 {
            let x = load(qs.add(32 * jj));
            let mut lo = _mm256_and_si256(x, low);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
            if FIVE {
                let sh_lo = _mm_cvtsi32_si128(2 * jj as i32);
                let sh_hi = _mm_cvtsi32_si128(2 * jj as i32 + 1);
                let hl = _mm256_and_si256(_mm256_srl_epi16(qh, sh_lo), one);
                let hh = _mm256_and_si256(_mm256_srl_epi16(qh, sh_hi), one);
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(hl, 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(hh, 4));
            }
            q[2 * jj] = lo;
            q[2 * jj + 1] = hi;
        }
        SuperBlock {
            q,
            scv,
            mfac: mins16,
            d: f16_at(head, 0),
            dm: f16_at(head, 2),
        }
    }
}

/// Q6_K super-blocks.
///
/// # Safety
/// `blk` must point to one whole Q6_K super-block (210 bytes). The CPU must have AVX2, FMA and
/// F16C, and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn unpack_q6k(blk: *const u8) -> SuperBlock {
    // SAFETY: every offset read lies inside the super-block the caller vouches for.
    unsafe {
        let low = _mm256_set1_epi8(0x0f);
        let three = _mm256_set1_epi8(3);
        let d = f16_at(std::slice::from_raw_parts(blk.add(208), 2), 0);
        let sc8 = _mm_loadu_si128(blk.add(192) as *const __m128i);
        let mut scv = [_mm256_setzero_si256(); 8];
        for (g, v) in scv.iter_mut().enumerate() {
            // Scale 2g for the group's first 16 values, scale 2g + 1 for the second 16.
            let pick = _mm_loadu_si128(PAIR8[g].as_ptr() as *const __m128i);
            *v = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, pick));
        }
        let mut q = [_mm256_setzero_si256(); 8];
        for h in 0..2 {
            let ql0 = load(blk.add(64 * h));
            let ql1 = load(blk.add(64 * h + 32));
            let qh = load(blk.add(128 + 32 * h));
            let h0 = _mm256_slli_epi16(_mm256_and_si256(qh, three), 4);
            let h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), three), 4);
            let h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), three), 4);
            let h3 = _mm256_and_si256(_mm256_srli_epi16(qh, 2), _mm256_set1_epi8(0x30));
            q[4 * h] = _mm256_or_si256(_mm256_and_si256(ql0, low), h0);
            q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(ql1, low), h1);
            q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low), h2);
            q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low), h3);
        }
        SuperBlock {
            q,
            scv,
            mfac: _mm256_cvtepi8_epi16(sc8),
            d,
            dm: d,
        }
    }
}

/// Sum of eight i32 lanes (exact).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    // SAFETY: registers only, on a CPU with the features (module contract, (a)).
    unsafe {
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 1)))
    }
}

/// Q4_K (`SIX = false`) or Q6_K rows one at a time, for the rows of a task past its last whole
/// group of eight: the same exact integer sums per super-block and the same f32 operations as
/// `portable::row_q4k` / `row_q6k` (and so as `rows8_*`).
///
/// # Safety
/// `w` and `a` as `matmul_q8_with` checked them (module contract, (b)); rows `r0..r1` inside `w`;
/// `out` valid for rows `0..r1 - r0` of every token of `a`. The CPU must have AVX2, FMA and F16C,
/// and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn rows1_kquant<const VNNI: bool, const SIX: bool>(
    w: &WeightBlocks,
    a: &Q8Acts,
    r0: usize,
    r1: usize,
    out: OutRows,
) {
    // SAFETY: every load is inside a row of `w` or a token of `a` and every store inside `out`
    // (module contract, (b)); the CPU has the features ((a)).
    unsafe {
        let (n, cols) = (a.n, a.cols);
        let nb = cols / 256;
        let bb = if SIX { 210 } else { 144 };
        let mut acc = [0f32; TILE];
        for r in r0..r1 {
            let row = w.row(r).as_ptr();
            for t0 in (0..n).step_by(TILE) {
                let nt = TILE.min(n - t0);
                acc[..nt].fill(0.0);
                for b in 0..nb {
                    let sb = if SIX {
                        unpack_q6k(row.add(b * bb))
                    } else {
                        unpack_q45k::<false>(row.add(b * bb))
                    };
                    for (t, acc) in acc[..nt].iter_mut().enumerate() {
                        let tt = t0 + t;
                        let ap = a.qs.as_ptr().add(tt * cols + 256 * b) as *const u8;
                        let mut i0 = _mm256_setzero_si256();
                        let mut i1 = _mm256_setzero_si256();
                        for j in (0..8).step_by(2) {
                            let (a0, a1) = (load(ap.add(32 * j)), load(ap.add(32 * j + 32)));
                            i0 = dot4_scaled::<VNNI>(i0, sb.q[j], a0, sb.scv[j]);
                            i1 = dot4_scaled::<VNNI>(i1, sb.q[j + 1], a1, sb.scv[j + 1]);
                        }
                        let isum = hsum_epi32(_mm256_add_epi32(i0, i1));
                        let s16 = a.sums16.as_ptr().add(tt * (cols / 16) + 16 * b);
                        let msum = hsum_epi32(_mm256_madd_epi16(sb.mfac, load(s16 as *const u8)));
                        let z = if SIX {
                            (isum - 32 * msum) as f32 * sb.d
                        } else {
                            isum as f32 * sb.d - msum as f32 * sb.dm
                        };
                        *acc += z * *a.d.get_unchecked(tt * nb + b);
                    }
                }
                for (t, &v) in acc[..nt].iter().enumerate() {
                    out.set(r - r0, t0 + t, v);
                }
            }
        }
    }
}

/// Rows of a K-quant type with `bb`-byte super-blocks unpacked by `unpack`.
///
/// # Safety
/// `w` and `a` as `matmul_q8_with` checked them (module contract, (b)); rows `r0..r1` inside `w`;
/// `out` valid for rows `0..r1 - r0` of every token of `a`. The CPU must have AVX2, FMA and F16C,
/// and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn rows_kquant<const VNNI: bool>(
    w: &WeightBlocks,
    a: &Q8Acts,
    r0: usize,
    r1: usize,
    out: OutRows,
    bb: usize,
    unpack: impl Fn(*const u8) -> SuperBlock,
) {
    // SAFETY: every load is inside a row of `w` or a token of `a` and every store inside `out`
    // (module contract, (b)); the CPU has the features ((a)).
    unsafe {
        let (n, cols) = (a.n, a.cols);
        let nb = cols / 256;
        let mut accf = [_mm256_setzero_ps(); TILE];
        let mut accm = [_mm256_setzero_ps(); TILE];
        for r in r0..r1 {
            let row = w.row(r).as_ptr();
            for t0 in (0..n).step_by(TILE) {
                let nt = TILE.min(n - t0);
                accf[..nt].fill(_mm256_setzero_ps());
                accm[..nt].fill(_mm256_setzero_ps());
                for b in 0..nb {
                    let sb = unpack(row.add(b * bb));
                    for t in 0..nt {
                        let tt = t0 + t;
                        let ap = a.qs.as_ptr().add(tt * cols + 256 * b) as *const u8;
                        // Two independent chains, so the dot products do not wait on each other.
                        let mut i0 = _mm256_setzero_si256();
                        let mut i1 = _mm256_setzero_si256();
                        for j in (0..8).step_by(2) {
                            let (a0, a1) = (load(ap.add(32 * j)), load(ap.add(32 * j + 32)));
                            i0 = dot4_scaled::<VNNI>(i0, sb.q[j], a0, sb.scv[j]);
                            i1 = dot4_scaled::<VNNI>(i1, sb.q[j + 1], a1, sb.scv[j + 1]);
                        }
                        let isum = _mm256_add_epi32(i0, i1);
                        let s16 = a.sums16.as_ptr().add(tt * (cols / 16) + 16 * b);
                        let mprod = _mm256_madd_epi16(sb.mfac, load(s16 as *const u8));
                        let da = *a.d.get_unchecked(tt * nb + b);
                        let (fd, fm) = (sb.d * da, -(sb.dm * da));
                        accf[t] =
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(fd), accf[t]);
                        accm[t] =
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(mprod), _mm256_set1_ps(fm), accm[t]);
                    }
                }
                for t in 0..nt {
                    out.set(r - r0, t0 + t, hsum8(accf[t]) + hsum8(accm[t]));
                }
            }
        }
    }
}

/// Tokens per pass of the 8-row K-quant kernels.
const TILE8: usize = 16;
/// How many groups of eight rows ahead the 8-row kernels prefetch, into L2. With the earlier
/// distance of one group into L1 a forward of 5 tokens took 73 ms on the 1.5B target and one
/// token 60 ms; with two groups into L2, 60 and 34 ms (bench/results, 2026-11-29): loads of the
/// next rows overlap the integer work instead of following it.
const PREFETCH_GROUPS: usize = 2;

/// Eight 32-byte rows transposed as 8x8 dwords: lane `r` of output `k` is dword `k` of row `r`.
/// (Also `matmul::dot8`'s transpose of eight f32 rows: the shuffles only move bits.)
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
pub(crate) unsafe fn transpose8(x: [__m256i; 8]) -> [__m256i; 8] {
    // SAFETY: registers only, on a CPU with the features (module contract, (a)).
    unsafe {
        let t0 = _mm256_unpacklo_epi32(x[0], x[1]);
        let t1 = _mm256_unpackhi_epi32(x[0], x[1]);
        let t2 = _mm256_unpacklo_epi32(x[2], x[3]);
        let t3 = _mm256_unpackhi_epi32(x[2], x[3]);
        let t4 = _mm256_unpacklo_epi32(x[4], x[5]);
        let t5 = _mm256_unpackhi_epi32(x[4], x[5]);
        let t6 = _mm256_unpacklo_epi32(x[6], x[7]);
        let t7 = _mm256_unpackhi_epi32(x[6], x[7]);
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        [
            _mm256_permute2x128_si256(u0, u4, 0x20),
            _mm256_permute2x128_si256(u1, u5, 0x20),
            _mm256_permute2x128_si256(u2, u6, 0x20),
            _mm256_permute2x128_si256(u3, u7, 0x20),
            _mm256_permute2x128_si256(u0, u4, 0x31),
            _mm256_permute2x128_si256(u1, u5, 0x31),
            _mm256_permute2x128_si256(u2, u6, 0x31),
            _mm256_permute2x128_si256(u3, u7, 0x31),
        ]
    }
}

/// The four bytes at `p` in every 32-bit lane.
///
/// # Safety
/// `p` must be valid for reading 4 bytes. The CPU must have AVX2, FMA and F16C, and AVX-512
/// F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn bcast4(p: *const u8) -> __m256i {
    // SAFETY: an unaligned read of the 4 bytes the caller vouches for.
    unsafe { _mm256_set1_epi32((p as *const i32).read_unaligned()) }
}

/// The 16 bytes at each of eight pointers as four vectors, lane `r` of output `i` holding
/// bytes `4i..4i + 4` at `p[r]`.
///
/// # Safety
/// Each of the eight pointers must be valid for reading 16 bytes. The CPU must have AVX2, FMA and
/// F16C, and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn transpose_heads(p: &[*const u8; 8]) -> [__m256i; 4] {
    // SAFETY: 16-byte loads at the pointers the caller vouches for.
    unsafe {
        let y: [__m256i; 4] = std::array::from_fn(|i| {
            _mm256_set_m128i(
                _mm_loadu_si128(p[i + 4] as *const __m128i),
                _mm_loadu_si128(p[i] as *const __m128i),
            )
        });
        let a0 = _mm256_unpacklo_epi32(y[0], y[1]);
        let a1 = _mm256_unpackhi_epi32(y[0], y[1]);
        let a2 = _mm256_unpacklo_epi32(y[2], y[3]);
        let a3 = _mm256_unpackhi_epi32(y[2], y[3]);
        [
            _mm256_unpacklo_epi64(a0, a2),
            _mm256_unpackhi_epi64(a0, a2),
            _mm256_unpacklo_epi64(a1, a3),
            _mm256_unpackhi_epi64(a1, a3),
        ]
    }
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C, and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn srl32(x: __m256i, n: usize) -> __m256i {
    // SAFETY: registers only, on a CPU with the features (module contract, (a)).
    unsafe { _mm256_srl_epi32(x, _mm_cvtsi32_si128(n as i32)) }
}

/// The f16 halves (`HIGH`: the upper ones) of eight 32-bit lanes as f32.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn halves_ps<const HIGH: bool>(x: __m256i) -> __m256 {
    // SAFETY: registers only, on a CPU with the features (module contract, (a)).
    unsafe {
        let pick = if HIGH {
            _mm256_set_epi64x(-1, 0x0f0e_0b0a_0706_0302, -1, 0x0f0e_0b0a_0706_0302)
        } else {
            _mm256_set_epi64x(-1, 0x0d0c_0908_0504_0100, -1, 0x0d0c_0908_0504_0100)
        };
        let packed = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(x, pick), 0b1000);
        _mm256_cvtph_ps(_mm256_castsi256_si128(packed))
    }
}

/// Prefetches part `part` of `parts` of the `bytes` bytes at `p` into L2 (a later group of eight
/// rows, a super-block column at a time: eight interleaved row streams defeat the hardware
/// prefetcher that one sequential row at a time keeps busy), the cache lines split evenly, so
/// that a kernel spreads a super-block's prefetches over its work instead of issuing them at
/// once. Prefetches never fault, so `p` may run past the matrix. A burst of 18-36 fills the
/// line-fill buffers and the prefetches themselves stall: in the AMX kernel they took 22% of the
/// samples at 8 tokens. Spread over four parts, the 1.5B forward took 0.96x the time at 8 tokens,
/// 0.93x at 16, 0.99x at 1 (`bench forward`, three interleaved rounds).
///
/// # Safety
/// The CPU must have SSE (every x86-64 has); `p` may be any address: prefetches never fault.
#[inline(always)]
unsafe fn prefetch_part(p: *const u8, bytes: usize, part: usize, parts: usize) {
    // SAFETY: prefetch hints, which never fault or change memory.
    unsafe {
        let lines = bytes.div_ceil(64);
        for l in part * lines / parts..(part + 1) * lines / parts {
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(64 * l) as *const i8);
        }
    }
}

/// Q4_K, eight rows at a time (`r0..r0 + 8`), one row per 32-bit lane: each super-block's
/// quants are transposed in registers so that one `vpdpbusd` does 32 multiply-adds for eight
/// rows, and the group scales are applied once per group and token (`vpmulld`), not once per
/// pair of bytes. The arithmetic is that of `portable::row_q4k`.
///
/// `IL`: the matrix is interleaved (`cascade_weights::Layout::Interleaved8`), so the transposed
/// vectors are loaded as they are instead of built: same vectors, same arithmetic.
///
/// # Safety
/// `w` and `a` as `matmul_q8_with` checked them (module contract, (b)); rows `r0..r1` inside `w`;
/// `out` valid for rows `0..r1 - r0` of every token of `a`. The CPU must have AVX2, FMA and F16C,
/// and AVX-512 F/BW/VL/VNNI when `VNNI`. `r0..r0 + 8` must be one whole group of eight rows.
#[inline(always)]
unsafe fn rows8_q4k<const VNNI: bool, const IL: bool>(
    w: &WeightBlocks,
    a: &Q8Acts,
    r0: usize,
    out: OutRows,
) {
    // SAFETY: every load is inside a row of `w` or a token of `a` and every store inside `out`
    // (module contract, (b)); the CPU has the features ((a)).
    unsafe {
        let (n, cols) = (a.n, a.cols);
        let nb = cols / 256;
        let low = _mm256_set1_epi8(0x0f);
        // Rows r0.. or group r0 / 8: either way the eight rows' bytes start here.
        let group = w.m.data.as_ptr().add(r0 * nb * 144);
        let rows: [*const u8; 8] = if IL {
            [group; 8]
        } else {
            std::array::from_fn(|i| w.row(r0 + i).as_ptr())
        };
        let mut accf = [_mm256_setzero_ps(); TILE8];
        let mut isum = [_mm256_setzero_si256(); TILE8];
        for t0 in (0..n).step_by(TILE8) {
            let nt = TILE8.min(n - t0);
            accf[..nt].fill(_mm256_setzero_ps());
            for b in 0..nb {
                let blk: [*const u8; 8] = std::array::from_fn(|i| rows[i].add(144 * b));
                let rec = group.add(8 * 144 * b);
                let ahead = group.wrapping_add(8 * 144 * (PREFETCH_GROUPS * nb + b));
                // d | dmin, then the 12 bytes of packed scales and mins, lane r = row r.
                let [dd, q0, q1, q2] = if IL {
                    std::array::from_fn(|i| load(rec.add(32 * i)))
                } else {
                    transpose_heads(&blk)
                };
                let (dv, dminv) = (halves_ps::<false>(dd), halves_ps::<true>(dd));
                let m6 = _mm256_set1_epi32(63);
                let m4 = _mm256_set1_epi32(0x0f);
                let m2 = _mm256_set1_epi32(3);
                let mut sc = [_mm256_setzero_si256(); 8];
                let mut mins = [_mm256_setzero_si256(); 8];
                for j in 0..4 {
                    // ggml's get_scale_min_k4: bytes j and j + 4 for j < 4; for j + 4, the low and
                    // high nibbles of byte j + 8 and the top two bits of bytes j and j + 4.
                    sc[j] = _mm256_and_si256(srl32(q0, 8 * j), m6);
                    mins[j] = _mm256_and_si256(srl32(q1, 8 * j), m6);
                    let top0 = _mm256_and_si256(srl32(q0, 8 * j + 6), m2);
                    let top1 = _mm256_and_si256(srl32(q1, 8 * j + 6), m2);
                    sc[j + 4] = _mm256_or_si256(
                        _mm256_and_si256(srl32(q2, 8 * j), m4),
                        _mm256_slli_epi32(top0, 4),
                    );
                    mins[j + 4] = _mm256_or_si256(
                        _mm256_and_si256(srl32(q2, 8 * j + 4), m4),
                        _mm256_slli_epi32(top1, 4),
                    );
                }
                // The minima of groups 2p and 2p + 1 as a 16-bit pair, against the pair of 32-value
                // activation sums: one `vpdpwssd` per two groups.
                let mm: [__m256i; 4] = std::array::from_fn(|p| {
                    _mm256_or_si256(mins[2 * p], _mm256_slli_epi32(mins[2 * p + 1], 16))
                });
                for jj in 0..4 {
                    prefetch_part(ahead, 8 * 144, jj, 4);
                    let tq = if IL {
                        std::array::from_fn(|k| load(rec.add(128 + 256 * jj + 32 * k)))
                    } else {
                        transpose8(std::array::from_fn(|r| load(blk[r].add(16 + 32 * jj))))
                    };
                    let lo: [__m256i; 8] = std::array::from_fn(|k| _mm256_and_si256(tq[k], low));
                    let hi: [__m256i; 8] =
                        std::array::from_fn(|k| _mm256_and_si256(_mm256_srli_epi16(tq[k], 4), low));
                    let (sc_lo, sc_hi) = (sc[2 * jj], sc[2 * jj + 1]);
                    for (t, acc) in isum[..nt].iter_mut().enumerate() {
                        let ap =
                            a.qs.as_ptr().add((t0 + t) * cols + 256 * b + 64 * jj) as *const u8;
                        // Four independent chains of four (the sums are exact, so order is free).
                        let mut p = [_mm256_setzero_si256(); 4];
                        for k in (0..8).step_by(2) {
                            p[0] = dot4::<VNNI>(p[0], lo[k], bcast4(ap.add(4 * k)));
                            p[1] = dot4::<VNNI>(p[1], hi[k], bcast4(ap.add(32 + 4 * k)));
                            p[2] = dot4::<VNNI>(p[2], lo[k + 1], bcast4(ap.add(4 * k + 4)));
                            p[3] = dot4::<VNNI>(p[3], hi[k + 1], bcast4(ap.add(36 + 4 * k)));
                        }
                        let (p0, p1) = (_mm256_add_epi32(p[0], p[2]), _mm256_add_epi32(p[1], p[3]));
                        let s = _mm256_add_epi32(
                            _mm256_mullo_epi32(p0, sc_lo),
                            _mm256_mullo_epi32(p1, sc_hi),
                        );
                        // The first group sets the sums (a fill of the array was a memset call
                        // per super-block).
                        *acc = if jj == 0 {
                            s
                        } else {
                            _mm256_add_epi32(*acc, s)
                        };
                    }
                }
                for t in 0..nt {
                    let tt = t0 + t;
                    let s32 = a.sums32.as_ptr().add(tt * (cols / 32) + 8 * b) as *const u8;
                    let mut msum = _mm256_setzero_si256();
                    for (p, &mv) in mm.iter().enumerate() {
                        msum = dot2_i16::<VNNI>(msum, mv, bcast4(s32.add(4 * p)));
                    }
                    let x = _mm256_mul_ps(_mm256_cvtepi32_ps(isum[t]), dv);
                    let y = _mm256_mul_ps(_mm256_cvtepi32_ps(msum), dminv);
                    let da = _mm256_set1_ps(*a.d.get_unchecked(tt * nb + b));
                    accf[t] = _mm256_add_ps(accf[t], _mm256_mul_ps(_mm256_sub_ps(x, y), da));
                }
            }
            for (t, acc) in accf[..nt].iter().enumerate() {
                // Rows r0..r0 + 8 of token t are consecutive in the output.
                _mm256_storeu_ps(out.at(0, t0 + t), *acc);
            }
        }
    }
}

/// The 6-bit quants of group `K` (0..4) of a Q6_K half super-block from its transposed low
/// bits `l0`, `l1` and high bits `qh`: low nibbles of `l0` / `l1` for groups 0 / 1, high nibbles
/// for 2 / 3, with bit pairs 0, 1, 2, 3 of `qh` on top.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn q6_group<const K: usize>(
    l0: &[__m256i; 8],
    l1: &[__m256i; 8],
    qh: &[__m256i; 8],
) -> [__m256i; 8] {
    // SAFETY: registers only, on a CPU with the features (module contract, (a)).
    unsafe {
        let low = _mm256_set1_epi8(0x0f);
        let three = _mm256_set1_epi8(3);
        let top = _mm256_set1_epi8(0x30);
        std::array::from_fn(|c| {
            let (lo, h) = match K {
                0 => (
                    _mm256_and_si256(l0[c], low),
                    _mm256_slli_epi16(_mm256_and_si256(qh[c], three), 4),
                ),
                1 => (
                    _mm256_and_si256(l1[c], low),
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh[c], 2), three), 4),
                ),
                2 => (
                    _mm256_and_si256(_mm256_srli_epi16(l0[c], 4), low),
                    _mm256_and_si256(qh[c], top),
                ),
                _ => (
                    _mm256_and_si256(_mm256_srli_epi16(l1[c], 4), low),
                    _mm256_and_si256(_mm256_srli_epi16(qh[c], 2), top),
                ),
            };
            _mm256_or_si256(lo, h)
        })
    }
}

/// Q6_K, eight rows at a time, one row per 32-bit lane, as [`rows8_q4k`]: the arithmetic of
/// `portable::row_q6k`.
/// `IL` as in [`rows8_q4k`].
///
/// # Safety
/// `w` and `a` as `matmul_q8_with` checked them (module contract, (b)); rows `r0..r1` inside `w`;
/// `out` valid for rows `0..r1 - r0` of every token of `a`. The CPU must have AVX2, FMA and F16C,
/// and AVX-512 F/BW/VL/VNNI when `VNNI`. `r0..r0 + 8` must be one whole group of eight rows.
#[inline(always)]
unsafe fn rows8_q6k<const VNNI: bool, const IL: bool>(
    w: &WeightBlocks,
    a: &Q8Acts,
    r0: usize,
    out: OutRows,
) {
    // SAFETY: every load is inside a row of `w` or a token of `a` and every store inside `out`
    // (module contract, (b)); the CPU has the features ((a)).
    unsafe {
        let (n, cols) = (a.n, a.cols);
        let nb = cols / 256;
        let group = w.m.data.as_ptr().add(r0 * nb * 210);
        let rows: [*const u8; 8] = if IL {
            [group; 8]
        } else {
            std::array::from_fn(|i| w.row(r0 + i).as_ptr())
        };
        let mut accf = [_mm256_setzero_ps(); TILE8];
        let mut isum = [_mm256_setzero_si256(); TILE8];
        for t0 in (0..n).step_by(TILE8) {
            let nt = TILE8.min(n - t0);
            accf[..nt].fill(_mm256_setzero_ps());
            for b in 0..nb {
                let blk: [*const u8; 8] = std::array::from_fn(|i| rows[i].add(210 * b));
                let rec = group.add(8 * 210 * b);
                let ahead = group.wrapping_add(8 * 210 * (PREFETCH_GROUPS * nb + b));
                // Signed scales, lane r = row r; and as (sc_2i, sc_2i+1) 16-bit pairs for the
                // offset term.
                let heads: [*const u8; 8] = std::array::from_fn(|r| blk[r].add(192));
                let sq = if IL {
                    std::array::from_fn(|i| load(rec.add(1536 + 32 * i)))
                } else {
                    transpose_heads(&heads)
                };
                let mut sc = [_mm256_setzero_si256(); 16];
                let mut sp = [_mm256_setzero_si256(); 8];
                let lo16 = _mm256_set1_epi32(0xffff);
                for (i, &q) in sq.iter().enumerate() {
                    for k in 0..4 {
                        let up = _mm256_sll_epi32(q, _mm_cvtsi32_si128(24 - 8 * k as i32));
                        sc[4 * i + k] = _mm256_sra_epi32(up, _mm_cvtsi32_si128(24));
                    }
                    let even = _mm256_srai_epi16(_mm256_slli_epi16(q, 8), 8);
                    let odd = _mm256_srai_epi16(q, 8);
                    sp[2 * i] =
                        _mm256_or_si256(_mm256_and_si256(even, lo16), _mm256_slli_epi32(odd, 16));
                    sp[2 * i + 1] = _mm256_or_si256(
                        _mm256_srli_epi32(even, 16),
                        _mm256_andnot_si256(lo16, odd),
                    );
                }
                let dv = if IL {
                    _mm256_cvtph_ps(_mm_loadu_si128(rec.add(1664) as *const __m128i))
                } else {
                    let v: [i16; 8] =
                        std::array::from_fn(|r| (blk[r].add(208) as *const i16).read_unaligned());
                    _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr() as *const __m128i))
                };
                for half in 0..2 {
                    // Dwords 16 * half.., 16 * half + 8.. and 32 + 8 * half.. of the super-blocks.
                    let part = |at: usize| -> [__m256i; 8] {
                        if IL {
                            std::array::from_fn(|k| load(rec.add(32 * (at / 4) + 32 * k)))
                        } else {
                            transpose8(std::array::from_fn(|r| load(blk[r].add(at))))
                        }
                    };
                    let l0 = part(64 * half);
                    let l1 = part(64 * half + 32);
                    let qh = part(128 + 32 * half);
                    // Groups 4 * half + 0, 1, then + 2, 3: two groups (16 `vpdpbusd`) per token and
                    // pass, as the Q4_K kernel (one group per pass ran at 70% of its rate).
                    for pair in 0..2 {
                        prefetch_part(ahead, 8 * 210, 2 * half + pair, 4);
                        let g = 4 * half + 2 * pair;
                        let (qa, qb) = if pair == 0 {
                            (q6_group::<0>(&l0, &l1, &qh), q6_group::<1>(&l0, &l1, &qh))
                        } else {
                            (q6_group::<2>(&l0, &l1, &qh), q6_group::<3>(&l0, &l1, &qh))
                        };
                        let scs = [sc[2 * g], sc[2 * g + 1], sc[2 * g + 2], sc[2 * g + 3]];
                        for (t, acc) in isum[..nt].iter_mut().enumerate() {
                            let ap =
                                a.qs.as_ptr().add((t0 + t) * cols + 256 * b + 32 * g) as *const u8;
                            let mut p = [_mm256_setzero_si256(); 4];
                            for c in 0..4 {
                                p[0] = dot4::<VNNI>(p[0], qa[c], bcast4(ap.add(4 * c)));
                                p[1] = dot4::<VNNI>(p[1], qa[c + 4], bcast4(ap.add(16 + 4 * c)));
                                p[2] = dot4::<VNNI>(p[2], qb[c], bcast4(ap.add(32 + 4 * c)));
                                p[3] = dot4::<VNNI>(p[3], qb[c + 4], bcast4(ap.add(48 + 4 * c)));
                            }
                            let s = _mm256_add_epi32(
                                _mm256_add_epi32(
                                    _mm256_mullo_epi32(p[0], scs[0]),
                                    _mm256_mullo_epi32(p[1], scs[1]),
                                ),
                                _mm256_add_epi32(
                                    _mm256_mullo_epi32(p[2], scs[2]),
                                    _mm256_mullo_epi32(p[3], scs[3]),
                                ),
                            );
                            // The first pass sets the sums (exact integers: order is free).
                            *acc = if g == 0 { s } else { _mm256_add_epi32(*acc, s) };
                        }
                    }
                }
                for t in 0..nt {
                    let tt = t0 + t;
                    let s16 = a.sums16.as_ptr().add(tt * (cols / 16) + 16 * b) as *const u8;
                    let mut msum = _mm256_setzero_si256();
                    for (i, &mv) in sp.iter().enumerate() {
                        msum = dot2_i16::<VNNI>(msum, mv, bcast4(s16.add(4 * i)));
                    }
                    let tot = _mm256_sub_epi32(isum[t], _mm256_slli_epi32(msum, 5));
                    let z = _mm256_mul_ps(_mm256_cvtepi32_ps(tot), dv);
                    let da = _mm256_set1_ps(*a.d.get_unchecked(tt * nb + b));
                    accf[t] = _mm256_add_ps(accf[t], _mm256_mul_ps(z, da));
                }
            }
            for (t, acc) in accf[..nt].iter().enumerate() {
                // Rows r0..r0 + 8 of token t are consecutive in the output.
                _mm256_storeu_ps(out.at(0, t0 + t), *acc);
            }
        }
    }
}

/// Rows `r0..r1` (whole groups of eight) of Q4_K or Q6_K on the 8-row kernels.
///
/// # Safety
/// `w` and `a` as `matmul_q8_with` checked them (module contract, (b)); rows `r0..r1` inside `w`;
/// `out` valid for rows `0..r1 - r0` of every token of `a`. The CPU must have AVX2, FMA and F16C,
/// and AVX-512 F/BW/VL/VNNI when `VNNI`. `r0..r1` must be whole groups of eight rows.
#[inline(always)]
unsafe fn groups8<const VNNI: bool, const IL: bool>(
    w: &WeightBlocks,
    a: &Q8Acts,
    r0: usize,
    r1: usize,
    out: OutRows,
) {
    // SAFETY: every load is inside a row of `w` or a token of `a` and every store inside `out`
    // (module contract, (b)); the CPU has the features ((a)).
    unsafe {
        for r in (r0..r1).step_by(8) {
            let o = out.offset(r - r0);
            if w.kind == Kernel::Q4K {
                rows8_q4k::<VNNI, IL>(w, a, r, o);
            } else {
                rows8_q6k::<VNNI, IL>(w, a, r, o);
            }
        }
    }
}

/// # Safety
/// `w` and `a` as `matmul_q8_with` checked them (module contract, (b)); rows `r0..r1` inside `w`;
/// `out` valid for rows `0..r1 - r0` of every token of `a`. The CPU must have AVX2, FMA and F16C,
/// and AVX-512 F/BW/VL/VNNI when `VNNI`.
#[inline(always)]
unsafe fn rows_any<const VNNI: bool>(
    w: &WeightBlocks,
    a: &Q8Acts,
    r0: usize,
    r1: usize,
    out: OutRows,
) {
    // SAFETY: every load is inside a row of `w` or a token of `a` and every store inside `out`
    // (module contract, (b)); the CPU has the features ((a)).
    unsafe {
        match w.kind {
            // Interleaved matrices: whole groups of eight rows (the layout needs rows a multiple of
            // eight, and tasks start at multiples of 16), at every token count.
            Kernel::Q4K | Kernel::Q6K if w.m.layout == Layout::Interleaved8 => {
                groups8::<VNNI, true>(w, a, r0, r1, out)
            }
            // One token of Q6_K: a row at a time. The 8-row kernel's six transposes per super-block
            // cost more than its shared scale work saves when there is one token to amortize them
            // over: streamed from DRAM the 8-row kernel took 1.18x / 1.14x the row kernel's time on
            // 8960x1536 / 1536x8960, cached 1.06x / 0.99x (in-process A/B, each variant reading
            // its own matrix, first in turn, medians of 200 pairs; bitwise the same sums). From
            // two tokens on the 8-row kernel wins, and Q4_K's wins at any count.
            Kernel::Q6K if a.n == 1 => rows1_kquant::<VNNI, true>(w, a, r0, r1, out),
            Kernel::Q4K | Kernel::Q6K => {
                // Whole groups of eight rows on the 8-row kernel, the rest one at a time.
                let full = r0 + (r1 - r0) / 8 * 8;
                groups8::<VNNI, false>(w, a, r0, full, out);
                let tail = out.offset(full - r0);
                if w.kind == Kernel::Q4K {
                    rows1_kquant::<VNNI, false>(w, a, full, r1, tail)
                } else {
                    rows1_kquant::<VNNI, true>(w, a, full, r1, tail)
                }
            }
            Kernel::Q5K => rows_kquant::<VNNI>(w, a, r0, r1, out, 176, |b| unpack_q45k::<true>(b)),
            k if a.n == 1 => rows1_b32::<VNNI>(k, w, a, r0, r1, out),
            k => rows_b32::<VNNI>(k, w, a, r0, r1, out),
        }
    }
}

/// AVX2 path. Caller guarantees the CPU has AVX2, FMA and F16C.
///
/// # Safety
/// `w`, `a` and `out` as in [`rows_any`]; the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows_avx2(w: &WeightBlocks, a: &Q8Acts, r0: usize, r1: usize, out: OutRows) {
    // SAFETY: the caller vouches for `w`, `a` and `out` as `rows_any` needs them (module
    // contract, (b)) and for the features this function is compiled with ((a)).
    unsafe { rows_any::<false>(w, a, r0, r1, out) }
}

/// AVX-512 VNNI path. Caller guarantees AVX2, FMA, F16C, AVX-512 F/BW/VL and VNNI.
///
/// # Safety
/// `w`, `a` and `out` as in [`rows_any`]; the CPU must have AVX2, FMA, F16C, AVX-512 F/BW/VL and
/// VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn rows_vnni(w: &WeightBlocks, a: &Q8Acts, r0: usize, r1: usize, out: OutRows) {
    // SAFETY: the caller vouches for `w`, `a` and `out` as `rows_any` needs them (module
    // contract, (b)) and for the features this function is compiled with ((a)).
    unsafe { rows_any::<true>(w, a, r0, r1, out) }
}

/// Fewest tokens for which the tile unit beats the 8-row VNNI kernel, per type: Q4_K from 4
/// (streamed 8960x1536: 0.86x VNNI's time at 4 tokens, 0.68-0.92x at 8, 0.58-0.63x at 16; from
/// L2 0.93x, 0.66x, 0.54x), Q6_K, whose sixteen 16-value sub-blocks cost a tile store and a
/// scaling each, from 12 (streamed 1.2x at 4, 0.94-1.05x at 8, 0.88x at 12, 0.83x at 16; the
/// whole 1.5B forward of 8 tokens within 1% either way; `bench/examples/amx_probe.rs`, one
/// thread).
fn amx_min_tokens(kind: Kernel) -> usize {
    if kind == Kernel::Q4K {
        4
    } else {
        12
    }
}

/// AMX path: interleaved Q4_K and Q6_K from [`amx_min_tokens`] tokens on the tile unit, 16 rows at a
/// time; everything else (and a last group of eight) on the VNNI path.
///
/// # Safety
/// `w`, `a` and `out` as in [`rows_any`]; the CPU must have every feature of the VNNI path and
/// AMX must be usable ([`amx_usable`]).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn rows_amx(w: &WeightBlocks, a: &Q8Acts, r0: usize, r1: usize, out: OutRows) {
    // SAFETY: the caller vouches for `w`, `a` and `out` (module contract, (b)), for the VNNI
    // features and for AMX; the 16-row steps stay inside r0..r1.
    unsafe {
        let tiles = matches!(w.kind, Kernel::Q4K | Kernel::Q6K)
            && w.m.layout == Layout::Interleaved8
            && a.n >= amx_min_tokens(w.kind);
        let full = if tiles { r0 + (r1 - r0) / 16 * 16 } else { r0 };
        for r in (r0..full).step_by(16) {
            if w.kind == Kernel::Q4K {
                amx::rows16_q4k(w, a, r, out.offset(r - r0));
            } else {
                amx::rows16_q6k(w, a, r, out.offset(r - r0));
            }
        }
        rows_any::<true>(w, a, full, r1, out.offset(full - r0));
    }
}

/// Register-only loop of 8 independent 32-way 8-bit dot products per iteration: the peak rate
/// of the integer units (for `cascade bench`'s fraction of the floor).
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C, AVX-512 F/BW/VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn peak_vnni(iters: u64) -> i64 {
    // Opaque operands, so the loop cannot be folded.
    let w = _mm256_set1_epi8(std::hint::black_box(3));
    let a = _mm256_set1_epi8(std::hint::black_box(-1));
    let mut acc = [_mm256_setzero_si256(); 8];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_dpbusd_epi32(*v, w, a);
        }
    }
    let mut s = 0i64;
    for v in acc {
        s += _mm256_extract_epi32(v, 0) as i64;
    }
    s
}

/// [`peak_vnni`] with AVX2's `vpmaddubsw` + `vpmaddwd` pair.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn peak_avx2(iters: u64) -> i64 {
    // Opaque operands, so the loop cannot be folded.
    let w = _mm256_set1_epi8(std::hint::black_box(3));
    let a = _mm256_set1_epi8(std::hint::black_box(-1));
    let mut acc = [_mm256_setzero_si256(); 8];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            // SAFETY: registers only; this function is compiled with AVX2 (module contract, (a)).
            *v = unsafe { dot4::<false>(*v, w, a) };
        }
    }
    let mut s = 0i64;
    for v in acc {
        s += _mm256_extract_epi32(v, 0) as i64;
    }
    s
}
