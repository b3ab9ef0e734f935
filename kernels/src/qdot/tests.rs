use super::*;
use crate::matmul::matmul_reference;
use crate::quant::random_data;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const KINDS: [Kernel; 8] = [
    Kernel::Q4_0,
    Kernel::Q4_1,
    Kernel::Q5_0,
    Kernel::Q5_1,
    Kernel::Q8_0,
    Kernel::Q4K,
    Kernel::Q5K,
    Kernel::Q6K,
];

/// The instruction sets this CPU runs, saying which it skips. With `CASCADE_EXPECT_ISA` set (CI
/// sets it from /proc/cpuinfo, independently of the probe), a missing expected set fails.
fn isas() -> Vec<Isa> {
    let have = Isa::available();
    let skipped: Vec<&str> = [Isa::Portable, Isa::Avx2, Isa::Vnni, Isa::Amx]
        .into_iter()
        .filter(|i| !have.contains(i))
        .map(Isa::name)
        .collect();
    if !skipped.is_empty() {
        eprintln!("qdot tests: skipping {skipped:?}: this CPU lacks them");
    }
    if let Ok(want) = std::env::var("CASCADE_EXPECT_ISA") {
        assert!(
            have.iter().any(|i| i.name() == want),
            "CASCADE_EXPECT_ISA={want} but this build detects only {:?}",
            have.iter().map(|i| i.name()).collect::<Vec<_>>()
        );
    }
    have
}

fn case(kind: Kernel, rows: usize, cols: usize, n: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = random_data(kind.dtype(), rows * cols, 0.02, || rng.random());
    let x = (0..n * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
    (data, x)
}

fn acts(kind: Kernel, x: &[f32], n: usize, cols: usize) -> Q8Acts {
    let mut a = Q8Acts::new(kind.act_block());
    a.quantize(x, n, cols);
    a
}

#[test]
fn every_kernel_equals_the_reference_on_the_quantized_activations() {
    // Against an f64 product of the dequantized weights and the dequantized activations, the only
    // difference left is float rounding.
    for kind in KINDS {
        let cols = if kind.act_block() == ActBlock::B32 {
            800
        } else {
            768
        };
        let (rows, n) = (21, 3);
        let (data, x) = case(kind, rows, cols, n, 3);
        let w = QMatrix::new(kind.dtype(), &data, rows, cols).unwrap();
        let a = acts(kind, &x, n, cols);
        let want = matmul_reference(&w, &a.dequantize(), n);
        for isa in isas() {
            let mut out = vec![0f32; n * rows];
            matmul_q8_with(isa, &w, &a, &mut out).unwrap();
            for (i, (g, r)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (g - r).abs() <= 1e-4 * (1.0 + r.abs()),
                    "{kind:?} {isa:?} output {i}: {g} vs {r}"
                );
            }
        }
    }
}

#[test]
fn quantizing_the_activations_costs_little_accuracy() {
    // Against the exact product of the float activations, the error is that of 8-bit
    // activations: well under 1% of the output's scale.
    for kind in KINDS {
        let (rows, cols, n) = (32, 1024, 2);
        let (data, x) = case(kind, rows, cols, n, 5);
        let w = QMatrix::new(kind.dtype(), &data, rows, cols).unwrap();
        let want = matmul_reference(&w, &x, n);
        let mut out = vec![0f32; n * rows];
        matmul_q8(&w, &acts(kind, &x, n, cols), &mut out).unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = out
            .iter()
            .zip(&want)
            .fold(0f32, |m, (g, r)| m.max((g - r).abs()));
        assert!(
            err <= 0.01 * scale,
            "{kind:?}: error {err} against scale {scale}"
        );
    }
}

#[test]
fn simd_paths_equal_the_portable_twin_bitwise() {
    for kind in KINDS {
        // 32-value types also get a row whose block count is not a multiple of 8 (896 columns,
        // as the 0.5B draft's hidden size).
        let cols = if kind.act_block() == ActBlock::B32 {
            896
        } else {
            512
        };
        let (rows, n) = (19, 5);
        let (data, x) = case(kind, rows, cols, n, 9);
        let w = QMatrix::new(kind.dtype(), &data, rows, cols).unwrap();
        let a = acts(kind, &x, n, cols);
        let mut base = vec![0f32; n * rows];
        matmul_q8_with(Isa::Portable, &w, &a, &mut base).unwrap();
        for isa in isas() {
            let mut out = vec![0f32; n * rows];
            matmul_q8_with(isa, &w, &a, &mut out).unwrap();
            assert_eq!(
                out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                base.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{kind:?} on {isa:?}"
            );
        }
    }
}

