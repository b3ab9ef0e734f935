//! One matrix product shape timed two ways: cache-resident (the same matrix again and again,
//! so its weights come from L2/L3) and streamed (distinct matrices in turn, 120 MB or more in
//! all, so they come from DRAM). The gap is the part of the read time the kernel does not
//! overlap with its arithmetic; the cache-resident time against the token count is the
//! arithmetic's cost per token.
//!
//! ```sh
//! cargo run --release -p cascade-bench --example stream -- q6k 8960 1536 1,5,8 [reps]
//! ```

use std::time::Instant;

use cascade_bench::matmul_case;
use cascade_kernels::{matmul_q8, Kernel, Q8Acts, QMatrix};
use cascade_weights::DType;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: stream q4k|q6k|q8_0|q5_0|q4_1 ROWS COLS N1,N2,.. [REPS]";
    let parsed = (|| {
        let dtype = match args.first()?.as_str() {
            "q4k" => DType::Q4K,
            "q6k" => DType::Q6K,
            "q8_0" => DType::Q8_0,
            "q5_0" => DType::Q5_0,
            "q4_1" => DType::Q4_1,
            _ => return None,
        };
        let rows: usize = args.get(1)?.parse().ok()?;
        let cols: usize = args.get(2)?.parse().ok()?;
        let ns: Vec<usize> = args
            .get(3)?
            .split(',')
            .map(|v| v.parse().ok().filter(|&n| (1..=16).contains(&n)))
            .collect::<Option<_>>()?;
        let reps: usize = match args.get(4) {
            Some(r) => r.parse().ok()?,
            None => 48,
        };
        Some((dtype, rows, cols, ns, reps.max(1)))
    })();
    let Some((dtype, rows, cols, ns, reps)) = parsed else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let kernel = Kernel::of(dtype).expect("every listed type has an integer kernel");
    if !cols.is_multiple_of(kernel.act_block().values()) || rows == 0 {
        eprintln!("{usage}\n{dtype}: COLS must be a multiple of its block length");
        std::process::exit(2);
    }
    let bytes = dtype.bytes_for(rows * cols);
    let count = (120_000_000 / bytes).max(2);
    let mats: Vec<Vec<u8>> = (0..count as u64)
        .map(|i| matmul_case(dtype, rows, cols, 1, i + 1).0)
        .collect();
    let (_, x) = matmul_case(dtype, rows, cols, 16, 99);
    for n in ns {
        let mut acts = Q8Acts::new(kernel.act_block());
        acts.quantize(&x[..n * cols], n, cols);
        let mut out = vec![0f32; n * rows];
        let mut time = |which: &dyn Fn(usize) -> usize| {
            let mut ts = Vec::with_capacity(reps);
            for rep in 0..reps {
                let w = QMatrix::new(dtype, &mats[which(rep)], rows, cols).expect("shape");
                let t = Instant::now();
                matmul_q8(&w, &acts, &mut out).expect("product");
                ts.push(t.elapsed().as_secs_f64() * 1e3);
            }
            ts.sort_by(f64::total_cmp);
            ts[ts.len() / 2]
        };
        let cached = time(&|_| 0);
        let streamed = time(&|r| r % mats.len());
        println!(
            "{dtype} {rows}x{cols} n {n}: cached {cached:.3} ms  streamed {streamed:.3} ms ({:.1} GB/s)",
            bytes as f64 / streamed / 1e6
        );
    }
}
