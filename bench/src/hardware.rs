//! The machine's floors: measured read bandwidth and measured peak of 8-bit integer
//! multiply-adds, against which `cascade bench` reports the fraction reached.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::forward::median;

#[derive(Debug, Clone, Serialize)]
pub struct Floors {
    /// Read bandwidth of all pool threads summing a buffer far larger than the caches, GB/s.
    pub read_gb_per_s: f64,
    /// Peak 8-bit multiply-adds per second of all pool threads (register-only `vpdpbusd`, or
    /// `vpmaddubsw` on AVX2), in units of 10^9.
    pub int8_gmacs_per_s: f64,
    pub threads: usize,
    pub isa: &'static str,
}

/// Sums `c` as 64-bit words with four independent 256-bit accumulators: a read-bound loop.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(c: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let p = c.as_ptr() as *const __m256i;
    let n = c.len() / 16;
    let mut acc = [_mm256_setzero_si256(); 4];
    for i in 0..n {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: vector i * 4 + k lies within the first n * 16 words of `c`.
            *a = _mm256_add_epi64(*a, unsafe { _mm256_loadu_si256(p.add(i * 4 + k)) });
        }
    }
    let mut out = 0u64;
    for a in acc {
        let mut w = [0u64; 4];
        // SAFETY: `w` holds four words.
        unsafe { _mm256_storeu_si256(w.as_mut_ptr() as *mut __m256i, a) };
        out = w.iter().fold(out, |x, &y| x.wrapping_add(y));
    }
    out
}

fn sum_words(c: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { sum_avx2(c) };
    }
    c.iter().fold(0u64, |a, &b| a.wrapping_add(b))
}

/// Median read bandwidth over `repeat` passes of a `bytes`-sized buffer, each pool thread
/// reading its own slice.
pub fn read_bandwidth(bytes: usize, repeat: usize) -> f64 {
    let words = bytes / 8;
    let buf: Vec<u64> = (0..words as u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9))
        .collect();
    let threads = rayon::current_num_threads();
    let chunk = words.div_ceil(threads);
    let mut times = Vec::new();
    for _ in 0..repeat.max(1) {
        let t0 = Instant::now();
        let s: u64 = std::hint::black_box(&buf)
            .par_chunks(chunk)
            .map(sum_words)
            .reduce(|| 0, |a, b| a.wrapping_add(b));
        std::hint::black_box(s);
        times.push(t0.elapsed().as_secs_f64());
    }
    bytes as f64 / median(&mut times) / 1e9
}

/// Peak 8-bit multiply-adds per second on every pool thread.
pub fn int8_peak() -> f64 {
    let threads = rayon::current_num_threads();
    let iters = 20_000_000u64;
    let mut times = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        let s: i64 = (0..threads)
            .into_par_iter()
            .map(|_| cascade_kernels::qdot::peak_loop(iters))
            .sum();
        std::hint::black_box(s);
        times.push(t0.elapsed().as_secs_f64());
    }
    let macs = cascade_kernels::qdot::PEAK_MACS_PER_ITER as f64 * iters as f64 * threads as f64;
    macs / median(&mut times) / 1e9
}

pub fn floors() -> Floors {
    Floors {
        read_gb_per_s: read_bandwidth(1 << 30, 5),
        int8_gmacs_per_s: int8_peak(),
        threads: rayon::current_num_threads(),
        isa: cascade_kernels::Isa::best().name(),
    }
}
