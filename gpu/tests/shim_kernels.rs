//! Every CUDA kernel, run on the CPU through the host shim, against cascade-kernels' CPU code
//! and exact references. Shapes are small (the shim runs every CUDA thread as a fiber on the CPU) but
//! large enough that every K-lane of the matrix kernels takes more than one part, attention
//! spans several key tiles, and the last tiles are partial.

use std::ffi::c_void;

use cascade_gpu::kernels::{self, Launch};
use cascade_gpu::shim;
use cascade_kernels::ops::{self, AttentionShape, AttnSeq, KvLayer};
use cascade_kernels::quant::{dequantize, random_data};
use cascade_kernels::{matmul_reference, QMatrix};
use cascade_weights::{DType, RopeStyle};
use half::f16;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ---- launching --------------------------------------------------------------------------------

/// One kernel argument.
#[derive(Clone, Copy)]
enum A {
    P(*const c_void),
    I(i32),
    F(f32),
}

fn p<T>(v: &[T]) -> A {
    A::P(v.as_ptr() as *const c_void)
}

fn pm<T>(v: &mut [T]) -> A {
    A::P(v.as_mut_ptr() as *const c_void)
}

fn i(v: usize) -> A {
    A::I(i32::try_from(v).unwrap())
}

/// Launches through the shim; each argument in its own 8-byte slot (a 32-bit value in the slot's
/// first four bytes, little endian), as the driver reads `kernelParams`.
fn run(name: &str, l: Launch, args: &[A]) {
    let mut slots: Vec<u64> = args
        .iter()
        .map(|a| match *a {
            A::P(p) => p as u64,
            A::I(v) => v as u32 as u64,
            A::F(f) => f.to_bits() as u64,
        })
        .collect();
    let mut params: Vec<*mut c_void> = slots
        .iter_mut()
        .map(|s| s as *mut u64 as *mut c_void)
        .collect();
    // SAFETY: each test passes its kernel's parameter list (the contract in `kernels/cuda/`)
    // with buffers it made of the sizes the shapes it passes imply, alive for the call.
    unsafe { shim::launch(name, l.grid, l.block, l.shared, &mut params) }
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Bytes in 8-byte aligned storage (the kernels read weight words as int / u16).
struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    fn new(bytes: &[u8]) -> Aligned {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: `words` holds at least bytes.len() bytes; u64 storage has no invalid bit patterns.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                words.as_mut_ptr() as *mut u8,
                bytes.len(),
            )
        };
        Aligned {
            words,
            len: bytes.len(),
        }
    }

    fn zeroed(len: usize) -> Aligned {
        Aligned {
            words: vec![0u64; len.div_ceil(8)],
            len,
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the words hold at least `len` initialized bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len) }
    }

    fn arg(&self) -> A {
        A::P(self.words.as_ptr() as *const c_void)
    }
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn uniform(r: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-scale..scale)).collect()
}

fn f16_at(b: &[u8], at: usize) -> f64 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f64()
}

// ---- the shim itself --------------------------------------------------------------------------

#[test]
fn shim_shuffles_follow_cuda_semantics() {
    let mut out = vec![0i32; 4 * 64];
    run(
        "shim_test_shuffle",
        Launch {
            grid: [1, 1, 1],
            block: [64, 1, 1],
            shared: 0,
        },
        &[pm(&mut out)],
    );
    for t in 0..64 {
        let (lane, warp) = (t % 32, t / 32);
        assert_eq!(out[4 * t], (t ^ 5) as i32, "xor, thread {t}");
        let down = if lane + 3 < 32 { t + 3 } else { t };
        assert_eq!(out[4 * t + 1], down as i32, "down, thread {t}");
        assert_eq!(
            out[4 * t + 2],
            (warp * 32 + 7 + 100) as i32,
            "broadcast, thread {t}"
        );
        assert_eq!(out[4 * t + 3], 496, "warp_sum, thread {t}");
    }
}

#[test]
fn a_missing_syncthreads_shows_as_a_wrong_answer() {
    // shim_test_reverse reverses 128 values per block through shared memory; without its
    // barrier, threads read slots their owners have not written yet (they hold a previous
    // block's values), which the shim must expose. The shim runs the fibers of one of two
    // consecutive blocks in thread order and of the other backwards, so with two blocks both
    // directions fail: threads that read a higher thread's slot (lower half), and threads that
    // read a lower one's (upper half).
    let n = 128;
    let l = Launch {
        grid: [2, 1, 1],
        block: [n as u32, 1, 1],
        shared: 0,
    };
    for round in 0..4 {
        for sync in [1, 0] {
            let base = (round * 2 + sync + 1) as f32 * 1000.0;
            let value = |b: usize, j: usize| base + (b * 500 + j) as f32;
            let mut x: Vec<f32> = (0..2 * n).map(|k| value(k / n, k % n)).collect();
            run("shim_test_reverse", l, &[pm(&mut x), i(n), A::I(sync)]);
            let wrong = |j: usize| (0..2).any(|b| x[b * n + j] != value(b, n - 1 - j));
            let (lower, upper) = (0..n)
                .filter(|&j| wrong(j))
                .partition::<Vec<_>, _>(|&j| j < n / 2);
            if sync == 1 {
                assert!(
                    lower.is_empty() && upper.is_empty(),
                    "with the barrier, round {round}"
                );
            } else {
                assert!(
                    !lower.is_empty() && !upper.is_empty(),
                    "without the barrier, round {round}: wrong lower threads {lower:?}, upper {upper:?}"
                );
            }
        }
    }
}

#[test]
fn a_barrier_not_every_thread_reaches_is_reported_as_a_deadlock() {
    // The odd threads wait at a shuffle, the even ones at __syncthreads: the launch fails
    // (instead of hanging), and the next launch runs normally.
    let mut out = vec![0i32; 64];
    let mut slot = out.as_mut_ptr() as u64;
    let mut params = [&mut slot as *mut u64 as *mut c_void];
    // SAFETY: the test kernel takes one pointer, to 64 i32s (each thread writes its own).
    let err = unsafe { shim::launch("shim_test_divergent", [2, 1, 1], [64, 1, 1], 0, &mut params) }
        .unwrap_err()
        .to_string();
    assert!(err.contains("deadlock"), "{err}");
    shim_shuffles_follow_cuda_semantics();
}

