//! GGML block formats: dequantization of each supported type, and random valid blocks for
//! fixtures and tests. Layouts follow ggml's `block_*` structs (little endian, packed).

use cascade_weights::DType;
use half::{bf16, f16};

mod kquants;

pub(crate) use kquants::scale_min_k4;
pub use kquants::{dequant_q2k, dequant_q3k, dequant_q4k, dequant_q5k, dequant_q6k};

#[inline(always)]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Dequantizes one Q4_0 block (18 bytes) into 32 values.
pub fn dequant_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// Dequantizes one Q4_1 block (20 bytes) into 32 values.
pub fn dequant_q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0f) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// Dequantizes one Q5_0 block (22 bytes) into 32 values.
pub fn dequant_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = (((qs[j] & 0x0f) | xh0) as i32 - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) | xh1) as i32 - 16) as f32 * d;
    }
}

/// Dequantizes one Q5_1 block (24 bytes) into 32 values.
pub fn dequant_q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = ((qs[j] & 0x0f) | xh0) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) | xh1) as f32 * d + m;
    }
}

/// Dequantizes one Q8_0 block (34 bytes) into 32 values.
pub fn dequant_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// Dequantizes `y.len()` values of type `dtype` from `src` (which holds exactly those values).
pub fn dequantize(dtype: DType, src: &[u8], y: &mut [f32]) {
    let bl = dtype.block_len();
    let bb = dtype.block_bytes();
    // Checked always: the length facts also let the compiler drop bounds checks in the loops below.
    assert_eq!(
        src.len(),
        dtype.bytes_for(y.len()),
        "dequantize: {dtype} byte count"
    );
    match dtype {
        DType::F32 => {
            for (o, c) in y.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in y.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        DType::BF16 => {
            for (o, c) in y.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        _ => {
            let f = block_fn(dtype);
            for (yb, sb) in y.chunks_exact_mut(bl).zip(src.chunks_exact(bb)) {
                f(sb, yb);
            }
        }
    }
}

/// The block dequantizer of a block type.
pub(crate) fn block_fn(dtype: DType) -> fn(&[u8], &mut [f32]) {
    match dtype {
        DType::Q4_0 => dequant_q4_0,
        DType::Q4_1 => dequant_q4_1,
        DType::Q5_0 => dequant_q5_0,
        DType::Q5_1 => dequant_q5_1,
        DType::Q8_0 => dequant_q8_0,
        DType::Q2K => dequant_q2k,
        DType::Q3K => dequant_q3k,
        DType::Q4K => dequant_q4k,
        DType::Q5K => dequant_q5k,
        DType::Q6K => dequant_q6k,
        DType::F32 | DType::F16 | DType::BF16 => {
            |_, _| unreachable!("plain float types have no blocks")
        }
    }
}

/// Byte offsets of the f16 scale fields of one block, for making valid random blocks.
fn f16_fields(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => &[0],
        DType::Q4_1 | DType::Q5_1 => &[0, 2],
        DType::Q2K => &[80, 82],
        DType::Q3K => &[108],
        DType::Q4K | DType::Q5K => &[0, 2],
        DType::Q6K => &[208],
        DType::F32 | DType::F16 | DType::BF16 => &[],
    }
}

/// Random but valid data for `n` values of `dtype`: random quant bits, and f16 scales drawn from
/// `scale * [0.5, 1.5)` so values stay finite. `next` supplies random u64s.
pub fn random_data(dtype: DType, n: usize, scale: f32, mut next: impl FnMut() -> u64) -> Vec<u8> {
    let mut out = vec![0u8; dtype.bytes_for(n)];
    match dtype {
        DType::F32 => {
            for c in out.chunks_exact_mut(4) {
                let v = unit(next()) * scale;
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for c in out.chunks_exact_mut(2) {
                c.copy_from_slice(&f16::from_f32(unit(next()) * scale).to_bits().to_le_bytes());
            }
        }
        DType::BF16 => {
            for c in out.chunks_exact_mut(2) {
                c.copy_from_slice(&bf16::from_f32(unit(next()) * scale).to_bits().to_le_bytes());
            }
        }
        _ => {
            for c in out.chunks_mut(8) {
                let r = next().to_le_bytes();
                let k = c.len();
                c.copy_from_slice(&r[..k]);
            }
            let bb = dtype.block_bytes();
            for block in out.chunks_exact_mut(bb) {
                for &at in f16_fields(dtype) {
                    let v = scale * (1.0 + 0.5 * unit(next()));
                    block[at..at + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
                }
            }
        }
    }
    out
}

/// A float in [-1, 1) from 24 random bits.
fn unit(r: u64) -> f32 {
    ((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_data_is_finite_for_every_type() {
        let mut s = 1u64;
        for t in DType::ALL {
            let data = random_data(t, 512, 0.01, || {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s
            });
            let mut y = vec![0f32; 512];
            dequantize(t, &data, &mut y);
            assert!(y.iter().all(|v| v.is_finite()), "{t}");
            assert!(y.iter().any(|&v| v != 0.0), "{t}");
        }
    }
}
