//! Matrix products against weights read in place from the mapping.
//!
//! `out[t][r] = Σ_c x[t][c] · W[r][c]` for a batch of token rows `x`. Each weight row is
//! dequantized once per batch, one 256-value segment at a time into a stack buffer, and dotted
//! with every token row. Every output element is computed by one thread in a fixed order, so a
//! row's result does not depend on the batch size or the thread count (batch invariance).

use cascade_weights::{DType, Layout};
use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::interleave;
use crate::quant::dequantize;

/// A `[rows, cols]` weight matrix in any supported type, viewed in place.
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    // Private outside the crate: the integer kernels read `data` with unchecked loads sized by
    // the other fields, so a matrix is only built through the checked constructors.
    pub(crate) dtype: DType,
    pub(crate) data: &'a [u8],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// Block order ([`Layout::Interleaved8`] for matrices written by `cascade repack`).
    pub(crate) layout: Layout,
}

impl<'a> QMatrix<'a> {
    /// A row-major matrix.
    pub fn new(dtype: DType, data: &'a [u8], rows: usize, cols: usize) -> Result<Self> {
        Self::with_layout(dtype, data, rows, cols, Layout::Rows)
    }

    pub fn with_layout(
        dtype: DType,
        data: &'a [u8],
        rows: usize,
        cols: usize,
        layout: Layout,
    ) -> Result<Self> {
        let values = rows.checked_mul(cols);
        if !cols.is_multiple_of(dtype.block_len())
            || values.is_none_or(|v| data.len() != dtype.bytes_for(v))
            || !layout.supports(dtype)
            || !rows.is_multiple_of(layout.group_rows())
        {
            return Err(KernelError::Shape {
                op: "QMatrix",
                detail: format!(
                    "{} bytes of {dtype} cannot hold [{rows}, {cols}] in layout {layout:?}",
                    data.len()
                ),
            });
        }
        Ok(QMatrix {
            dtype,
            data,
            rows,
            cols,
            layout,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn row_bytes(&self) -> usize {
        self.dtype.bytes_for(self.cols)
    }

    /// Row `r`'s blocks (row-major matrices only: an interleaved row is not contiguous).
    pub fn row(&self, r: usize) -> &'a [u8] {
        debug_assert_eq!(self.layout, Layout::Rows, "row() of an interleaved matrix");
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Dequantizes row `r` into `out` (length `cols`): an embedding lookup.
    pub fn dequant_row(&self, r: usize, out: &mut [f32]) {
        match self.layout {
            Layout::Rows => dequantize(self.dtype, self.row(r), out),
            Layout::Interleaved8 => dequantize(
                self.dtype,
                &interleave::row_of(self.dtype, self.data, self.cols, r),
                out,
            ),
        }
    }

    /// Rows `r0..r1` as a row-major matrix: a view when the matrix is row-major, otherwise the
    /// rows' bytes gathered into `buf` (`r0`, `r1` multiples of the layout's group, or `r1` the
    /// last row). For the paths without an interleaved kernel.
    pub(crate) fn rows_major<'b>(&self, r0: usize, r1: usize, buf: &'b mut Vec<u8>) -> QMatrix<'b>
    where
        'a: 'b,
    {
        let rb = self.row_bytes();
        let data: &'b [u8] = match self.layout {
            Layout::Rows => &self.data[r0 * rb..r1 * rb],
            Layout::Interleaved8 => {
                let bytes = &self.data[r0 * rb..r1 * rb];
                *buf = interleave::deinterleave8(self.dtype, bytes, r1 - r0, self.cols)
                    .expect("whole groups of a checked interleaved matrix");
                buf
            }
        };
        QMatrix {
            dtype: self.dtype,
            data,
            rows: r1 - r0,
            cols: self.cols,
            layout: Layout::Rows,
        }
    }
}

/// Values dequantized at a time: one K-quant super-block, eight 32-value blocks.
const SEGMENT: usize = 256;
/// Token rows accumulated together per weight row.
const TOKEN_TILE: usize = 32;
/// Weight rows handed to one task.
const ROWS_PER_TASK: usize = 16;

/// An output pointer shared by the tasks of one product (here and in `qdot`).
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: the pointer is only used to write disjoint output elements, one task per weight row
// range, while the owning slice is borrowed mutably for the whole parallel region.
unsafe impl Send for SyncPtr {}
// SAFETY: as above; no two tasks touch the same element.
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer; a method so closures capture the whole (Send) wrapper, not the raw field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Fixed-order dot product of two equal-length slices: 16 independent lanes, summed pairwise.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        // SAFETY: the target has AVX2 (checked at compile time above).
        unsafe { dot_avx2(a, b) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    dot_portable(a, b)
}

/// [`dot`] in plain Rust: the order of operations the SIMD version keeps.
#[inline(always)]
pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[i] += x * y;
    }
    let mut s8 = [0f32; 8];
    for i in 0..8 {
        s8[i] = acc[i] + acc[i + 8];
    }
    let s4 = [s8[0] + s8[4], s8[1] + s8[5], s8[2] + s8[6], s8[3] + s8[7]];
    (s4[0] + s4[2]) + (s4[1] + s4[3])
}