#[test]
fn every_listed_kernel_exists_and_bad_launches_are_refused() {
    let zero = [0u32, 1, 1];
    // SAFETY (every launch below): each is refused before the kernel runs (an empty grid, an
    // unknown name, a block or shared size past the limits), so no argument is read.
    for k in kernels::KERNELS {
        let err = unsafe { shim::launch(k, zero, [128, 1, 1], 0, &mut []) }
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad geometry"), "{k}: {err}");
    }
    let err =
        unsafe { shim::launch("no_such_kernel", [1, 1, 1], [32, 1, 1], 0, &mut []) }.unwrap_err();
    assert!(err.to_string().contains("no such kernel"), "{err}");
    let err =
        unsafe { shim::launch("add_inplace", [1, 1, 1], [2048, 1, 1], 0, &mut []) }.unwrap_err();
    assert!(err.to_string().contains("bad geometry"), "{err}");
    let err =
        unsafe { shim::launch("add_inplace", [1, 1, 1], [32, 1, 1], 16, &mut []) }.unwrap_err();
    assert!(err.to_string().contains("shared"), "{err}");
}

// ---- activations to q8_1 ---------------------------------------------------------------------

/// llama.cpp's quantize_q8_1 per 32 values: d = amax / 127, q = round(x / d), ds = (d, d * sum q)
/// as halves.
fn quantize_q8_1_ref(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 36);
    for b in x.chunks_exact(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let q: Vec<i32> = b
            .iter()
            .map(|&v| {
                if amax == 0.0 {
                    0
                } else {
                    (v / d).round() as i32
                }
            })
            .collect();
        let sum: i32 = q.iter().sum();
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        out.extend_from_slice(&f16::from_f32(d * sum as f32).to_bits().to_le_bytes());
        out.extend(q.iter().map(|&v| v as i8 as u8));
    }
    out
}

fn quantize_on_shim(x: &[f32], cols: usize, n: usize) -> Aligned {
    let out = Aligned::zeroed(n * cols / 32 * 36);
    run(
        "quantize_q8_1",
        kernels::quantize_q8_1(cols as u32, n as u32),
        &[p(x), out.arg(), i(cols), i(n)],
    );
    out
}

#[test]
fn quantize_q8_1_is_bitwise_the_reference() {
    let mut r = rng(1);
    let (cols, n) = (96, 3);
    let mut x = uniform(&mut r, cols * n, 2.0);
    x[32..64].fill(0.0); // amax 0
    x[70] = 0.5 * (x[70] / x[70].abs()) * 3.0; // a clear maximum
    let got = quantize_on_shim(&x, cols, n);
    assert_eq!(got.bytes(), quantize_q8_1_ref(&x).as_slice());
}

// ---- quantized products ------------------------------------------------------------------------

/// One q8_1 block: (d, d * sum as stored, quants).
fn q8_1_block(xq: &[u8], b: usize) -> (f64, f64, &[u8]) {
    let blk = &xq[b * 36..(b + 1) * 36];
    (f16_at(blk, 0), f16_at(blk, 2), &blk[4..36])
}

fn idot(w: &[i32], x: &[u8]) -> i64 {
    w.iter()
        .zip(x)
        .map(|(&a, &b)| a as i64 * (b as i8) as i64)
        .sum()
}

fn xsum(x: &[u8]) -> i64 {
    x.iter().map(|&b| (b as i8) as i64).sum()
}

fn scale_min_k4(j: usize, q: &[u8]) -> (i64, i64) {
    if j < 4 {
        ((q[j] & 63) as i64, (q[j + 4] & 63) as i64)
    } else {
        (
            ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4)) as i64,
            ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as i64,
        )
    }
}

/// W[row] . x for one token from the integer quants: integer dot products per group (exact),
/// the scales and the stored activation sums combined as the kernels' formulas do, in f64.
/// Returns the value and the sum of the absolute values of its float terms (for tolerances).
fn qdot_ref(dtype: DType, wrow: &[u8], xq: &[u8]) -> (f64, f64) {
    qdot_ref_with(dtype, wrow, xq, false)
}

/// [`qdot_ref`]; with `exact_sums`, the offset and minimum terms of the 32-value types take the
/// activation block's exact integer sum (times its scale) instead of its f16 `ds.y`, as the
/// tensor-core kernels do.
fn qdot_ref_with(dtype: DType, wrow: &[u8], xq: &[u8], exact_sums: bool) -> (f64, f64) {
    let (mut y, mut mag) = (0f64, 0f64);
    let mut add = |t: f64| {
        y += t;
        mag += t.abs();
    };
    let nib = |qs: &[u8]| -> Vec<i32> {
        (0..32)
            .map(|j| if j < 16 { qs[j] & 15 } else { qs[j - 16] >> 4 } as i32)
            .collect()
    };
    match dtype {
        DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q8_0 => {
            let bb = dtype.block_bytes();
            for (b, blk) in wrow.chunks_exact(bb).enumerate() {
                let (dx, sx, qx) = q8_1_block(xq, b);
                let sx = if exact_sums { dx * xsum(qx) as f64 } else { sx };
                let d = f16_at(blk, 0);
                match dtype {
                    DType::Q4_0 => {
                        let q = nib(&blk[2..18]);
                        add(d * dx * idot(&q, qx) as f64);
                        add(-8.0 * d * sx);
                    }
                    DType::Q4_1 => {
                        let q = nib(&blk[4..20]);
                        add(d * dx * idot(&q, qx) as f64);
                        add(f16_at(blk, 2) * sx);
                    }
                    DType::Q5_0 => {
                        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                        let lo = nib(&blk[6..22]);
                        let q: Vec<i32> = (0..32)
                            .map(|j| lo[j] | ((((qh >> j) & 1) as i32) << 4))
                            .collect();
                        add(d * dx * idot(&q, qx) as f64);
                        add(-16.0 * d * sx);
                    }
                    _ => {
                        let q: Vec<i32> = blk[2..34].iter().map(|&b| b as i8 as i32).collect();
                        add(d * dx * idot(&q, qx) as f64);
                    }
                }
            }
        }
        DType::Q4K => {
            for (b, blk) in wrow.chunks_exact(144).enumerate() {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let (scales, qs) = (&blk[4..16], &blk[16..144]);
                for s in 0..8 {
                    let (sc, m) = scale_min_k4(s, scales);
                    let g = &qs[32 * (s / 2)..32 * (s / 2) + 32];
                    let q: Vec<i32> = g
                        .iter()
                        .map(|&v| if s % 2 == 0 { v & 15 } else { v >> 4 } as i32)
                        .collect();
                    let (dx, _, qx) = q8_1_block(xq, 8 * b + s);
                    add(d * sc as f64 * dx * idot(&q, qx) as f64);
                    add(-dmin * m as f64 * dx * xsum(qx) as f64);
                }
            }
        }
        DType::Q6K => {
            for (b, blk) in wrow.chunks_exact(210).enumerate() {
                let (ql_all, qh_all, sc_all) = (&blk[0..128], &blk[128..192], &blk[192..208]);
                let d = f16_at(blk, 208);
                // The 256 integer quants (minus 32) and their 16-value group scales.
                let mut q = [0i32; 256];
                let mut sc = [0i64; 16];
                for n in 0..2 {
                    let (ql, qh, s) = (&ql_all[n * 64..], &qh_all[n * 32..], &sc_all[n * 8..]);
                    for l in 0..32 {
                        let is = l / 16;
                        q[n * 128 + l] = ((ql[l] & 15) | ((qh[l] & 3) << 4)) as i32 - 32;
                        q[n * 128 + l + 32] =
                            ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        q[n * 128 + l + 64] =
                            ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        q[n * 128 + l + 96] =
                            ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        for k in 0..4 {
                            sc[(n * 128 + l + 32 * k) / 16] = s[is + 2 * k] as i8 as i64;
                        }
                    }
                }
                for g in 0..16 {
                    let (dx, _, qx) = q8_1_block(xq, 8 * b + g / 2);
                    let half = &qx[(g % 2) * 16..(g % 2) * 16 + 16];
                    add(d * sc[g] as f64 * dx * idot(&q[g * 16..g * 16 + 16], half) as f64);
                }
            }
        }
        _ => unreachable!("{dtype}"),
    }
    (y, mag)
}

