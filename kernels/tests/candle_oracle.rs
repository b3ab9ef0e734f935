//! An independent oracle for the integer products: candle's quantized dot products (a port of
//! ggml's `vec_dot` for each block type, with the activations quantized by its own
//! `from_float` into Q8_0 / Q8_1 / Q8_K). For every type both support, on random matrices,
//! every instruction set of ours must agree with it up to float rounding: the integer sums are
//! the same, only the order of the few float operations per block differs.
//!
//! ggml keeps a 32-value activation block's scale (and Q8_1's scaled sum) in f16 where ours are
//! f32, so the activations are drawn exactly on the grid both store without rounding: each
//! block is `q * 2^-k` with integer `q` in [-127, 127], one of them ±127, and a sum of at most
//! 2048 in magnitude. Both quantizers then give the same `q` and `d` bit for bit.

use candle_core::quantized::k_quants::{
    BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, GgmlType,
};
use cascade_kernels::quant::random_data;
use cascade_kernels::{matmul_q8_with, Isa, Kernel, Q8Acts, QMatrix};
use cascade_weights::DType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `out[t * rows + r]`: candle's dot of weight row `r` with token `t`.
fn candle_matmul<T: GgmlType>(w: &[u8], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f32> {
    let per_row = cols / T::BLCK_SIZE;
    let mut blocks = vec![T::zeros(); rows * per_row];
    assert_eq!(
        std::mem::size_of_val(blocks.as_slice()),
        w.len(),
        "block layout"
    );
    // SAFETY: candle's blocks are `#[repr(C)]` structs of ggml's exact layout (f16 and byte
    // fields only, every bit pattern valid), and the destination holds exactly `w.len()` bytes
    // (asserted above); the copy is bytewise, so alignment does not matter.
    unsafe {
        std::ptr::copy_nonoverlapping(w.as_ptr(), blocks.as_mut_ptr() as *mut u8, w.len());
    }
    let vd = T::VecDotType::BLCK_SIZE;
    let mut out = vec![0f32; n * rows];
    for t in 0..n {
        let mut q = vec![T::VecDotType::zeros(); cols / vd];
        T::VecDotType::from_float(&x[t * cols..(t + 1) * cols], &mut q);
        for r in 0..rows {
            out[t * rows + r] = T::vec_dot(cols, &blocks[r * per_row..(r + 1) * per_row], &q);
        }
    }
    out
}

/// Activations in blocks of 32 that ggml's f16 scales hold exactly (see the top of the file).
fn grid_activations(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(len);
    while x.len() < len {
        let mut q: Vec<i32> = (0..32).map(|_| rng.random_range(-127..=127)).collect();
        q[rng.random_range(0..32)] = if rng.random() { 127 } else { -127 };
        if q.iter().sum::<i32>().abs() > 2048 {
            continue;
        }
        let d = (2f32).powi(-rng.random_range(3..9));
        x.extend(q.iter().map(|&v| v as f32 * d));
    }
    x
}

fn check<T: GgmlType>(dtype: DType, seed: u64) {
    let kind = Kernel::of(dtype).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (rows, cols, n) = (24, 512, 5);
    let data = random_data(dtype, rows * cols, 0.02, || rng.random());
    let x = grid_activations(&mut rng, n * cols);
    let want = candle_matmul::<T>(&data, rows, cols, &x, n);
    let w = QMatrix::new(dtype, &data, rows, cols).unwrap();
    let mut acts = Q8Acts::new(kind.act_block());
    acts.quantize(&x, n, cols);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{dtype}: candle gave all zeros");
    for isa in Isa::available() {
        let mut out = vec![0f32; n * rows];
        matmul_q8_with(isa, &w, &acts, &mut out).unwrap();
        for (i, (g, c)) in out.iter().zip(&want).enumerate() {
            assert!(
                (g - c).abs() <= 1e-5 * scale + 1e-6,
                "{dtype} {}: output {i}: ours {g}, candle {c} (scale {scale})",
                isa.name()
            );
        }
    }
}

#[test]
fn every_integer_kernel_agrees_with_candles_ggml_port() {
    check::<BlockQ4_0>(DType::Q4_0, 1);
    check::<BlockQ4_1>(DType::Q4_1, 2);
    check::<BlockQ5_0>(DType::Q5_0, 3);
    check::<BlockQ5_1>(DType::Q5_1, 4);
    check::<BlockQ8_0>(DType::Q8_0, 5);
    check::<BlockQ4K>(DType::Q4K, 6);
    check::<BlockQ5K>(DType::Q5K, 7);
    check::<BlockQ6K>(DType::Q6K, 8);
}
