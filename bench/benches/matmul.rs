//! Quantized matrix products of the real models' shapes (Qwen2.5 1.5B: 1536 -> 8960), 1 and 8
//! token rows, for each weight type the real models use.

use cascade_bench::matmul_case;
use cascade_kernels::{matmul, QMatrix};
use cascade_weights::DType;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let (rows, cols) = (8960, 1536);
    let mut g = c.benchmark_group("matmul_8960x1536");
    g.sample_size(20);
    for dtype in [
        DType::Q4K,
        DType::Q6K,
        DType::Q5_0,
        DType::Q8_0,
        DType::Q4_1,
        DType::F16,
    ] {
        for n in [1usize, 8] {
            let (data, x) = matmul_case(dtype, rows, cols, n, 1);
            let w = QMatrix::new(dtype, &data, rows, cols).unwrap();
            let mut out = vec![0f32; n * rows];
            g.throughput(Throughput::Bytes(data.len() as u64));
            g.bench_with_input(BenchmarkId::new(dtype.name(), n), &n, |b, &n| {
                b.iter(|| matmul(&w, &x, n, &mut out).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