const QTYPES: [DType; 6] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q8_0,
    DType::Q4K,
    DType::Q6K,
];

#[test]
fn quantized_products_match_the_integer_reference_and_the_float_one_and_agree_bitwise() {
    // cols 2304: every K-lane takes more than one part for every type (72 blocks of 32,
    // 9 super-blocks); 17 tokens: two MMVQ token groups, three MMQ token tiles, one partial.
    let (rows, cols, ntok) = (5usize, 2304usize, 17usize);
    let mut r = rng(2);
    let x = uniform(&mut r, ntok * cols, 1.0);
    let xq = quantize_on_shim(&x, cols, ntok);
    let xq_row = |t: usize| &xq.bytes()[t * cols / 32 * 36..(t + 1) * cols / 32 * 36];
    for dtype in QTYPES {
        let (mut worst_int, mut worst_float) = (0f64, 0f64);
        let w = random_data(dtype, rows * cols, 0.02, || r.next_u64());
        let wa = Aligned::new(&w);
        let row_bytes = dtype.bytes_for(cols);
        let sfx = kernels::suffix(dtype).unwrap();
        let mut y_mmvq = vec![f32::NAN; ntok * rows];
        run(
            &format!("mmvq_{sfx}"),
            kernels::mmvq(rows as u32, ntok as u32),
            &[
                wa.arg(),
                xq.arg(),
                pm(&mut y_mmvq),
                i(rows),
                i(cols),
                i(ntok),
            ],
        );
        let mut y_mmq = vec![f32::NAN; ntok * rows];
        run(
            &format!("mmq_{sfx}"),
            kernels::mmq(rows as u32, ntok as u32),
            &[
                wa.arg(),
                xq.arg(),
                pm(&mut y_mmq),
                i(rows),
                i(cols),
                i(ntok),
            ],
        );
        // One token alone: the same bits as in the batch of 17.
        let mut y_one = vec![f32::NAN; rows];
        run(
            &format!("mmvq_{sfx}"),
            kernels::mmvq(rows as u32, 1),
            &[
                wa.arg(),
                A::P(xq_row(3).as_ptr() as *const c_void),
                pm(&mut y_one),
                i(rows),
                i(cols),
                i(1),
            ],
        );
        let wm = QMatrix::new(dtype, &w, rows, cols).unwrap();
        let y_float = matmul_reference(&wm, &x, ntok);
        for t in 0..ntok {
            let xn: f64 = x[t * cols..(t + 1) * cols]
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            for row in 0..rows {
                let at = t * rows + row;
                let got = y_mmvq[at];
                assert_eq!(
                    got.to_bits(),
                    y_mmq[at].to_bits(),
                    "{dtype} mmvq vs mmq, t {t} row {row}"
                );
                let (want, mag) =
                    qdot_ref(dtype, &w[row * row_bytes..(row + 1) * row_bytes], xq_row(t));
                worst_int = worst_int.max((got as f64 - want).abs() / mag);
                assert!(
                    (got as f64 - want).abs() <= 5e-7 * mag,
                    "{dtype} t {t} row {row}: {got} vs integer reference {want} (terms {mag})"
                );
                let mut wrow = vec![0f32; cols];
                dequantize(dtype, &w[row * row_bytes..(row + 1) * row_bytes], &mut wrow);
                let wn: f64 = wrow.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
                worst_float = worst_float.max((got as f64 - y_float[at] as f64).abs() / (wn * xn));
                assert!(
                    (got as f64 - y_float[at] as f64).abs() <= 1e-3 * wn * xn,
                    "{dtype} t {t} row {row}: {got} vs float reference {} (|w||x| {})",
                    y_float[at],
                    wn * xn
                );
            }
        }
        for row in 0..rows {
            assert_eq!(
                y_one[row].to_bits(),
                y_mmvq[3 * rows + row].to_bits(),
                "{dtype} ntok 1 vs 17, row {row}"
            );
        }
        println!(
            "{dtype}: worst |y - integer ref| / sum|terms| {worst_int:.1e}, |y - float ref| / (|w||x|) {worst_float:.1e}"
        );
    }
}

