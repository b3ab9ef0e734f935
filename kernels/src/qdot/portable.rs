//! Portable twin of the SIMD integer products: the same integer sums per lane and the same float
//! operations in the same order, so its results are bitwise those of the AVX2 and VNNI paths.
//! It is the fallback on CPUs without AVX2 and the definition the SIMD code is tested against.
//!
//! The arithmetic of one output, with f32 vectors of eight lanes all starting at zero:
//! - 32-value block types, blocks taken in groups of eight (the last group padded with zero
//!   scales): for block `i` of a group, `s_i = d_w,i * d_a,i`; lane `l` of the block's exact
//!   integer dot product `isum[l]` (values `4l..4l+4`) goes to `accf0` (even blocks) or `accf1`
//!   (odd blocks) as `fma(isum[l], s_i, acc[l])`; `accm[i] = fma(m_i, dsum_a,i, accm[i])` for
//!   the block's minimum. Output: `hsum8(accf0 + accf1) + hsum8(accm)`.
//! - Q4_K and Q6_K: see [`row_q4k`] and [`row_q6k`] (exact integer sums per super-block, then
//!   a few f32 operations per super-block).
//! - Q5_K super-blocks: `isum[l]` sums the 32-value groups' products times their integer
//!   scales; `accf = fma(isum, d * d_a, accf)`; the minimum (Q4_K, Q5_K) or offset (Q6_K) term
//!   per lane `mprod[l]` (two 16-value sums times their integer factors) goes to
//!   `accm = fma(mprod, -(dmin * d_a), accm)` (Q6_K: `-(d * d_a) * 32`).
//!   Output: `hsum8(accf) + hsum8(accm)`.

use super::{Kernel, OutRows, WeightBlocks};
use crate::q8::Q8Acts;
use crate::quant::{f16_at, scale_min_k4};

/// The fixed summation tree of eight lanes that the SIMD paths use too.
#[inline(always)]
pub(crate) fn hsum8(v: &[f32; 8]) -> f32 {
    let s4 = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    (s4[0] + s4[2]) + (s4[1] + s4[3])
}

/// `isum[l] += sc * Σ_{k<4} w[4l+k] * a[4l+k]` over one 32-value group.
#[inline(always)]
fn group(isum: &mut [i32; 8], w: &[i32; 32], a: &[i8], sc: i32) {
    for l in 0..8 {
        let mut s = 0i32;
        for k in 0..4 {
            s += w[4 * l + k] * a[4 * l + k] as i32;
        }
        isum[l] += sc * s;
    }
}

#[inline(always)]
fn fma_lanes(accf: &mut [f32; 8], isum: &[i32; 8], s: f32) {
    for l in 0..8 {
        accf[l] = (isum[l] as f32).mul_add(s, accf[l]);
    }
}

/// One 32-value block of a 32-block type: its values as unsigned (or, for Q8_0, signed)
/// integers, its scale and its minimum (0 for Q8_0).
fn unpack_b32(kind: Kernel, b: &[u8], q: &mut [i32; 32]) -> (f32, f32) {
    match kind {
        Kernel::Q4_0 | Kernel::Q4_1 => {
            let (d, m, qs) = if kind == Kernel::Q4_0 {
                let d = f16_at(b, 0);
                (d, -8.0 * d, &b[2..18])
            } else {
                (f16_at(b, 0), f16_at(b, 2), &b[4..20])
            };
            for j in 0..16 {
                q[j] = (qs[j] & 0x0f) as i32;
                q[j + 16] = (qs[j] >> 4) as i32;
            }
            (d, m)
        }
        Kernel::Q5_0 | Kernel::Q5_1 => {
            let (d, m, hb, qs) = if kind == Kernel::Q5_0 {
                let d = f16_at(b, 0);
                (d, -16.0 * d, &b[2..6], &b[6..22])
            } else {
                (f16_at(b, 0), f16_at(b, 2), &b[4..8], &b[8..24])
            };
            let qh = u32::from_le_bytes([hb[0], hb[1], hb[2], hb[3]]);
            for j in 0..16 {
                let h0 = ((qh >> j) & 1) << 4;
                let h1 = ((qh >> (j + 16)) & 1) << 4;
                q[j] = ((qs[j] & 0x0f) as u32 | h0) as i32;
                q[j + 16] = ((qs[j] >> 4) as u32 | h1) as i32;
            }
            (d, m)
        }
        Kernel::Q8_0 => {
            for j in 0..32 {
                q[j] = b[2 + j] as i8 as i32;
            }
            (f16_at(b, 0), 0.0)
        }
        Kernel::Q4K | Kernel::Q5K | Kernel::Q6K => unreachable!("not a 32-value block type"),
    }
}

