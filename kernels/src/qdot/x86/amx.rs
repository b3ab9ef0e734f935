//! AMX (Advanced Matrix Extensions) products for the interleaved Q4_K layout, at batch sizes
//! where the 8-row VNNI kernel is bound by its multiply-add instructions: continuous batching's
//! decode steps, verification windows and prefill chunks.
//!
//! One `tdpbsud` multiplies a tile of up to 16 tokens by 16 weight rows over one 32-value
//! sub-block (8192 multiply-adds, a few nanoseconds); the sub-block sums are stored to L1 and
//! scaled, summed and converted exactly as the VNNI kernel does it, so the integers and the
//! float operations, and therefore the results, are bitwise those of the portable twin.
//!
//! The tile unit needs the weights as bytes: each super-block's nibbles of two groups of eight
//! rows (16 rows, one task) are unpacked once per token tile into two 8 x 64-byte tiles per
//! 64 values. The activations are read in place (one token per tile row, the row stride being
//! the token stride).
//!
//! # Safety contract
//! As the parent module's, and: every function here is reached only through [`super::rows_amx`],
//! which `matmul_q8_with` calls only when [`usable`] said yes (the CPU has AMX-TILE and AMX-INT8,
//! the OS saves the tile state and granted this process its use), on a CPU with every feature of
//! the VNNI path.

use std::arch::asm;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::super::{OutRows, WeightBlocks};
use super::{load, prefetch_part, PREFETCH_GROUPS};
use crate::q8::Q8Acts;

/// Tokens per tile (the tile unit's row count).
const TOKENS: usize = 16;
/// Bytes of a Q4_K super-block.
const Q4K_BYTES: usize = 144;

/// Whether this process may run the tile instructions (probed once; on Linux the first call asks
/// the kernel for the tile state, `arch_prctl(ARCH_REQ_XCOMP_PERM)`).
pub(crate) fn usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| cpu_has_amx() && os_saves_tiles() && request_tile_state())
}

fn cpu_has_amx() -> bool {
    // Leaf 7 is read only when leaf 0 says it exists. EDX bit 24: AMX-TILE, bit 25: AMX-INT8.
    __cpuid(0).eax >= 7 && (__cpuid_count(7, 0).edx >> 24) & 3 == 3
}

fn os_saves_tiles() -> bool {
    let osxsave = (__cpuid(1).ecx >> 27) & 1 == 1;
    // XCR0 bits 17 and 18: the OS saves the tile configuration and data.
    // SAFETY: `xgetbv` exists when the OS enabled XSAVE (OSXSAVE, checked first).
    osxsave && (unsafe { xcr0() } >> 17) & 3 == 3
}

/// # Safety
/// The CPU must have XSAVE enabled by the OS (CPUID.1:ECX.OSXSAVE).
#[target_feature(enable = "xsave")]
unsafe fn xcr0() -> u64 {
    // SAFETY: the caller checked OSXSAVE, so `xgetbv` does not fault.
    unsafe { _xgetbv(0) }
}

#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a system call with integer arguments only; it changes this process's permitted
    // extended state and nothing in its memory.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// A tile configuration (palette 1) for `rows` tokens: tiles 0-1 sums (`rows` x 16 i32); for
/// Q4_K's 32-value sub-blocks 2-3 activations (`rows` x 32 bytes) and 4-5 weights (8 rows of
/// 16 columns x 4 bytes); for Q6_K's 16-value ones 6 activations (`rows` x 16 bytes) and 7
/// weights (4 rows of 16 x 4 bytes).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new(rows: usize) -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        let shapes = [
            (rows, 64),
            (rows, 64),
            (rows, 32),
            (rows, 32),
            (8, 64),
            (8, 64),
            (rows, 16),
            (4, 64),
        ];
        for (t, (r, colsb)) in shapes.into_iter().enumerate() {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&(colsb as u16).to_le_bytes());
            c[48 + t] = r as u8;
        }
        TileConfig(c)
    }
}