/// The fragment layout `mma_s8_16816` is written against (common.cuh), checked through
/// `mma_probe`, which builds every fragment byte by byte from it: d = c + a b exactly.
#[test]
fn tensor_core_fragments_follow_the_stated_layout() {
    let mut r = rng(11);
    let a: Vec<i8> = (0..256).map(|_| r.random_range(-128..=127)).collect();
    let b: Vec<i8> = (0..128).map(|_| r.random_range(-128..=127)).collect();
    let c: Vec<i32> = (0..128)
        .map(|_| r.random_range(-100_000..100_000))
        .collect();
    let mut d = vec![0i32; 128];
    run(
        "mma_probe",
        kernels::mma_probe(),
        &[p(&a), p(&b), p(&c), pm(&mut d)],
    );
    for row in 0..16 {
        for col in 0..8 {
            let want: i32 = c[row * 8 + col]
                + (0..16)
                    .map(|k| a[row * 16 + k] as i32 * b[k * 8 + col] as i32)
                    .sum::<i32>();
            assert_eq!(d[row * 8 + col], want, "D[{row}][{col}]");
        }
    }
}

/// `mmq_mma_<type>` launched over `rows` rows of `w` from row `r0`, and `ntok` tokens of `xq`
/// from token `t0`.
fn run_mma(
    dtype: DType,
    w: &Aligned,
    xq: &Aligned,
    [r0, rows]: [usize; 2],
    [t0, ntok]: [usize; 2],
    cols: usize,
) -> Vec<f32> {
    let mut y = vec![f32::NAN; ntok * rows];
    let wp = w.bytes()[r0 * dtype.bytes_for(cols)..].as_ptr();
    let xp = xq.bytes()[t0 * cols / 32 * 36..].as_ptr();
    run(
        kernels::mma_kernel(dtype).unwrap(),
        kernels::mmq_mma(rows as u32, ntok as u32),
        &[
            A::P(wp as *const c_void),
            A::P(xp as *const c_void),
            pm(&mut y),
            i(rows),
            i(cols),
            i(ntok),
        ],
    );
    y
}

#[test]
fn tensor_core_products_match_the_integer_reference_and_do_not_depend_on_the_batch() {
    // 70 rows: two row tiles, the second partial; 37 tokens: two token tiles, the second
    // partial; 2304 columns: 9 steps of K; 864: a last step of 3 blocks (32-value types, as the
    // 0.5B draft's 896).
    let (rows, ntok) = (70usize, 37usize);
    let mut r = rng(12);
    for (dtype, cols) in QTYPES.iter().map(|&d| (d, 2304)).chain([
        (DType::Q4_0, 864),
        (DType::Q5_0, 864),
        (DType::Q8_0, 864),
        (DType::Q4_1, 864),
    ]) {
        let x = uniform(&mut r, ntok * cols, 1.0);
        let xq = quantize_on_shim(&x, cols, ntok);
        let xq_row = |t: usize| &xq.bytes()[t * cols / 32 * 36..(t + 1) * cols / 32 * 36];
        let w = random_data(dtype, rows * cols, 0.02, || r.next_u64());
        let wa = Aligned::new(&w);
        let row_bytes = dtype.bytes_for(cols);
        let y = run_mma(dtype, &wa, &xq, [0, rows], [0, ntok], cols);
        let mut worst = 0f64;
        for t in 0..ntok {
            for row in 0..rows {
                let got = y[t * rows + row] as f64;
                let wrow = &w[row * row_bytes..(row + 1) * row_bytes];
                let (want, mag) = qdot_ref_with(dtype, wrow, xq_row(t), true);
                worst = worst.max((got - want).abs() / mag);
                assert!(
                    (got - want).abs() <= 5e-7 * mag,
                    "{dtype} cols {cols} t {t} row {row}: {got} vs integer reference {want} (terms {mag})"
                );
            }
        }
        // The same rows and tokens in other tile positions, and one token alone: the same bits.
        let shifted = run_mma(dtype, &wa, &xq, [5, rows - 5], [3, ntok - 3], cols);
        let one = run_mma(dtype, &wa, &xq, [0, rows], [33, 1], cols);
        for t in 0..ntok - 3 {
            for row in 0..rows - 5 {
                assert_eq!(
                    shifted[t * (rows - 5) + row].to_bits(),
                    y[(t + 3) * rows + row + 5].to_bits(),
                    "{dtype} cols {cols}: token {} row {} moved in the tiles",
                    t + 3,
                    row + 5
                );
            }
        }
        for row in 0..rows {
            assert_eq!(
                one[row].to_bits(),
                y[33 * rows + row].to_bits(),
                "{dtype} token 33 alone, row {row}"
            );
        }
        println!("{dtype} cols {cols}: tensor-core product, worst |y - integer ref| / sum|terms| {worst:.1e}");
    }
}

#[test]
fn float_products_match_the_reference_and_do_not_depend_on_the_batch() {
    let (rows, cols, ntok) = (3usize, 300usize, 18usize);
    let mut r = rng(3);
    let x = uniform(&mut r, ntok * cols, 1.0);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let w = random_data(dtype, rows * cols, 0.5, || r.next_u64());
        let wa = Aligned::new(&w);
        let name = format!("mv_{}", kernels::suffix(dtype).unwrap());
        let mut y = vec![f32::NAN; ntok * rows];
        run(
            &name,
            kernels::mv(rows as u32, ntok as u32),
            &[wa.arg(), p(&x), pm(&mut y), i(rows), i(cols), i(ntok)],
        );
        let mut y_one = vec![f32::NAN; rows];
        run(
            &name,
            kernels::mv(rows as u32, 1),
            &[
                wa.arg(),
                p(&x[17 * cols..]),
                pm(&mut y_one),
                i(rows),
                i(cols),
                i(1),
            ],
        );
        let want = matmul_reference(&QMatrix::new(dtype, &w, rows, cols).unwrap(), &x, ntok);
        let mut wf = vec![0f32; rows * cols];
        dequantize(dtype, &w, &mut wf);
        for t in 0..ntok {
            for row in 0..rows {
                let mag: f64 = (0..cols)
                    .map(|c| (wf[row * cols + c] * x[t * cols + c]).abs() as f64)
                    .sum();
                let got = y[t * rows + row];
                assert!(
                    (got as f64 - want[t * rows + row] as f64).abs() <= 1e-6 * mag,
                    "{dtype} t {t} row {row}: {got} vs {}",
                    want[t * rows + row]
                );
            }
        }
        for row in 0..rows {
            assert_eq!(
                y_one[row].to_bits(),
                y[17 * rows + row].to_bits(),
                "{dtype} ntok 1 vs 18"
            );
        }
    }
}