fn row_b32(kind: Kernel, row: &[u8], a: &Q8Acts, t: usize) -> f32 {
    let bb = kind.dtype().block_bytes();
    let nb = row.len() / bb;
    let (aq, ad, ads) = (a.row(t), a.scales(t), a.dsum32(t));
    let mut accf = [[0f32; 8]; 2];
    let mut accm = [0f32; 8];
    let mut q = [0i32; 32];
    for g in 0..nb.div_ceil(8) {
        for i in 0..8 {
            let b = 8 * g + i;
            if b >= nb {
                // Padding lane: zero scale, zero minimum.
                accm[i] = 0f32.mul_add(0.0, accm[i]);
                continue;
            }
            let (dw, mw) = unpack_b32(kind, &row[b * bb..(b + 1) * bb], &mut q);
            let mut isum = [0i32; 8];
            group(&mut isum, &q, &aq[32 * b..32 * b + 32], 1);
            fma_lanes(&mut accf[i % 2], &isum, dw * ad[b]);
            let mw = if kind == Kernel::Q8_0 { 0.0 } else { mw };
            let ds = if kind == Kernel::Q8_0 { 0.0 } else { ads[b] };
            accm[i] = mw.mul_add(ds, accm[i]);
        }
    }
    let mut sum = [0f32; 8];
    for l in 0..8 {
        sum[l] = accf[0][l] + accf[1][l];
    }
    hsum8(&sum) + hsum8(&accm)
}

/// Q4_K (`five == false`) and Q5_K super-blocks: 8 groups of 32 with 6-bit scales and mins.
fn row_q45k(five: bool, row: &[u8], a: &Q8Acts, t: usize) -> f32 {
    let bb = if five { 176 } else { 144 };
    let (aq, ad, s16) = (a.row(t), a.scales(t), a.sums16(t));
    let mut accf = [0f32; 8];
    let mut accm = [0f32; 8];
    let mut q = [0i32; 32];
    for (b, blk) in row.chunks_exact(bb).enumerate() {
        let d = f16_at(blk, 0);
        let dmin = f16_at(blk, 2);
        let scales = &blk[4..16];
        let (qh, qs) = if five {
            (&blk[16..48], &blk[48..176])
        } else {
            (&blk[0..0], &blk[16..144])
        };
        let mut isum = [0i32; 8];
        let mut mprod = [0i32; 8];
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, scales);
            let bytes = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            for l in 0..32 {
                let nib = if j % 2 == 0 {
                    bytes[l] & 0x0f
                } else {
                    bytes[l] >> 4
                };
                let hi = if five { ((qh[l] >> j) & 1) << 4 } else { 0 };
                q[l] = (nib | hi) as i32;
            }
            let base = 256 * b + 32 * j;
            group(&mut isum, &q, &aq[base..base + 32], sc as i32);
            mprod[j] =
                m as i32 * s16[16 * b + 2 * j] as i32 + m as i32 * s16[16 * b + 2 * j + 1] as i32;
        }
        fma_lanes(&mut accf, &isum, d * ad[b]);
        fma_lanes(&mut accm, &mprod, -(dmin * ad[b]));
    }
    hsum8(&accf) + hsum8(&accm)
}