#[test]
fn rows_are_batch_and_thread_invariant() {
    for kind in KINDS {
        let (rows, cols) = (40, 512);
        // 20 tokens: more than one tile of 16.
        let (data, x) = case(kind, rows, cols, 20, 13);
        let w = QMatrix::new(kind.dtype(), &data, rows, cols).unwrap();
        for isa in isas() {
            let mut full = vec![0f32; 20 * rows];
            matmul_q8_with(isa, &w, &acts(kind, &x, 20, cols), &mut full).unwrap();
            for t in [0, 7, 15, 19] {
                let mut one = vec![0f32; rows];
                let xt = &x[t * cols..(t + 1) * cols];
                matmul_q8_with(isa, &w, &acts(kind, xt, 1, cols), &mut one).unwrap();
                assert_eq!(
                    one,
                    full[t * rows..(t + 1) * rows],
                    "{kind:?} {isa:?} token {t}"
                );
            }
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut other = vec![0f32; 20 * rows];
                pool.install(|| {
                    matmul_q8_with(isa, &w, &acts(kind, &x, 20, cols), &mut other).unwrap()
                });
                assert_eq!(other, full, "{kind:?} {isa:?} with {threads} threads");
            }
        }
    }
}

#[test]
fn extreme_values_do_not_overflow() {
    // All-maximal quants and activations at full scale: the integer sums must stay exact.
    // Ten rows: a group of eight (the 8-row K-quant kernels) and a tail; activations all at
    // +127 (the largest partial sums) and mixed in sign.
    for (kind, mixed) in KINDS.iter().flat_map(|&k| [(k, false), (k, true)]) {
        let (rows, cols) = (10, 512);
        let dtype = kind.dtype();
        let mut data = random_data(dtype, rows * cols, 0.02, || u64::MAX);
        let w = QMatrix::new(dtype, &data, rows, cols).unwrap();
        let x: Vec<f32> = (0..cols)
            .map(|c| if mixed && c % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let a = acts(kind, &x, 1, cols);
        let want = matmul_reference(&w, &a.dequantize(), 1);
        let mut out = vec![0f32; rows];
        matmul_q8(&w, &a, &mut out).unwrap();
        for (g, r) in out.iter().zip(&want) {
            assert!(
                (g - r).abs() <= 1e-4 * (1.0 + r.abs()),
                "{kind:?}: {g} vs {r}"
            );
        }
        data.clear();
    }
}

#[test]
fn interleaved_extreme_values_stay_exact_on_every_path() {
    // All-maximal quants against +127 activations (and mixed signs), interleaved, 16 tokens: the
    // tile kernels' sub-block sums at their largest must still give the portable twin's results.
    for (kind, mixed) in [Kernel::Q4K, Kernel::Q6K]
        .iter()
        .flat_map(|&k| [(k, false), (k, true)])
    {
        let (rows, cols, n) = (40, 512, 16);
        let dtype = kind.dtype();
        let data = random_data(dtype, rows * cols, 0.02, || u64::MAX);
        let il = crate::interleave::interleave8(dtype, &data, rows, cols).unwrap();
        let wi = QMatrix::with_layout(dtype, &il, rows, cols, Layout::Interleaved8).unwrap();
        let x: Vec<f32> = (0..n * cols)
            .map(|c| if mixed && c % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let a = acts(kind, &x, n, cols);
        let mut want = vec![0f32; n * rows];
        matmul_q8_with(Isa::Portable, &wi, &a, &mut want).unwrap();
        for isa in isas() {
            let mut got = vec![0f32; n * rows];
            matmul_q8_with(isa, &wi, &a, &mut got).unwrap();
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{kind:?} mixed={mixed} on {isa:?}"
            );
        }
    }
}

#[test]
fn mismatched_activations_are_an_error() {
    let (data, x) = case(Kernel::Q4K, 4, 256, 1, 1);
    let w = QMatrix::new(DType::Q4K, &data, 4, 256).unwrap();
    let a = acts(Kernel::Q8_0, &x, 1, 256);
    assert!(matmul_q8(&w, &a, &mut [0.0; 4]).is_err());
    let f = vec![0u8; 4 * 256 * 4];
    let wf = QMatrix::new(DType::F32, &f, 4, 256).unwrap();
    assert!(matmul_q8(&wf, &acts(Kernel::Q4K, &x, 1, 256), &mut [0.0; 4]).is_err());
}

#[test]
fn interleaved_matrices_give_the_row_major_results_bitwise() {
    // The same weights in both layouts: every path, every token count from 1 to 20 (one and more
    // than one tile), 1 and 3 threads. 48 rows: three tasks, the last one a single group.
    for kind in [Kernel::Q4K, Kernel::Q6K] {
        let dtype = kind.dtype();
        let (rows, cols) = (48, 768);
        let (data, x) = case(kind, rows, cols, 20, 21);
        let il = crate::interleave::interleave8(dtype, &data, rows, cols).unwrap();
        let w = QMatrix::new(dtype, &data, rows, cols).unwrap();
        let wi = QMatrix::with_layout(dtype, &il, rows, cols, Layout::Interleaved8).unwrap();
        for isa in isas() {
            for n in 1..=20 {
                let a = acts(kind, &x[..n * cols], n, cols);
                let mut want = vec![0f32; n * rows];
                matmul_q8_with(isa, &w, &a, &mut want).unwrap();
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut got = vec![0f32; n * rows];
                    pool.install(|| matmul_q8_with(isa, &wi, &a, &mut got).unwrap());
                    assert_eq!(
                        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{kind:?} {isa:?} n={n} threads={threads}"
                    );
                }
            }
        }
        // The f32 path and row lookups read interleaved matrices too.
        let mut want = vec![0f32; 3 * rows];
        let mut got = vec![0f32; 3 * rows];
        crate::matmul::matmul(&w, &x[..3 * cols], 3, &mut want).unwrap();
        crate::matmul::matmul(&wi, &x[..3 * cols], 3, &mut got).unwrap();
        assert_eq!(got, want, "{kind:?} f32 path");
        for r in [0, 9, 47] {
            let (mut a, mut b) = (vec![0f32; cols], vec![0f32; cols]);
            w.dequant_row(r, &mut a);
            wi.dequant_row(r, &mut b);
            assert_eq!(a, b, "{kind:?} row {r}");
        }
    }
}