// ---- per-row and element-wise kernels ----------------------------------------------------------

fn ulps(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    let key = |v: f32| {
        let b = v.to_bits() as i32;
        if b < 0 {
            i32::MIN - b
        } else {
            b
        }
    };
    key(a).abs_diff(key(b))
}

#[test]
fn rms_norm_matches_ops() {
    let (cols, n) = (200, 3);
    let mut r = rng(4);
    let x = uniform(&mut r, cols * n, 3.0);
    let w = uniform(&mut r, cols, 1.5);
    let mut got = vec![f32::NAN; cols * n];
    run(
        "rms_norm",
        kernels::rms_norm(n as u32),
        &[p(&x), p(&w), pm(&mut got), i(cols), A::F(1e-6), i(n)],
    );
    let mut want = vec![0f32; cols * n];
    ops::rms_norm(&x, &w, 1e-6, &mut want);
    // Only the sum of squares is added in another order: a few ulps.
    let worst = got
        .iter()
        .zip(&want)
        .map(|(&a, &b)| ulps(a, b))
        .max()
        .unwrap();
    assert!(worst <= 4, "worst {worst} ulps");
}

#[test]
fn element_wise_kernels_match_ops() {
    let mut r = rng(5);
    let (cols, n) = (300, 2);
    let len = cols * n;
    let x0 = uniform(&mut r, len, 4.0);
    let b = uniform(&mut r, cols, 1.0);
    let y = uniform(&mut r, len, 1.0);

    let mut got = x0.clone();
    run(
        "add_bias",
        kernels::add_bias(cols as u32, n as u32),
        &[pm(&mut got), p(&b), i(cols), i(n)],
    );
    let mut want = x0.clone();
    ops::add_bias(&mut want, &b);
    assert_eq!(got, want, "add_bias");

    let mut got = x0.clone();
    run(
        "add_inplace",
        kernels::elementwise(len as u32),
        &[pm(&mut got), p(&y), i(len)],
    );
    let mut want = x0.clone();
    ops::add_assign(&mut want, &y);
    assert_eq!(got, want, "add_inplace");

    let mut got = x0.clone();
    run(
        "copy_f32",
        kernels::elementwise((len - 5) as u32),
        &[pm(&mut got[3..]), p(&y), i(len - 5)],
    );
    let mut want = x0.clone();
    want[3..len - 2].copy_from_slice(&y[..len - 5]);
    assert_eq!(
        got, want,
        "copy_f32: len - 5 values at 3, the rest untouched"
    );

    let mut gate = x0.clone();
    gate[0] = -100.0;
    gate[1] = 90.0;
    run(
        "silu_mul",
        kernels::elementwise(len as u32),
        &[pm(&mut gate), p(&y), i(len)],
    );
    let mut want = x0.clone();
    want[0] = -100.0;
    want[1] = 90.0;
    ops::silu_mul(&mut want, &y);
    // ops' exp is within 2 ulp of the true value, as is expf: a few ulps apart at most.
    let worst = gate
        .iter()
        .zip(&want)
        .map(|(&a, &b)| ulps(a, b))
        .max()
        .unwrap();
    assert!(worst <= 6, "silu_mul: worst {worst} ulps");
}

#[test]
fn rope_matches_ops_in_both_styles() {
    let mut r = rng(6);
    for (n_heads, head_dim, theta) in [
        (3usize, 64usize, 10_000f32),
        (2, 128, 1_000_000.0),
        (1, 80, 10_000.0),
    ] {
        let positions = [0usize, 1, 17, 1000, 31_999];
        let ntok = positions.len();
        let x = uniform(&mut r, ntok * n_heads * head_dim, 2.0);
        let pos: Vec<i32> = positions.iter().map(|&v| v as i32).collect();
        for (style, neox) in [(RopeStyle::Interleaved, 0), (RopeStyle::Neox, 1)] {
            let mut got = x.clone();
            run(
                "rope",
                kernels::rope(ntok as u32),
                &[
                    pm(&mut got),
                    p(&pos),
                    i(ntok),
                    i(n_heads),
                    i(head_dim),
                    A::F(theta),
                    A::I(neox),
                ],
            );
            let mut want = x.clone();
            ops::rope(&mut want, n_heads, head_dim, &positions, theta, style);
            // The same angles (same recurrence, same theta_scale): only cos / sin may differ by
            // an ulp, so the rotated values by a few ulps of their inputs.
            let worst = got
                .iter()
                .zip(&want)
                .map(|(&a, &b)| (a - b).abs())
                .fold(0f32, f32::max);
            println!("rope {style:?} heads {n_heads} dim {head_dim}: worst difference {worst:e}");
            for (k, (&a, &b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6,
                    "{style:?} heads {n_heads} dim {head_dim} value {k}: {a} vs {b}"
                );
            }
        }
    }
}

// ---- gathers and the KV pool ------------------------------------------------------------------

#[test]
fn get_rows_is_bitwise_dequantize_for_every_type() {
    let mut r = rng(7);
    let (vocab, cols) = (7usize, 512usize);
    let ids: Vec<i32> = vec![6, 0, 3, 3];
    for dtype in [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q8_0,
        DType::Q4K,
        DType::Q6K,
    ] {
        let table = random_data(dtype, vocab * cols, 0.3, || r.next_u64());
        let ta = Aligned::new(&table);
        let mut got = vec![f32::NAN; ids.len() * cols];
        let name = kernels::get_rows_kernel(dtype).unwrap();
        run(
            name,
            kernels::get_rows(cols as u32, ids.len() as u32),
            &[ta.arg(), p(&ids), pm(&mut got), i(cols), i(ids.len())],
        );
        let rb = dtype.bytes_for(cols);
        for (k, &id) in ids.iter().enumerate() {
            let mut want = vec![0f32; cols];
            dequantize(
                dtype,
                &table[id as usize * rb..(id as usize + 1) * rb],
                &mut want,
            );
            let g = &got[k * cols..(k + 1) * cols];
            assert!(
                g.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{dtype} row {k}"
            );
        }
    }
}

