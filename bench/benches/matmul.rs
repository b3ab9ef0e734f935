//! Matrix products of the real models' shapes (Qwen2.5 1.5B: 1536 -> 8960), 1, 5, 8 and 16
//! token rows, for each weight type the real models use: the integer path (activations
//! quantized to 8 bits; quantization included) on the best instruction set and the portable
//! twin, and the f32 path; Q4_K and Q6_K also in the interleaved layout of `cascade repack`
//! (`-r8`).

use cascade_bench::matmul_case;
use cascade_kernels::interleave::interleave8;
use cascade_kernels::{matmul, matmul_q8_with, Isa, Kernel, Q8Acts, QMatrix};
use cascade_weights::{DType, Layout};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let (rows, cols) = (8960, 1536);
    let mut g = c.benchmark_group("matmul_8960x1536");
    g.sample_size(10);
    for dtype in [
        DType::Q4K,
        DType::Q6K,
        DType::Q5_0,
        DType::Q8_0,
        DType::Q4_1,
        DType::F16,
        DType::BF16,
        DType::F32,
    ] {
        for n in [1usize, 5, 8, 16] {
            let (data, x) = matmul_case(dtype, rows, cols, n, 1);
            let w = QMatrix::new(dtype, &data, rows, cols).unwrap();
            let mut out = vec![0f32; n * rows];
            g.throughput(Throughput::Elements((n * rows * cols) as u64));
            if let Some(kernel) = Kernel::of(dtype) {
                let mut acts = Q8Acts::new(kernel.act_block());
                for isa in [Isa::best(), Isa::Portable] {
                    if isa == Isa::Portable && n > 1 {
                        continue;
                    }
                    let id = BenchmarkId::new(format!("{}/int8-{}", dtype.name(), isa.name()), n);
                    g.bench_with_input(id, &n, |b, &n| {
                        b.iter(|| {
                            acts.quantize(&x, n, cols);
                            matmul_q8_with(isa, &w, &acts, &mut out).unwrap()
                        })
                    });
                }
            }
            if Layout::Interleaved8.supports(dtype) {
                let il = interleave8(dtype, &data, rows, cols).unwrap();
                let wi =
                    QMatrix::with_layout(dtype, &il, rows, cols, Layout::Interleaved8).unwrap();
                let kernel = Kernel::of(dtype).unwrap();
                let mut acts = Q8Acts::new(kernel.act_block());
                let isa = Isa::best();
                let id = BenchmarkId::new(format!("{}-r8/int8-{}", dtype.name(), isa.name()), n);
                g.bench_with_input(id, &n, |b, &n| {
                    b.iter(|| {
                        acts.quantize(&x, n, cols);
                        matmul_q8_with(isa, &wi, &acts, &mut out).unwrap()
                    })
                });
            }
            if n <= 8 {
                let id = BenchmarkId::new(format!("{}/f32", dtype.name()), n);
                g.bench_with_input(id, &n, |b, &n| {
                    b.iter(|| matmul(&w, &x, n, &mut out).unwrap())
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