#[test]
fn interleaved_layout_needs_whole_groups() {
    let (data, _) = case(Kernel::Q4K, 12, 256, 1, 1);
    assert!(QMatrix::with_layout(DType::Q4K, &data, 12, 256, Layout::Interleaved8).is_err());
    let (q8, _) = case(Kernel::Q8_0, 8, 256, 1, 1);
    assert!(QMatrix::with_layout(DType::Q8_0, &q8, 8, 256, Layout::Interleaved8).is_err());
}

#[test]
fn the_safe_entry_refuses_inconsistent_buffers() {
    // Buffers that disagree with the sizes they claim (possible only inside this crate now that
    // the fields are private) are refused before any unchecked load.
    let (rows, cols, n) = (16, 256, 3);
    let (data, x) = case(Kernel::Q4K, rows, cols, n, 7);
    let w = QMatrix::new(DType::Q4K, &data, rows, cols).unwrap();
    let good = acts(Kernel::Q4K, &x, n, cols);
    let mut out = vec![0f32; n * rows];
    assert!(matmul_q8(&w, &good, &mut out).is_ok());
    let mut more_rows = good.clone();
    more_rows.n += 1;
    let mut out4 = vec![0f32; (n + 1) * rows];
    assert!(
        matmul_q8(&w, &more_rows, &mut out4).is_err(),
        "n past the buffers"
    );
    let mut short = good.clone();
    short.qs.truncate(short.qs.len() - 1);
    assert!(matmul_q8(&w, &short, &mut out).is_err(), "short quants");
    let mut short_d = good.clone();
    short_d.d.pop();
    assert!(matmul_q8(&w, &short_d, &mut out).is_err(), "short scales");
    let lying = QMatrix {
        rows: rows + 8,
        ..w
    };
    assert!(
        matmul_q8(&lying, &good, &mut vec![0f32; n * (rows + 8)]).is_err(),
        "rows past the data"
    );
    // The public constructors check lengths with checked arithmetic.
    assert!(QMatrix::new(DType::Q4K, &data, usize::MAX / 2, 512).is_err());
    assert!(QMatrix::new(DType::Q4K, &data[1..], rows, cols).is_err());
}