/// Configures this thread's tiles for `rows` tokens, unless they already are. `ldtilecfg` costs
/// about 50 ns and waits for the tile unit to drain (loaded once per task it took 12% of the
/// kernel's time at 64 tokens), so the loaded configuration is read back first (`sttilecfg`,
/// a store of 64 bytes; all zeros when none is loaded) and compared: nothing is assumed about
/// what else in the process (an embedding application, another library) did with the tiles.
///
/// # Safety
/// The CPU must have AMX and this process its tile state ([`usable`]).
#[inline(always)]
unsafe fn configure(rows: usize) {
    let want = TileConfig::new(rows);
    let mut have = TileConfig([0u8; 64]);
    // SAFETY: writes the 64 bytes of `have`; AMX is usable (caller's contract).
    unsafe { asm!("sttilecfg [{}]", in(reg) have.0.as_mut_ptr(), options(nostack)) };
    if have.0 != want.0 {
        // SAFETY: reads the 64 bytes of `want`; AMX is usable (caller's contract).
        unsafe { asm!("ldtilecfg [{}]", in(reg) want.0.as_ptr(), options(nostack, readonly)) };
    }
}

/// Two sub-blocks' sums: `c0 = a0 · b0` and `c1 = a1 · b1`, each a tile of the configured token
/// rows x 16 i32, written 64 bytes per token.
///
/// # Safety
/// A [`TileConfig`] of `rows` tokens is loaded; `a0` / `a1` are valid for `rows` reads of 32
/// bytes `a_stride` apart, `b0` / `b1` for 512 bytes, `c0` / `c1` for `rows` x 64 bytes of
/// writes.
#[inline(always)]
unsafe fn sums2(
    a0: *const u8,
    a1: *const u8,
    a_stride: usize,
    b0: *const u8,
    b1: *const u8,
    c0: *mut i32,
    c1: *mut i32,
) {
    // SAFETY: every tile load and store stays inside the buffers the caller vouches for.
    unsafe {
        asm!(
            "tileloadd tmm2, [{a0} + {sa}*1]",
            "tileloadd tmm4, [{b0} + {sb}*1]",
            "tileloadd tmm3, [{a1} + {sa}*1]",
            "tileloadd tmm5, [{b1} + {sb}*1]",
            "tilezero tmm0",
            "tilezero tmm1",
            "tdpbsud tmm0, tmm2, tmm4",
            "tdpbsud tmm1, tmm3, tmm5",
            "tilestored [{c0} + {sb}*1], tmm0",
            "tilestored [{c1} + {sb}*1], tmm1",
            a0 = in(reg) a0,
            a1 = in(reg) a1,
            sa = in(reg) a_stride,
            b0 = in(reg) b0,
            b1 = in(reg) b1,
            sb = in(reg) 64usize,
            c0 = in(reg) c0,
            c1 = in(reg) c1,
            options(nostack),
        );
    }
}

/// 64-byte aligned scratch of one task, left uninitialized (a zeroing `memset` per task cost
/// 2% of the time): every byte is written before it is read, through the raw pointers of
/// [`Scratch::parts`].
#[repr(C, align(64))]
struct Scratch {
    /// A super-block's weight tiles (Q4_K: eight sub-blocks of 8 x 64 bytes, Q6_K: sixteen of
    /// 4 x 64).
    b: [u8; 4096],
    /// The sub-blocks' sums (token x 16 rows), at most sixteen sub-blocks.
    c: [[i32; TOKENS * 16]; 16],
    /// Float sums per token of the tile.
    acc: [[f32; 16]; TOKENS],
}

impl Scratch {
    /// Pointers to the weight tiles (sub-block `j` at `512 j`), the sums (sub-block `j` at
    /// `256 j`) and the float sums (token `t` at `16 t`) of uninitialized scratch.
    fn parts(s: &mut MaybeUninit<Scratch>) -> (*mut u8, *mut i32, *mut f32) {
        let p = s.as_mut_ptr();
        // SAFETY: field addresses of `p`, taken without creating references to its
        // uninitialized contents.
        unsafe {
            (
                (&raw mut (*p).b).cast(),
                (&raw mut (*p).c).cast(),
                (&raw mut (*p).acc).cast(),
            )
        }
    }
}

