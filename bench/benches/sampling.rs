//! Host cost of drawing one sampled token over a Qwen2.5-sized vocabulary (151,936 ids): from the
//! whole row of logits (what a row copied back from a device, or any CPU row, costs), with a
//! top-k cut and without, and from the row's 40 candidates alone (what a row reduced to its top
//! k on the device leaves the host to do).

use cascade_engine::{Sampler, SamplingParams};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const VOCAB: usize = 151_936;

/// Logits shaped like a language model's: a broad mass around -2, a tail of a few hundred
/// plausible ids up to +8, one clear favourite.
fn row() -> Vec<f32> {
    let mut r = ChaCha8Rng::seed_from_u64(1);
    let mut l: Vec<f32> = (0..VOCAB)
        .map(|_| {
            let u: f32 = (0..4).map(|_| r.random::<f32>()).sum::<f32>() - 2.0;
            u * 1.5 - 2.0
        })
        .collect();
    for _ in 0..300 {
        l[r.random_range(0..VOCAB)] = r.random::<f32>() * 8.0;
    }
    l[1234] = 11.0;
    l
}

fn bench(c: &mut Criterion) {
    let logits = row();
    let valid = vec![true; VOCAB];
    let params = |top_k, top_p| SamplingParams {
        temperature: 0.8,
        top_k,
        top_p,
        seed: 7,
    };
    let mut g = c.benchmark_group("sample_151936");
    g.sample_size(30);
    for (name, k, p) in [
        ("whole_row/top_k40_top_p0.95", 40, 0.95),
        ("whole_row/top_p0.95", 0, 0.95),
        ("whole_row/temperature_only", 0, 1.0),
    ] {
        let mut s = Sampler::new(params(k, p));
        g.bench_function(name, |b| b.iter(|| s.sample(&logits, &valid).token));
    }
    reduced(&mut g, &logits, &valid, params(40, 0.95));
    g.finish();
}

/// The host's part for a row the device reduced to its top 40.
fn reduced(
    g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    logits: &[f32],
    valid: &[bool],
    params: SamplingParams,
) {
    let cands = cascade_engine::sampler::top_candidates(logits, valid, params.top_k);
    let mut s = Sampler::new(params);
    g.bench_function("candidates/top_k40_top_p0.95", |b| {
        b.iter(|| s.sample_candidates(&cands, valid).token)
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
