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

/// Median read bandwidth over `repeat` passes of a `bytes`-sized buffer.
pub fn read_bandwidth(bytes: usize, repeat: usize) -> f64 {
    let words = bytes / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let threads = rayon::current_num_threads();
    let chunk = words.div_ceil(threads);
    let mut times = Vec::new();
    for _ in 0..repeat.max(1) {
        let t0 = Instant::now();
        let s: u64 = buf
            .par_chunks(chunk)
            .map(|c| {
                // Eight independent sums so the loop is bound by loads, not by the add chain.
                let mut acc = [0u64; 8];
                for w in c.chunks_exact(8) {
                    for i in 0..8 {
                        acc[i] = acc[i].wrapping_add(w[i]);
                    }
                }
                acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
            })
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