/// The 32 bytes at `p0` and at `p1` as one vector (lanes 0-7 from `p0`, 8-15 from `p1`).
///
/// # Safety
/// Both pointers valid for reading 32 bytes; the CPU has AVX-512 F.
#[inline(always)]
unsafe fn pair(p0: *const u8, p1: *const u8) -> __m512i {
    // SAFETY: two 32-byte loads the caller vouches for.
    unsafe { _mm512_inserti64x4::<1>(_mm512_castsi256_si512(load(p0)), load(p1)) }
}

/// # Safety
/// The CPU has AVX-512 F.
#[inline(always)]
unsafe fn srl(x: __m512i, n: u32) -> __m512i {
    // SAFETY: registers only.
    unsafe { _mm512_srl_epi32(x, _mm_cvtsi32_si128(n as i32)) }
}

/// Unpacks the nibbles of super-block `b` of two groups (records `rec0`, `rec1`) into the eight
/// sub-blocks' weight tiles: row `k` of sub-block `2jj` holds the low nibbles of dword `8jj + k`
/// of the 16 rows, sub-block `2jj + 1` the high ones (the layout `vpdpbusd` reads, which is the
/// tile unit's too).
///
/// # Safety
/// `rec0` and `rec1` valid for a record of eight super-blocks; `b` 64-byte aligned and valid
/// for 4096 bytes of writes; the CPU has AVX-512 F/BW.
#[inline(always)]
unsafe fn unpack_q4k(rec0: *const u8, rec1: *const u8, b: *mut u8) {
    // SAFETY: loads inside the records, aligned stores inside `b`.
    unsafe {
        let low = _mm512_set1_epi8(0x0f);
        for jj in 0..4 {
            for k in 0..8 {
                let at = 128 + 256 * jj + 32 * k;
                let v = pair(rec0.add(at), rec1.add(at));
                let lo = _mm512_and_si512(v, low);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                _mm512_store_si512(b.add(1024 * jj + 64 * k) as *mut __m512i, lo);
                _mm512_store_si512(b.add(1024 * jj + 512 + 64 * k) as *mut __m512i, hi);
            }
        }
    }
}

/// The sub-block scales and minima of 16 rows (lane = row), as the 8-row kernel decodes them
/// (ggml's `get_scale_min_k4`), and `d`, `dmin` as f32.
///
/// # Safety
/// As [`unpack_q4k`].
#[inline(always)]
unsafe fn heads_q4k(
    rec0: *const u8,
    rec1: *const u8,
) -> ([__m512i; 8], [__m512i; 4], __m512, __m512) {
    // SAFETY: loads inside the records; registers otherwise.
    unsafe {
        let [dd, q0, q1, q2] = std::array::from_fn(|i| pair(rec0.add(32 * i), rec1.add(32 * i)));
        let dv = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dd));
        let dminv = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(srl(dd, 16)));
        let (m6, m4, m2) = (
            _mm512_set1_epi32(63),
            _mm512_set1_epi32(15),
            _mm512_set1_epi32(3),
        );
        let mut sc = [_mm512_setzero_si512(); 8];
        let mut mins = [_mm512_setzero_si512(); 8];
        for j in 0..4 {
            let j8 = 8 * j as u32;
            sc[j] = _mm512_and_si512(srl(q0, j8), m6);
            mins[j] = _mm512_and_si512(srl(q1, j8), m6);
            let top0 = _mm512_slli_epi32::<4>(_mm512_and_si512(srl(q0, j8 + 6), m2));
            let top1 = _mm512_slli_epi32::<4>(_mm512_and_si512(srl(q1, j8 + 6), m2));
            sc[j + 4] = _mm512_or_si512(_mm512_and_si512(srl(q2, j8), m4), top0);
            mins[j + 4] = _mm512_or_si512(_mm512_and_si512(srl(q2, j8 + 4), m4), top1);
        }
        // The minima of groups 2p and 2p + 1 as a 16-bit pair, against the pair of 32-value
        // activation sums.
        let mm = std::array::from_fn(|p| {
            _mm512_or_si512(mins[2 * p], _mm512_slli_epi32::<16>(mins[2 * p + 1]))
        });
        (sc, mm, dv, dminv)
    }
}