/// [`dot_portable`] with lanes 0..8 and 8..16 in two registers (LLVM vectorized the 16 lanes as
/// pairs of scalars, which made attention 8% of a forward). Multiply then add, as the portable
/// version, so the results are bitwise the same.
///
/// # Safety
/// The target must have AVX2 (these are compiled only when it does). Reads `a[..len]` and
/// `b[..len]` with `len = min(a.len(), b.len())`, so any two slices are sound.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: every load is at `i + 8 <= full <= len` floats into both slices, and the stores are
    // into local arrays of 16 and 4; AVX2 is a compile-time target feature.
    unsafe {
        let len = a.len().min(b.len());
        let full = len / 16 * 16;
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut lo = _mm256_setzero_ps();
        let mut hi = _mm256_setzero_ps();
        let mut i = 0;
        while i < full {
            let x0 = _mm256_mul_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            let x1 = _mm256_mul_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
            );
            lo = _mm256_add_ps(lo, x0);
            hi = _mm256_add_ps(hi, x1);
            i += 16;
        }
        let mut acc = [0f32; 16];
        _mm256_storeu_ps(acc.as_mut_ptr(), lo);
        _mm256_storeu_ps(acc.as_mut_ptr().add(8), hi);
        for (j, (x, y)) in a[full..len].iter().zip(&b[full..len]).enumerate() {
            acc[j] += x * y;
        }
        let s8 = _mm256_add_ps(
            _mm256_loadu_ps(acc.as_ptr()),
            _mm256_loadu_ps(acc.as_ptr().add(8)),
        );
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
        let mut v = [0f32; 4];
        _mm_storeu_ps(v.as_mut_ptr(), s4);
        (v[0] + v[2]) + (v[1] + v[3])
    }
}

/// `[dot(a, b_0), .., dot(a, b_7)]` for eight rows `b_m = b[m * stride..][..a.len()]`: bitwise
/// eight calls of [`dot`], with `a` loaded once per chunk for all rows and the eight final
/// reductions done together (attention scores eight keys at a time).
#[inline(always)]
pub fn dot8(a: &[f32], b: &[f32], stride: usize) -> [f32; 8] {
    // Checked: release builds do not check overflow, and this bound guards raw loads.
    let need = stride.checked_mul(7).and_then(|x| x.checked_add(a.len()));
    assert!(
        need.is_some_and(|n| b.len() >= n),
        "dot8: rows past the end of b"
    );
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if a.len().is_multiple_of(16) {
        // SAFETY: the target has AVX2 (checked at compile time above); rows are in bounds
        // (asserted above).
        return unsafe { dot8_avx2(a, b, stride) };
    }
    std::array::from_fn(|m| dot(a, &b[m * stride..][..a.len()]))
}