#[test]
fn kv_store_writes_rows_to_their_slots() {
    let (kv_dim, n, pool_rows) = (300usize, 3usize, 10usize);
    let mut r = rng(8);
    let k = uniform(&mut r, n * kv_dim, 1.0);
    let v = uniform(&mut r, n * kv_dim, 1.0);
    let slots = [7i32, 2, 9];
    let mut kp = vec![0f32; pool_rows * kv_dim];
    let mut vp = vec![0f32; pool_rows * kv_dim];
    run(
        "kv_store",
        kernels::kv_store(kv_dim as u32, n as u32),
        &[
            p(&k),
            p(&v),
            pm(&mut kp),
            pm(&mut vp),
            p(&slots),
            i(kv_dim),
            i(n),
        ],
    );
    for row in 0..pool_rows {
        let src = slots.iter().position(|&s| s as usize == row);
        let (gk, gv) = (
            &kp[row * kv_dim..(row + 1) * kv_dim],
            &vp[row * kv_dim..(row + 1) * kv_dim],
        );
        match src {
            Some(i) => {
                assert_eq!(gk, &k[i * kv_dim..(i + 1) * kv_dim]);
                assert_eq!(gv, &v[i * kv_dim..(i + 1) * kv_dim]);
            }
            None => assert!(gk.iter().chain(gv).all(|&x| x == 0.0), "row {row} touched"),
        }
    }
}

// ---- attention ---------------------------------------------------------------------------------

/// The paged batch of one attention call (the kernels' index arrays).
struct Paged<'a> {
    q: &'a [f32],
    k_pool: &'a [f32],
    v_pool: &'a [f32],
    tables: &'a [i32],
    seq_of_row: &'a [i32],
    pos_of_row: &'a [i32],
    table_start: &'a [i32],
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    block: usize,
}

impl Paged<'_> {
    fn rows(&self) -> usize {
        self.seq_of_row.len()
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    fn attention(&self) -> Vec<f32> {
        let rows = self.rows();
        let mut out = vec![f32::NAN; rows * self.n_heads * self.head_dim];
        run(
            "attention_paged",
            kernels::attention_paged(rows as u32, self.n_kv_heads as u32),
            &[
                p(self.q),
                p(self.k_pool),
                p(self.v_pool),
                p(self.tables),
                p(self.seq_of_row),
                p(self.pos_of_row),
                p(self.table_start),
                pm(&mut out),
                i(rows),
                i(self.n_heads),
                i(self.n_kv_heads),
                i(self.head_dim),
                i(self.block),
                A::F(self.scale()),
            ],
        );
        out
    }

    /// attention_paged_split + attention_combine.
    fn attention_split(&self, keys_per_split: usize) -> Vec<f32> {
        let rows = self.rows();
        let max_keys = *self.pos_of_row.iter().max().unwrap() as u32 + 1;
        let split = kernels::attention_paged_split(
            rows as u32,
            self.n_kv_heads as u32,
            max_keys,
            keys_per_split as u32,
        );
        let splits = split.grid[2] as usize;
        let (no, nml) = kernels::attention_split_scratch(rows, self.n_heads, self.head_dim, splits);
        let mut part_o = vec![f32::NAN; no];
        let mut part_ml = vec![f32::NAN; nml];
        run(
            "attention_paged_split",
            split,
            &[
                p(self.q),
                p(self.k_pool),
                p(self.v_pool),
                p(self.tables),
                p(self.seq_of_row),
                p(self.pos_of_row),
                p(self.table_start),
                pm(&mut part_o),
                pm(&mut part_ml),
                i(rows),
                i(self.n_heads),
                i(self.n_kv_heads),
                i(self.head_dim),
                i(self.block),
                A::F(self.scale()),
                i(keys_per_split),
            ],
        );
        let mut out = vec![f32::NAN; rows * self.n_heads * self.head_dim];
        run(
            "attention_combine",
            kernels::attention_combine(rows as u32, self.n_heads as u32),
            &[
                p(&part_o),
                p(&part_ml),
                p(self.pos_of_row),
                pm(&mut out),
                i(rows),
                i(self.n_heads),
                i(self.head_dim),
                i(keys_per_split),
                i(splits),
            ],
        );
        out
    }
}