/// Rows `r..r + 16` (two whole groups of eight) of an interleaved Q4_K matrix for every token
/// of `a`: the arithmetic of `portable::row_q4k`, bitwise.
///
/// # Safety
/// `w` an interleaved Q4_K matrix and `a` as `matmul_q8_with` checked them; rows `r..r + 16`
/// inside `w`; `out` valid for rows `0..16` of every token of `a`. The CPU has every feature of
/// the VNNI path and AMX is [`usable`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn rows16_q4k(w: &WeightBlocks, a: &Q8Acts, r: usize, out: OutRows) {
    // SAFETY: every load is inside the two groups of `w` or a token of `a`, every store inside
    // `out` or the scratch; AMX is usable (caller's contract).
    unsafe {
        let (n, cols) = (a.n, a.cols);
        let nb = cols / 256;
        let g0 = w.m.data.as_ptr().add(r * nb * Q4K_BYTES);
        let g1 = g0.add(8 * nb * Q4K_BYTES);
        let rec_bytes = 8 * Q4K_BYTES;
        let mut scratch = MaybeUninit::<Scratch>::uninit();
        let (bt, ct, acc) = Scratch::parts(&mut scratch);
        for t0 in (0..n).step_by(TOKENS) {
            let nt = TOKENS.min(n - t0);
            configure(nt);
            for t in 0..nt {
                _mm512_store_ps(acc.add(16 * t), _mm512_setzero_ps());
            }
            for b in 0..nb {
                let (rec0, rec1) = (g0.add(rec_bytes * b), g1.add(rec_bytes * b));
                // The next task's two groups (the 8-row kernel's distance), spread over the
                // tile products.
                let ahead = rec_bytes * (PREFETCH_GROUPS * nb + b);
                unpack_q4k(rec0, rec1, bt);
                let ap = (a.qs.as_ptr() as *const u8).add(t0 * cols + 256 * b);
                for j in (0..8).step_by(2) {
                    prefetch_part(g0.wrapping_add(ahead), rec_bytes, j / 2, 4);
                    prefetch_part(g1.wrapping_add(ahead), rec_bytes, j / 2, 4);
                    sums2(
                        ap.add(32 * j),
                        ap.add(32 * j + 32),
                        cols,
                        bt.add(512 * j),
                        bt.add(512 * j + 512),
                        ct.add(256 * j),
                        ct.add(256 * j + 256),
                    );
                }
                let (sc, mm, dv, dminv) = heads_q4k(rec0, rec1);
                for t in 0..nt {
                    let tt = t0 + t;
                    let mut isum = _mm512_setzero_si512();
                    for (j, &scj) in sc.iter().enumerate() {
                        let cj = _mm512_load_si512(ct.add(256 * j + 16 * t) as *const __m512i);
                        isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(cj, scj));
                    }
                    let s32 = a.sums32.as_ptr().add(tt * (cols / 32) + 8 * b) as *const i32;
                    let mut msum = _mm512_setzero_si512();
                    for (p, &mv) in mm.iter().enumerate() {
                        let pair = _mm512_set1_epi32(s32.add(p).read_unaligned());
                        msum = _mm512_dpwssd_epi32(msum, mv, pair);
                    }
                    let x = _mm512_mul_ps(_mm512_cvtepi32_ps(isum), dv);
                    let y = _mm512_mul_ps(_mm512_cvtepi32_ps(msum), dminv);
                    let da = _mm512_set1_ps(*a.d.get_unchecked(tt * nb + b));
                    let at = acc.add(16 * t);
                    let sum =
                        _mm512_add_ps(_mm512_load_ps(at), _mm512_mul_ps(_mm512_sub_ps(x, y), da));
                    _mm512_store_ps(at, sum);
                }
            }
            for t in 0..nt {
                // Rows r..r + 16 of token t are consecutive in the output.
                _mm512_storeu_ps(out.at(0, t0 + t), _mm512_load_ps(acc.add(16 * t)));
            }
        }
    }
}

