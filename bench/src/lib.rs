//! cascade-bench: the workload runner behind `cascade bench` (forward passes, the machine's
//! floors), `cascade calibrate` (quality against cost over an evaluation set) and the criterion
//! micro-benchmarks of the kernels (`cargo bench -p cascade-bench`), and `cascade bench serve`,
//! a load generator for any OpenAI-compatible server.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

use cascade_kernels::quant::random_data;
use cascade_weights::DType;

pub mod calibrate;
pub mod error;
pub mod forward;
pub mod hardware;
pub mod serve;
pub mod svg;

pub use error::BenchError;

/// Random weights `[rows, cols]` of `dtype` and `n` activation rows, reproducible from `seed`.
pub fn matmul_case(
    dtype: DType,
    rows: usize,
    cols: usize,
    n: usize,
    seed: u64,
) -> (Vec<u8>, Vec<f32>) {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let data = random_data(dtype, rows * cols, 0.01, &mut next);
    let x = (0..n * cols)
        .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect();
    (data, x)
}
