//! The interleaved layout of Q4_K and Q6_K matrices ([`Layout::Interleaved8`]), written once by
//! `cascade repack` so that the 8-row integer kernels load what they used to build with
//! transposes on every forward.
//!
//! Rows are taken eight at a time. For each group and each super-block column `b`, one record
//! holds the eight rows' super-block `b` (8 × 144 bytes for Q4_K, 8 × 210 for Q6_K) transposed at
//! 4-byte granularity: bytes `4k..4k + 4` of row `r`'s super-block sit at `32k + 4r` (for every
//! whole dword of the super-block: 36 for Q4_K, 52 for Q6_K). Q6_K's trailing f16 scale (bytes
//! 208..210) follows as eight 2-byte values, row `r` at `1664 + 2r`. A record has exactly the
//! bytes of the eight super-blocks, so a matrix takes the same space in either layout.
//!
//! Record `(g, b)` starts at `(g * blocks_per_row + b) * 8 * block_bytes`.

use cascade_weights::{DType, Layout};

use crate::error::{KernelError, Result};

/// Rows per group.
pub const GROUP: usize = 8;

/// Dwords of a super-block moved at 4-byte granularity, and the bytes after them.
fn split(dtype: DType) -> (usize, usize) {
    let bb = dtype.block_bytes();
    (bb / 4, bb % 4)
}

fn check(dtype: DType, len: usize, rows: usize, cols: usize) -> Result<()> {
    if !Layout::Interleaved8.supports(dtype)
        || !rows.is_multiple_of(GROUP)
        || !cols.is_multiple_of(dtype.block_len())
        || len != dtype.bytes_for(rows * cols)
    {
        return Err(KernelError::Shape {
            op: "interleave",
            detail: format!(
                "{len} bytes of {dtype} [{rows}, {cols}] cannot be interleaved by {GROUP} rows \
                 (Q4_K or Q6_K, rows a multiple of {GROUP})"
            ),
        });
    }
    Ok(())
}

/// Moves every byte of a `[rows, cols]` matrix between the two layouts; `to_interleaved` picks
/// the direction.
fn permute(dtype: DType, src: &[u8], rows: usize, cols: usize, to_interleaved: bool) -> Vec<u8> {
    let bb = dtype.block_bytes();
    let nb = cols / dtype.block_len();
    let (dwords, tail) = split(dtype);
    let mut out = vec![0u8; src.len()];
    for g in 0..rows / GROUP {
        for b in 0..nb {
            let rec = (g * nb + b) * GROUP * bb;
            for r in 0..GROUP {
                let sb = ((g * GROUP + r) * nb + b) * bb;
                let mut mv = |row_at: usize, rec_at: usize, n: usize| {
                    let (from, to) = if to_interleaved {
                        (row_at, rec_at)
                    } else {
                        (rec_at, row_at)
                    };
                    out[to..to + n].copy_from_slice(&src[from..from + n]);
                };
                for k in 0..dwords {
                    mv(sb + 4 * k, rec + 32 * k + 4 * r, 4);
                }
                if tail > 0 {
                    mv(sb + 4 * dwords, rec + 32 * dwords + tail * r, tail);
                }
            }
        }
    }
    out
}

/// A row-major Q4_K / Q6_K matrix in the interleaved layout.
pub fn interleave8(dtype: DType, data: &[u8], rows: usize, cols: usize) -> Result<Vec<u8>> {
    check(dtype, data.len(), rows, cols)?;
    Ok(permute(dtype, data, rows, cols, true))
}

/// An interleaved matrix (or whole groups of one) back in row-major order.
pub fn deinterleave8(dtype: DType, data: &[u8], rows: usize, cols: usize) -> Result<Vec<u8>> {
    check(dtype, data.len(), rows, cols)?;
    Ok(permute(dtype, data, rows, cols, false))
}

/// The bytes of row `r` of an interleaved matrix, in row-major block order.
pub(crate) fn row_of(dtype: DType, data: &[u8], cols: usize, r: usize) -> Vec<u8> {
    let bb = dtype.block_bytes();
    let nb = cols / dtype.block_len();
    let (dwords, tail) = split(dtype);
    let (g, lane) = (r / GROUP, r % GROUP);
    let mut out = vec![0u8; nb * bb];
    for b in 0..nb {
        let rec = &data[(g * nb + b) * GROUP * bb..][..GROUP * bb];
        let sb = &mut out[b * bb..(b + 1) * bb];
        for k in 0..dwords {
            sb[4 * k..4 * k + 4].copy_from_slice(&rec[32 * k + 4 * lane..][..4]);
        }
        let at = 32 * dwords + tail * lane;
        sb[4 * dwords..].copy_from_slice(&rec[at..at + tail]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::random_data;

    #[test]
    fn round_trips_and_moves_every_byte() {
        let mut seed = 3u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            seed >> 11
        };
        for dtype in [DType::Q4K, DType::Q6K] {
            let (rows, cols) = (24, 512);
            let data = random_data(dtype, rows * cols, 0.5, &mut next);
            let il = interleave8(dtype, &data, rows, cols).unwrap();
            assert_ne!(il, data, "{dtype}: the layout reorders bytes");
            let mut a = il.clone();
            let mut b = data.clone();
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b, "{dtype}: a permutation of the bytes");
            assert_eq!(deinterleave8(dtype, &il, rows, cols).unwrap(), data);
            let rb = dtype.bytes_for(cols);
            for r in [0, 7, 8, 23] {
                assert_eq!(row_of(dtype, &il, cols, r), data[r * rb..(r + 1) * rb]);
            }
        }
    }

    #[test]
    fn the_first_record_is_the_documented_transpose() {
        let (rows, cols) = (8, 256);
        let data: Vec<u8> = (0..rows * 210).map(|i| (i * 7 % 251) as u8).collect();
        let il = interleave8(DType::Q6K, &data, rows, cols).unwrap();
        for r in 0..8 {
            for k in 0..52 {
                assert_eq!(il[32 * k + 4 * r..][..4], data[210 * r + 4 * k..][..4]);
            }
            assert_eq!(il[1664 + 2 * r..][..2], data[210 * r + 208..][..2]);
        }
    }

    #[test]
    fn refuses_what_it_cannot_interleave() {
        assert!(interleave8(DType::Q4K, &[0; 144 * 4], 4, 256).is_err());
        assert!(interleave8(DType::Q8_0, &[0; 34 * 8], 8, 32).is_err());
        assert!(interleave8(DType::Q4K, &[0; 10], 8, 256).is_err());
    }
}