/// One 16-value sub-block's sums: `c = a · b`, both signed (the configured token rows x 16 i32,
/// 64 bytes per token).
///
/// # Safety
/// A [`TileConfig`] of `rows` tokens is loaded; `a` is valid for `rows` reads of 16 bytes
/// `a_stride` apart, `b` for 256 bytes, `c` for `rows` x 64 bytes of writes.
#[inline(always)]
unsafe fn sums16(a: *const u8, a_stride: usize, b: *const u8, c: *mut i32) {
    // SAFETY: every tile load and store stays inside the buffers the caller vouches for.
    unsafe {
        asm!(
            "tileloadd tmm6, [{a} + {sa}*1]",
            "tileloadd tmm7, [{b} + {sb}*1]",
            "tilezero tmm0",
            "tdpbssd tmm0, tmm6, tmm7",
            "tilestored [{c} + {sb}*1], tmm0",
            a = in(reg) a,
            sa = in(reg) a_stride,
            b = in(reg) b,
            sb = in(reg) 64usize,
            c = in(reg) c,
            options(nostack),
        );
    }
}

/// Bytes of a Q6_K super-block.
const Q6K_BYTES: usize = 210;

/// Unpacks the 6-bit quants of super-block `b` of two groups (records `rec0`, `rec1`) into the
/// sixteen sub-blocks' weight tiles: dword `k` of 32-value group `g` is row `k % 4` of sub-block
/// `2g + k / 4`. The quants are those of the 8-row kernel's `q6_group` less 32 (signed, -32..31,
/// for `tdpbssd`): the offset term the VNNI kernel subtracts through the activation sums is then
/// inside the sub-block sums, the same integers (`Σ sc Σ a (q - 32) = Σ sc Σ a q - 32 Σ sc Σ a`).
///
/// # Safety
/// `rec0` and `rec1` valid for a record of eight super-blocks; `bt` 64-byte aligned and valid
/// for 4096 bytes of writes; the CPU has AVX-512 F/BW.
#[inline(always)]
unsafe fn unpack_q6k(rec0: *const u8, rec1: *const u8, bt: *mut u8) {
    // SAFETY: loads inside the records, aligned stores inside `bt`.
    unsafe {
        let low = _mm512_set1_epi8(0x0f);
        let three = _mm512_set1_epi8(3);
        let top = _mm512_set1_epi8(0x30);
        let offset = _mm512_set1_epi8(32);
        let dword = |i: usize| pair(rec0.add(32 * i), rec1.add(32 * i));
        for half in 0..2 {
            for k in 0..8 {
                let l0 = dword(16 * half + k);
                let l1 = dword(16 * half + 8 + k);
                let qh = dword(32 + 8 * half + k);
                let q = [
                    _mm512_or_si512(
                        _mm512_and_si512(l0, low),
                        _mm512_slli_epi16::<4>(_mm512_and_si512(qh, three)),
                    ),
                    _mm512_or_si512(
                        _mm512_and_si512(l1, low),
                        _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srli_epi16::<2>(qh), three)),
                    ),
                    _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(l0), low),
                        _mm512_and_si512(qh, top),
                    ),
                    _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(l1), low),
                        _mm512_and_si512(_mm512_srli_epi16::<2>(qh), top),
                    ),
                ];
                for (kk, v) in q.into_iter().enumerate() {
                    let sub = 2 * (4 * half + kk) + k / 4;
                    let v = _mm512_sub_epi8(v, offset);
                    _mm512_store_si512(bt.add(256 * sub + 64 * (k % 4)) as *mut __m512i, v);
                }
            }
        }
    }
}