/// [`dot8`] for lengths that are a multiple of 16: per row the two 8-lane accumulators of
/// [`dot_avx2`], then its reduction tree (`lo + hi`, halves, then `(v0 + v2) + (v1 + v3)`) on
/// the eight rows at once after an 8x8 transpose.
///
/// # Safety
/// The target must have AVX2, `a.len()` must be a multiple of 16 and `b` must hold `7 * stride +
/// a.len()` floats (eight rows of `a.len()` at `stride`).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
unsafe fn dot8_avx2(a: &[f32], b: &[f32], stride: usize) -> [f32; 8] {
    use std::arch::x86_64::*;
    // SAFETY: loads of `a` stay below `a.len()`; row `m < 8` is read at `m * stride + i + 16 <= 7 *
    // stride + a.len() <= b.len()` (the caller's bound); stores go to a local array of 8; AVX2 is a
    // compile-time target feature.
    unsafe {
        let len = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut lo = [_mm256_setzero_ps(); 8];
        let mut hi = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i < len {
            let (a0, a1) = (_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pa.add(i + 8)));
            for m in 0..8 {
                let r = pb.add(m * stride + i);
                lo[m] = _mm256_add_ps(lo[m], _mm256_mul_ps(a0, _mm256_loadu_ps(r)));
                hi[m] = _mm256_add_ps(hi[m], _mm256_mul_ps(a1, _mm256_loadu_ps(r.add(8))));
            }
            i += 16;
        }
        // s8 per row, then lane i of every row in one vector (8x8 transpose: T_i).
        let s: [__m256i; 8] =
            std::array::from_fn(|m| _mm256_castps_si256(_mm256_add_ps(lo[m], hi[m])));
        let t = crate::qdot::x86::transpose8(s).map(|v| _mm256_castsi256_ps(v));
        // The halves' sum s4[i] = s8[i] + s8[i + 4], then (s4[0] + s4[2]) + (s4[1] + s4[3]).
        let (v0, v1, v2, v3) = (
            _mm256_add_ps(t[0], t[4]),
            _mm256_add_ps(t[1], t[5]),
            _mm256_add_ps(t[2], t[6]),
            _mm256_add_ps(t[3], t[7]),
        );
        let r = _mm256_add_ps(_mm256_add_ps(v0, v2), _mm256_add_ps(v1, v3));
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), r);
        out
    }
}

/// `out[t * w.rows + r] = dot(x[t * w.cols ..], W[r])` for `t < n_tokens`.
pub fn matmul(w: &QMatrix, x: &[f32], n_tokens: usize, out: &mut [f32]) -> Result<()> {
    if x.len() != n_tokens * w.cols || out.len() != n_tokens * w.rows {
        return Err(KernelError::Shape {
            op: "matmul",
            detail: format!(
                "W [{}, {}], x has {} values for {n_tokens} tokens, out has {}",
                w.rows,
                w.cols,
                x.len(),
                out.len()
            ),
        });
    }
    let seg = if w.dtype.block_len() > 1 {
        SEGMENT.min(w.cols)
    } else {
        SEGMENT
    };
    let seg_bytes = w.dtype.bytes_for(seg);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let n_tasks = w.rows.div_ceil(ROWS_PER_TASK);
    let (rows, cols) = (w.rows, w.cols);
    (0..n_tasks).into_par_iter().for_each(|task| {
        let mut buf = [0f32; SEGMENT];
        let mut acc = [0f32; TOKEN_TILE];
        let (r0, r1) = (task * ROWS_PER_TASK, ((task + 1) * ROWS_PER_TASK).min(rows));
        let mut gathered = Vec::new();
        let local = w.rows_major(r0, r1, &mut gathered);
        for r in r0..r1 {
            let row = local.row(r - r0);
            for t0 in (0..n_tokens).step_by(TOKEN_TILE) {
                let nt = TOKEN_TILE.min(n_tokens - t0);
                acc[..nt].fill(0.0);
                let mut c0 = 0;
                while c0 < cols {
                    let n = seg.min(cols - c0);
                    let bytes = &row[c0 / seg * seg_bytes..][..w.dtype.bytes_for(n)];
                    dequantize(w.dtype, bytes, &mut buf[..n]);
                    for (t, a) in acc[..nt].iter_mut().enumerate() {
                        let xr = &x[(t0 + t) * cols + c0..][..n];
                        *a += dot(&buf[..n], xr);
                    }
                    c0 += n;
                }
                for (t, a) in acc[..nt].iter().enumerate() {
                    // SAFETY: (t0 + t, r) is in bounds (checked above) and written by this task
                    // only.
                    unsafe { *out_ptr.get().add((t0 + t) * rows + r) = *a };
                }
            }
        }
    });
    Ok(())
}