/// Q4_K super-blocks, the arithmetic of the 8-row SIMD kernel: per super-block the exact integer
/// sums `isum = Σ_j sc_j Σ q·a` and `msum = Σ_j m_j Σ a`, then
/// `acc += ((isum · d) − (msum · dmin)) · d_a` in f32, one rounding per operation. A row's
/// result depends only on its own blocks and its token's activations, never on lanes.
pub(crate) fn row_q4k(row: &[u8], a: &Q8Acts, t: usize) -> f32 {
    let (aq, ad, s16) = (a.row(t), a.scales(t), a.sums16(t));
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(144).enumerate() {
        let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
        let (scales, qs) = (&blk[4..16], &blk[16..144]);
        let (mut isum, mut msum) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, scales);
            let bytes = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            let base = 256 * b + 32 * j;
            let mut s = 0i32;
            for (l, &byte) in bytes.iter().enumerate() {
                let q = if j % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                s += q as i32 * aq[base + l] as i32;
            }
            isum += sc as i32 * s;
            msum += m as i32 * (s16[16 * b + 2 * j] as i32 + s16[16 * b + 2 * j + 1] as i32);
        }
        let z = isum as f32 * d - msum as f32 * dmin;
        acc += z * ad[b];
    }
    acc
}

/// Q6_K super-blocks (16 groups of 16 with signed 8-bit scales, values offset by 32), the
/// arithmetic of the 8-row SIMD kernel: per super-block the exact integer
/// `Σ_g sc_g Σ q·a − 32 Σ_g sc_g Σ a`, then `acc += (int · d) · d_a` in f32.
pub(crate) fn row_q6k(row: &[u8], a: &Q8Acts, t: usize) -> f32 {
    let (aq, ad, s16) = (a.row(t), a.scales(t), a.sums16(t));
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(210).enumerate() {
        let (ql_all, qh_all, sc) = (&blk[0..128], &blk[128..192], &blk[192..208]);
        let d = f16_at(blk, 208);
        let (mut isum, mut msum) = (0i32, 0i32);
        for g in 0..8 {
            // Group g holds values 32g..32g+32: half n = g / 4, quarter k = g % 4.
            let (n, k) = (g / 4, g % 4);
            let ql = &ql_all[64 * n..64 * n + 64];
            let qh = &qh_all[32 * n..32 * n + 32];
            let base = 256 * b + 32 * g;
            let mut part = [0i32; 2];
            for l in 0..32 {
                let low = match k {
                    0 => ql[l] & 0x0f,
                    1 => ql[l + 32] & 0x0f,
                    2 => ql[l] >> 4,
                    _ => ql[l + 32] >> 4,
                };
                let q = (low | (((qh[l] >> (2 * k)) & 3) << 4)) as i32;
                part[l / 16] += q * aq[base + l] as i32;
            }
            for h in 0..2 {
                let s = sc[2 * g + h] as i8 as i32;
                isum += s * part[h];
                msum += s * s16[16 * b + 2 * g + h] as i32;
            }
        }
        let z = (isum - 32 * msum) as f32 * d;
        acc += z * ad[b];
    }
    acc
}

/// Outputs of weight rows `r0..r1` for every token of `a`, into `out` (row `r - r0`).
///
/// # Safety
/// `out` must be valid for rows `0..r1 - r0` and tokens `0..a.n`.
pub(crate) unsafe fn rows(w: &WeightBlocks, a: &Q8Acts, r0: usize, r1: usize, out: OutRows) {
    for r in r0..r1 {
        let row = w.row(r);
        for t in 0..a.n {
            let v = match w.kind {
                Kernel::Q4K => row_q4k(row, a, t),
                Kernel::Q5K => row_q45k(true, row, a, t),
                Kernel::Q6K => row_q6k(row, a, t),
                k => row_b32(k, row, a, t),
            };
            // SAFETY: in bounds by this function's contract.
            unsafe { out.set(r - r0, t, v) };
        }
    }
}