/// The sixteen sub-block scales of 16 rows (lane = row, sign-extended) and `d` as f32.
///
/// # Safety
/// As [`unpack_q6k`].
#[inline(always)]
unsafe fn heads_q6k(rec0: *const u8, rec1: *const u8) -> ([__m512i; 16], __m512) {
    // SAFETY: loads inside the records; registers otherwise.
    unsafe {
        let mut sc = [_mm512_setzero_si512(); 16];
        for i in 0..4 {
            let q = pair(rec0.add(1536 + 32 * i), rec1.add(1536 + 32 * i));
            for k in 0..4 {
                let up = _mm512_sll_epi32(q, _mm_cvtsi32_si128(24 - 8 * k as i32));
                sc[4 * i + k] = _mm512_srai_epi32::<24>(up);
            }
        }
        let d0 = _mm_loadu_si128(rec0.add(1664) as *const __m128i);
        let d1 = _mm_loadu_si128(rec1.add(1664) as *const __m128i);
        let dv = _mm512_cvtph_ps(_mm256_set_m128i(d1, d0));
        (sc, dv)
    }
}

/// Rows `r..r + 16` (two whole groups of eight) of an interleaved Q6_K matrix for every token
/// of `a`: the arithmetic of `portable::row_q6k`, bitwise.
///
/// # Safety
/// As [`rows16_q4k`], for an interleaved Q6_K matrix.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn rows16_q6k(w: &WeightBlocks, a: &Q8Acts, r: usize, out: OutRows) {
    // SAFETY: every load is inside the two groups of `w` or a token of `a`, every store inside
    // `out` or the scratch; AMX is usable (caller's contract).
    unsafe {
        let (n, cols) = (a.n, a.cols);
        let nb = cols / 256;
        let g0 = w.m.data.as_ptr().add(r * nb * Q6K_BYTES);
        let g1 = g0.add(8 * nb * Q6K_BYTES);
        let rec_bytes = 8 * Q6K_BYTES;
        let mut scratch = MaybeUninit::<Scratch>::uninit();
        let (bt, ct, acc) = Scratch::parts(&mut scratch);
        for t0 in (0..n).step_by(TOKENS) {
            let nt = TOKENS.min(n - t0);
            configure(nt);
            for t in 0..nt {
                _mm512_store_ps(acc.add(16 * t), _mm512_setzero_ps());
            }
            for b in 0..nb {
                let (rec0, rec1) = (g0.add(rec_bytes * b), g1.add(rec_bytes * b));
                let ahead = rec_bytes * (PREFETCH_GROUPS * nb + b);
                unpack_q6k(rec0, rec1, bt);
                let ap = (a.qs.as_ptr() as *const u8).add(t0 * cols + 256 * b);
                for sub in 0..16 {
                    if sub % 2 == 0 {
                        prefetch_part(g0.wrapping_add(ahead), rec_bytes, sub / 2, 8);
                        prefetch_part(g1.wrapping_add(ahead), rec_bytes, sub / 2, 8);
                    }
                    sums16(ap.add(16 * sub), cols, bt.add(256 * sub), ct.add(256 * sub));
                }
                let (sc, dv) = heads_q6k(rec0, rec1);
                for t in 0..nt {
                    let tt = t0 + t;
                    // `isum - 32 msum` of the 8-row kernel, the offset being in the sums.
                    let mut tot = _mm512_setzero_si512();
                    for (j, &scj) in sc.iter().enumerate() {
                        let cj = _mm512_load_si512(ct.add(256 * j + 16 * t) as *const __m512i);
                        tot = _mm512_add_epi32(tot, _mm512_mullo_epi32(cj, scj));
                    }
                    let z = _mm512_mul_ps(_mm512_cvtepi32_ps(tot), dv);
                    let da = _mm512_set1_ps(*a.d.get_unchecked(tt * nb + b));
                    let at = acc.add(16 * t);
                    _mm512_store_ps(at, _mm512_add_ps(_mm512_load_ps(at), _mm512_mul_ps(z, da)));
                }
            }
            for t in 0..nt {
                // Rows r..r + 16 of token t are consecutive in the output.
                _mm512_storeu_ps(out.at(0, t0 + t), _mm512_load_ps(acc.add(16 * t)));
            }
        }
    }
}
