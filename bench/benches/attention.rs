//! Causal attention of the Qwen2.5 1.5B's shape (12 query heads sharing 2 KV heads of 128) over a
//! cache of 128 and 1024 positions, for 1, 5 and 8 new tokens (a decode step and verifications).

use cascade_kernels::ops::{attention, attention_scratch, AttentionShape};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let s = AttentionShape {
        n_heads: 12,
        n_kv_heads: 2,
        head_dim: 128,
    };
    let (q_dim, kv_dim) = (12 * 128, 2 * 128);
    let f = |i: usize| ((i * 7919 % 2003) as f32 - 1001.0) / 977.0;
    let mut g = c.benchmark_group("attention_12x2x128");
    g.sample_size(20);
    for past in [128usize, 1024] {
        for n in [1usize, 5, 8] {
            let keys = past + n;
            let q: Vec<f32> = (0..n * q_dim).map(f).collect();
            let k: Vec<f32> = (0..keys * kv_dim).map(|i| f(i + 3) * 0.1).collect();
            let v: Vec<f32> = (0..keys * kv_dim).map(|i| f(i + 5)).collect();
            let mut out = vec![0f32; n * q_dim];
            let mut sc = vec![0f32; attention_scratch(n, past, 12)];
            g.throughput(Throughput::Elements((n * keys) as u64));
            let id = BenchmarkId::new(format!("past{past}"), n);
            g.bench_with_input(id, &n, |b, _| {
                b.iter(|| attention(&q, &k, &v, past, s, &mut out, &mut sc))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
