//! One matrix product shape timed two ways: cache-resident (the same matrix again and again,
//! so its weights come from L2/L3) and streamed (distinct matrices in turn, 120 MB or more in
//! all, so they come from DRAM). The gap is the part of the read time the kernel does not
//! overlap with its arithmetic; the cache-resident time against the token count is the
//! arithmetic's cost per token. Q4_K and Q6_K are also timed in the interleaved layout of
//! `cascade repack`, alternating with the row-major one (each reading its own matrices), and the
//! median of the pairs' ratios is printed.
//!
//! ```sh
//! cargo run --release -p cascade-bench --example stream -- q6k 8960 1536 1,5,8 [reps]
//! ```

use std::time::Instant;

use cascade_bench::matmul_case;
use cascade_kernels::interleave::interleave8;
use cascade_kernels::{matmul_q8, Kernel, Q8Acts, QMatrix};
use cascade_weights::{DType, Layout};

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
    // The interleaved copies (Q4_K, Q6_K with whole groups of 8 rows).
    let interleaved: Vec<Vec<u8>> = if Layout::Interleaved8.supports(dtype) && rows % 8 == 0 {
        mats.iter()
            .map(|m| interleave8(dtype, m, rows, cols).expect("interleavable"))
            .collect()
    } else {
        Vec::new()
    };
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
        if !interleaved.is_empty() {
            let (rm, il, ratio) = layout_pairs(dtype, rows, cols, &mats, &interleaved, &acts, reps);
            println!(
                "{dtype} {rows}x{cols} n {n}: streamed, row-major {:.3} ms  interleaved {:.3} ms  \
                 (median ratio of pairs {:.3})",
                rm, il, ratio
            );
        }
    }
}

/// Row-major and interleaved products streamed from DRAM, alternating which goes first, each
/// reading its own matrices: row-major and interleaved medians (ms) and the median of the pairs'
/// interleaved / row-major ratios.
fn layout_pairs(
    dtype: DType,
    rows: usize,
    cols: usize,
    mats: &[Vec<u8>],
    interleaved: &[Vec<u8>],
    acts: &Q8Acts,
    reps: usize,
) -> (f64, f64, f64) {
    let mut out = vec![0f32; acts.n() * rows];
    let mut ts = [Vec::with_capacity(reps), Vec::with_capacity(reps)];
    for rep in 0..reps {
        for k in 0..2 {
            let v = (rep + k) % 2;
            let i = (2 * rep + k) % mats.len();
            let w = if v == 0 {
                QMatrix::new(dtype, &mats[i], rows, cols)
            } else {
                QMatrix::with_layout(dtype, &interleaved[i], rows, cols, Layout::Interleaved8)
            }
            .expect("shape");
            let t = Instant::now();
            matmul_q8(&w, acts, &mut out).expect("product");
            ts[v].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut ratios: Vec<f64> = ts[1].iter().zip(&ts[0]).map(|(a, b)| a / b).collect();
    ratios.sort_by(f64::total_cmp);
    for t in ts.iter_mut() {
        t.sort_by(f64::total_cmp);
    }
    (ts[0][reps / 2], ts[1][reps / 2], ratios[reps / 2])
}