/// Reference product: dequantize the whole matrix, multiply in f64. For tests.
pub fn matmul_reference(w: &QMatrix, x: &[f32], n_tokens: usize) -> Vec<f32> {
    let mut wf = vec![0f32; w.rows * w.cols];
    let mut gathered = Vec::new();
    dequantize(
        w.dtype,
        w.rows_major(0, w.rows, &mut gathered).data,
        &mut wf,
    );
    let mut out = vec![0f32; n_tokens * w.rows];
    for t in 0..n_tokens {
        for r in 0..w.rows {
            let s: f64 = (0..w.cols)
                .map(|c| x[t * w.cols + c] as f64 * wf[r * w.cols + c] as f64)
                .sum();
            out[t * w.rows + r] = s as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot8_refuses_rows_past_the_end_even_when_the_bound_overflows() {
        let a = [1f32; 16];
        let b = [1f32; 16 * 8];
        assert_eq!(dot8(&a, &b, 16), [16.0; 8]);
        for stride in [17, usize::MAX / 7 + 1, usize::MAX] {
            let r = std::panic::catch_unwind(|| dot8(&a, &b, stride));
            assert!(r.is_err(), "stride {stride} was accepted");
        }
    }
    use crate::quant::random_data;
    use rand::{Rng, SeedableRng};

    #[test]
    fn dot8_is_bitwise_eight_dots() {
        let f = |i: usize| ((i * 7919 % 2003) as f32 - 1001.0) / 977.0;
        for (len, stride) in [
            (16, 16),
            (64, 256),
            (128, 256),
            (128, 131),
            (72, 80),
            (5, 9),
        ] {
            let a: Vec<f32> = (0..len).map(f).collect();
            let b: Vec<f32> = (0..7 * stride + len).map(|i| f(i + 17)).collect();
            let got = super::dot8(&a, &b, stride);
            for (m, g) in got.iter().enumerate() {
                let want = super::dot(&a, &b[m * stride..][..len]);
                assert_eq!(
                    g.to_bits(),
                    want.to_bits(),
                    "len {len} stride {stride} row {m}"
                );
            }
        }
    }

    #[test]
    fn dot_equals_its_portable_order_bitwise() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for len in [0, 1, 15, 16, 17, 64, 100, 128, 896] {
            let a: Vec<f32> = (0..len).map(|_| next()).collect();
            let b: Vec<f32> = (0..len).map(|_| next()).collect();
            assert_eq!(
                super::dot(&a, &b).to_bits(),
                super::dot_portable(&a, &b).to_bits(),
                "len {len}"
            );
        }
    }
    use rand_chacha::ChaCha8Rng;

    fn case(dtype: DType, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let data = random_data(dtype, rows * cols, 0.02, || rng.random());
        let x: Vec<f32> = (0..16 * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        (data, x)
    }

    #[test]
    fn every_type_matches_the_reference() {
        for dtype in DType::ALL {
            let (rows, cols) = (37, 512 + if dtype.block_len() == 1 { 40 } else { 256 });
            let (data, x) = case(dtype, rows, cols, 7);
            let w = QMatrix::new(dtype, &data, rows, cols).unwrap();
            for n in [1, 3, 16] {
                let mut out = vec![0f32; n * rows];
                matmul(&w, &x[..n * cols], n, &mut out).unwrap();
                let want = matmul_reference(&w, &x[..n * cols], n);
                for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                    let tol = 1e-4 * (1.0 + b.abs());
                    assert!((a - b).abs() <= tol, "{dtype} n={n} i={i}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn rows_are_batch_and_thread_invariant() {
        for dtype in DType::ALL {
            let (rows, cols) = (50, 512);
            let (data, x) = case(dtype, rows, cols, 11);
            let w = QMatrix::new(dtype, &data, rows, cols).unwrap();
            let mut full = vec![0f32; 16 * rows];
            matmul(&w, &x, 16, &mut full).unwrap();
            for t in [0, 5, 15] {
                let mut one = vec![0f32; rows];
                matmul(&w, &x[t * cols..(t + 1) * cols], 1, &mut one).unwrap();
                assert_eq!(one, full[t * rows..(t + 1) * rows], "{dtype} token {t}");
            }
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            let mut single = vec![0f32; 16 * rows];
            pool.install(|| matmul(&w, &x, 16, &mut single).unwrap());
            assert_eq!(single, full, "{dtype} with 1 thread");
        }
    }

    #[test]
    fn shape_errors_are_reported() {
        assert!(QMatrix::new(DType::Q8_0, &[0; 10], 1, 32).is_err());
        let data = vec![0u8; 34];
        let w = QMatrix::new(DType::Q8_0, &data, 1, 32).unwrap();
        assert!(matmul(&w, &[0.0; 31], 1, &mut [0.0]).is_err());
    }
}