fn worst_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn paged_attention_matches_ops_over_shuffled_blocks_and_ragged_sequences() {
    // (n_heads, n_kv_heads, head_dim): a group of 3 with a width that is not a multiple of 32,
    // and a group of 8 wider than the block's 128 threads.
    for (n_heads, n_kv_heads, head_dim) in [(6usize, 2usize, 72usize), (8, 1, 160)] {
        let s = AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim,
        };
        let (q_dim, kv_dim, block) = (n_heads * head_dim, n_kv_heads * head_dim, 16usize);
        // (tokens in the batch, keys before them): a decode row, a verify run, a prefill chunk
        // after a long past (several 32-key tiles, the last partial).
        let spec = [(1usize, 0usize), (4, 37), (3, 70)];
        let n_blocks = spec
            .iter()
            .map(|&(n, past)| (n + past).div_ceil(block))
            .sum::<usize>()
            + 3;
        let mut r = rng(9 + head_dim as u64);
        // Blocks handed out in a shuffled order.
        let mut order: Vec<i32> = (0..n_blocks as i32).collect();
        for k in (1..order.len()).rev() {
            order.swap(k, r.random_range(0..=k));
        }
        let mut k_pool = vec![f32::NAN; n_blocks * block * kv_dim];
        let mut v_pool = vec![f32::NAN; n_blocks * block * kv_dim];
        let (mut tables, mut table_start, mut seq_of_row, mut pos_of_row): (
            Vec<i32>,
            Vec<i32>,
            Vec<i32>,
            Vec<i32>,
        ) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut rows = 0;
        let mut next_block = 0;
        let mut seq_tables = Vec::new();
        for (si, &(n, past)) in spec.iter().enumerate() {
            let keys = n + past;
            let nb = keys.div_ceil(block);
            let table: Vec<i32> = order[next_block..next_block + nb].to_vec();
            next_block += nb;
            table_start.push(tables.len() as i32);
            tables.extend(&table);
            for j in 0..keys {
                let at = (table[j / block] as usize * block + j % block) * kv_dim;
                for c in 0..kv_dim {
                    k_pool[at + c] = r.random_range(-1.0..1.0);
                    v_pool[at + c] = r.random_range(-1.0..1.0);
                }
            }
            for t in 0..n {
                seq_of_row.push(si as i32);
                pos_of_row.push((past + t) as i32);
            }
            seq_tables.push((
                rows,
                n,
                past,
                table.iter().map(|&b| b as u32).collect::<Vec<u32>>(),
            ));
            rows += n;
        }
        let q = uniform(&mut r, rows * q_dim, 1.0);
        let batch = Paged {
            q: &q,
            k_pool: &k_pool,
            v_pool: &v_pool,
            tables: &tables,
            seq_of_row: &seq_of_row,
            pos_of_row: &pos_of_row,
            table_start: &table_start,
            n_heads,
            n_kv_heads,
            head_dim,
            block,
        };
        let got = batch.attention();
        let seqs: Vec<AttnSeq> = seq_tables
            .iter()
            .map(|(row, n, past, table)| AttnSeq {
                row: *row,
                n_tokens: *n,
                past: *past,
                kv: KvLayer {
                    k: &k_pool,
                    v: &v_pool,
                    pages: Some((table, block)),
                },
            })
            .collect();
        let mut want = vec![0f32; rows * q_dim];
        let mut scratch = vec![0f32; ops::attention_batch_scratch(&seqs, n_heads)];
        ops::attention_batch(&q, &seqs, s, &mut want, &mut scratch);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "attention heads {n_heads}/{n_kv_heads} dim {head_dim}: worst difference {worst:e}"
        );
        for (k, (&a, &b)) in got.iter().zip(&want).enumerate() {
            // Online softmax over 32-key tiles vs one softmax: a few ulps of values of order 1.
            assert!(
                (a - b).abs() <= 2e-6,
                "heads {n_heads}/{n_kv_heads} dim {head_dim} value {k}: {a} vs {b}"
            );
        }
        // A row alone gives the same bits as in the batch: the verify run's last row.
        let last = 4; // rows: [decode], [verify x4], [prefill x3]
        let alone = Paged {
            q: &q[last * q_dim..],
            seq_of_row: &seq_of_row[last..last + 1],
            pos_of_row: &pos_of_row[last..last + 1],
            ..batch
        }
        .attention();
        assert!(
            alone
                .iter()
                .zip(&got[last * q_dim..(last + 1) * q_dim])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "a row alone differs from the batch"
        );
        // Split-K: splits of 32 keys (the 73-key rows take 3) within the same tolerance; one
        // split per row, bitwise attention_paged.
        let split = batch.attention_split(32);
        let worst = worst_diff(&split, &want);
        println!("split attention heads {n_heads}/{n_kv_heads} dim {head_dim}: worst difference {worst:e}");
        assert!(worst <= 2e-6, "split-K: worst difference {worst}");
        let one = batch.attention_split(1024);
        assert!(
            one.iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "one split differs from attention_paged"
        );
    }
}

// ---- selection ---------------------------------------------------------------------------------

/// (index, value) pairs by descending value, ties by ascending index, NaN left out.
fn order_ref(row: &[f32]) -> Vec<(i32, f32)> {
    let mut v: Vec<(i32, f32)> = row
        .iter()
        .enumerate()
        .filter(|(_, x)| !x.is_nan())
        .map(|(i, &x)| (i as i32, x))
        .collect();
    v.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
    v
}

#[test]
fn argmax_and_topk_are_exact_with_ties_lowest_index_first() {
    let mut r = rng(10);
    let (vocab, n, k) = (700usize, 3usize, 20usize);
    // Few distinct values: many ties, some at the maximum.
    let mut logits: Vec<f32> = (0..vocab * n)
        .map(|_| r.random_range(0..12) as f32 * 0.5 - 3.0)
        .collect();
    logits[5] = f32::NAN;
    logits[vocab + 3] = f32::INFINITY;
    logits[vocab + 650] = f32::INFINITY;
    // A row with only 4 non-NaN values: top-k runs out.
    let short = &mut logits[2 * vocab..3 * vocab];
    short.fill(f32::NAN);
    short[10] = 1.0;
    short[600] = 2.0;
    short[11] = 1.0;
    short[0] = f32::NEG_INFINITY;

    let mut idx = vec![-7i32; n];
    let mut val = vec![f32::NAN; n];
    let all = A::P(std::ptr::null());
    run(
        "argmax_rows",
        kernels::argmax_rows(n as u32),
        &[p(&logits), all, i(vocab), i(n), pm(&mut idx), pm(&mut val)],
    );
    // With a validity mask: every row's maximum (and its ties) masked out, and a stretch at the
    // end, as a tokenizer's padding ids are.
    let mut valid = vec![1u8; vocab];
    valid[vocab - 40..].fill(0);
    for row in 0..n {
        let best = order_ref(&logits[row * vocab..(row + 1) * vocab])[0].1;
        for (c, v) in logits[row * vocab..(row + 1) * vocab].iter().enumerate() {
            if *v == best {
                valid[c] = 0;
            }
        }
    }
    let (mut midx, mut mval) = (vec![-7i32; n], vec![f32::NAN; n]);
    run(
        "argmax_rows",
        kernels::argmax_rows(n as u32),
        &[
            p(&logits),
            p(&valid),
            i(vocab),
            i(n),
            pm(&mut midx),
            pm(&mut mval),
        ],
    );
    for row in 0..n {
        let masked: Vec<f32> = logits[row * vocab..(row + 1) * vocab]
            .iter()
            .zip(&valid)
            .map(|(&v, &ok)| if ok != 0 { v } else { f32::NAN })
            .collect();
        let want = order_ref(&masked)
            .first()
            .copied()
            .unwrap_or((-1, f32::NEG_INFINITY));
        assert_eq!((midx[row], mval[row]), want, "masked argmax row {row}");
        assert_ne!(midx[row], idx[row], "the mask changed row {row}'s choice");
    }
    let (tidx, tval) = topk(&logits, None, vocab, n, k);
    for row in 0..n {
        let want = order_ref(&logits[row * vocab..(row + 1) * vocab]);
        assert_eq!((idx[row], val[row]), want[0], "argmax row {row}");
        for j in 0..k {
            let w = want.get(j).copied().unwrap_or((-1, f32::NEG_INFINITY));
            assert_eq!(
                (tidx[row * k + j], tval[row * k + j]),
                w,
                "topk row {row} rank {j}"
            );
        }
    }
}

