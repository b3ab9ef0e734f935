//! The tile unit (`amx-int8`) against the 8-row VNNI kernel on interleaved Q4_K and Q6_K: one
//! 256x1536 matrix (read from L2) and eight 8960x1536 ones taken in turn (streamed from DRAM),
//! at several token counts, medians of five timings. Sets `qdot::x86::amx_min_tokens`.
//!
//! `cargo run --release --example amx_probe -p cascade-bench` (`T=2` for two threads,
//! `N=1,4,8,16` for the token counts). Needs a CPU with AMX-INT8.

use cascade_bench::matmul_case;
use cascade_kernels::interleave::interleave8;
use cascade_kernels::{matmul_q8_with, Isa, Kernel, Q8Acts, QMatrix};
use cascade_weights::{DType, Layout};
use std::time::Instant;

fn main() {
    let threads: usize = std::env::var("T")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let counts: Vec<usize> = std::env::var("N")
        .unwrap_or_else(|_| "1,2,4,8,12,16,64".into())
        .split(',')
        .map(|v| v.parse().expect("N: comma-separated token counts"))
        .collect();
    if Isa::detected() < Isa::Amx {
        eprintln!("this CPU has no usable AMX-INT8");
        return;
    }
    for (rows, cols, copies) in [(256usize, 1536usize, 1usize), (8960, 1536, 8)] {
        for dtype in [DType::Q4K, DType::Q6K] {
            let mats: Vec<Vec<u8>> = (0..copies)
                .map(|i| {
                    let (data, _) = matmul_case(dtype, rows, cols, 1, i as u64);
                    interleave8(dtype, &data, rows, cols).unwrap()
                })
                .collect();
            let ws: Vec<QMatrix> = mats
                .iter()
                .map(|d| QMatrix::with_layout(dtype, d, rows, cols, Layout::Interleaved8).unwrap())
                .collect();
            for &n in &counts {
                let (_, x) = matmul_case(dtype, 8, cols, n, 99);
                let mut acts = Q8Acts::new(Kernel::of(dtype).unwrap().act_block());
                acts.quantize(&x, n, cols);
                let mut out = vec![0f32; n * rows];
                let mut line = format!("{rows}x{cols} {:>4} n={n:>2}:", dtype.name());
                for isa in [Isa::Vnni, Isa::Amx] {
                    let iters = (2_000_000_000 / (rows * cols * n.max(4))).max(8);
                    let mut ts = vec![];
                    for rep in 0..5 {
                        let t = Instant::now();
                        pool.install(|| {
                            for i in 0..iters {
                                matmul_q8_with(isa, &ws[(i + rep) % copies], &acts, &mut out)
                                    .unwrap();
                            }
                        });
                        ts.push(t.elapsed().as_secs_f64() / iters as f64);
                    }
                    ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
                    let s = ts[2];
                    let gmacs = (rows * cols * n) as f64 / s / 1e9;
                    let gbs = mats[0].len() as f64 / s / 1e9;
                    line += &format!(
                        "  {}: {:8.1} us {:6.1} GMAC/s {:5.1} GB/s",
                        isa.name(),
                        s * 1e6,
                        gmacs,
                        gbs
                    );
                }
                println!("{line}");
            }
        }
    }
}