/// `topk_rows` as the device model runs it: segments of 4096 values, then launches over the
/// segments' candidates until one segment is left. Returns each row's k (id, value).
fn topk(
    vals: &[f32],
    valid: Option<&[u8]>,
    len: usize,
    n: usize,
    k: usize,
) -> (Vec<i32>, Vec<f32>) {
    let (mut src_v, mut src_i): (Vec<f32>, Option<Vec<i32>>) = (vals.to_vec(), None);
    let mut len = len;
    loop {
        let segs = kernels::topk_segments(len as u32) as usize;
        let mut oi = vec![-7i32; n * segs * k];
        let mut ov = vec![f32::NAN; n * segs * k];
        let ids = src_i.as_ref().map_or(A::P(std::ptr::null()), |v| p(v));
        let mask = match (&src_i, valid) {
            (None, Some(m)) => p(m),
            _ => A::P(std::ptr::null()),
        };
        run(
            "topk_rows",
            kernels::topk_rows(len as u32, n as u32),
            &[
                p(&src_v),
                ids,
                mask,
                i(len),
                i(n),
                i(k),
                pm(&mut oi),
                pm(&mut ov),
            ],
        );
        if segs == 1 {
            return (oi, ov);
        }
        (src_v, src_i, len) = (ov, Some(oi), segs * k);
    }
}

#[test]
fn topk_over_segments_and_merges_is_the_exact_masked_order() {
    // 300,000 values a row: 74 segments, 74 x 64 candidates, then one more merge (three
    // launches); coarse values so that ties cross segment boundaries, a masked stretch with the
    // largest values in it, a NaN and an infinity.
    let mut r = rng(12);
    let (len, n, k) = (300_000usize, 2usize, 64usize);
    let mut vals: Vec<f32> = (0..len * n)
        .map(|_| r.random_range(0..4000) as f32 * 0.01 - 20.0)
        .collect();
    for c in [7, 4100, 150_000, 299_999] {
        vals[c] = 20.0; // ties at the top of row 0, in different segments
    }
    vals[len + 9] = f32::NAN;
    vals[len + 77_000] = f32::INFINITY;
    let mut valid = vec![1u8; len];
    valid[100_000..100_500].fill(0);
    valid[150_000] = 0; // one of row 0's maxima
    for (row, x) in [(0usize, 30.0f32), (1, 25.0)] {
        vals[row * len + 100_100] = x; // above everything, masked
    }
    assert!(kernels::topk_segments(kernels::topk_segments(len as u32) * k as u32) > 1);
    let (ti, tv) = topk(&vals, Some(&valid), len, n, k);
    for row in 0..n {
        let want = order_ref(&masked_to(&vals[row * len..(row + 1) * len], &valid));
        for j in 0..k {
            assert_eq!(
                (ti[row * k + j], tv[row * k + j]),
                want[j],
                "row {row} rank {j}"
            );
        }
    }
    assert_eq!(
        &ti[..3],
        &[7, 4100, 299_999],
        "row 0's tied maxima, masked one left out"
    );
    // A row with fewer values than k (six valid ids, one NaN): the rest is -1 and -inf; signed
    // zeros are equal (ties by id), as the host's order has them.
    let small = 5000usize;
    let mut few_vals = vals[..small].to_vec();
    few_vals[..6].copy_from_slice(&[-0.0, 3.0, 0.0, f32::NAN, f32::NEG_INFINITY, 0.0]);
    let mut few = vec![0u8; small];
    few[..6].fill(1);
    let (ti, tv) = topk(&few_vals, Some(&few), small, 1, k);
    assert_eq!(&ti[..6], &[1, 0, 2, 5, 4, -1]);
    let want = order_ref(&masked_to(&few_vals, &few));
    for j in 0..k {
        let w = want.get(j).copied().unwrap_or((-1, f32::NEG_INFINITY));
        assert_eq!(
            (ti[j], tv[j].to_bits()),
            (w.0, w.1.to_bits()),
            "short row rank {j}"
        );
    }
}

fn masked_to(vals: &[f32], valid: &[u8]) -> Vec<f32> {
    vals.iter()
        .zip(valid)
        .map(|(&v, &ok)| if ok != 0 { v } else { f32::NAN })
        .collect()
}

#[test]
fn paged_attention_takes_a_32k_context() {
    // One decode row at position 32767 (1024 key tiles) over blocks of 256 in reverse order,
    // against ops::attention over the same keys stored contiguously.
    let (n_heads, n_kv_heads, head_dim, block) = (2usize, 1usize, 64usize, 256usize);
    let keys = 32_768usize;
    let kv_dim = n_kv_heads * head_dim;
    let mut r = rng(11);
    let k = uniform(&mut r, keys * kv_dim, 1.0);
    let v = uniform(&mut r, keys * kv_dim, 1.0);
    let q = uniform(&mut r, n_heads * head_dim, 3.0);
    let n_blocks = keys / block;
    let table: Vec<i32> = (0..n_blocks as i32).rev().collect();
    let mut k_pool = vec![f32::NAN; keys * kv_dim];
    let mut v_pool = vec![f32::NAN; keys * kv_dim];
    for j in 0..keys {
        let at = (table[j / block] as usize * block + j % block) * kv_dim;
        k_pool[at..at + kv_dim].copy_from_slice(&k[j * kv_dim..(j + 1) * kv_dim]);
        v_pool[at..at + kv_dim].copy_from_slice(&v[j * kv_dim..(j + 1) * kv_dim]);
    }
    let batch = Paged {
        q: &q,
        k_pool: &k_pool,
        v_pool: &v_pool,
        tables: &table,
        seq_of_row: &[0],
        pos_of_row: &[keys as i32 - 1],
        table_start: &[0],
        n_heads,
        n_kv_heads,
        head_dim,
        block,
    };
    let got = batch.attention();
    let split = batch.attention_split(kernels::ATTENTION_KEYS_PER_SPLIT as usize);
    // ops::attention: the last of `keys` positions as one query row with keys - 1 past.
    let s = AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim,
    };
    let mut want = vec![0f32; n_heads * head_dim];
    let mut scratch = vec![0f32; ops::attention_scratch(1, keys - 1, n_heads)];
    ops::attention(&q, &k, &v, keys - 1, s, &mut want, &mut scratch);
    let worst = worst_diff(&got, &want);
    let worst_split = worst_diff(&split, &want);
    println!("attention over {keys} keys: worst difference {worst:e}, split-K (64 splits) {worst_split:e}");
    assert!(worst <= 1e-6, "worst difference {worst}");
    assert!(
        worst_split <= 1e-6,
        "split-K: worst difference {worst_split}"
    );
}
