//! Matrix products on a device: a weight matrix in its stored type, times token rows. Quantized
//! types take 8-bit activations (`block_q8_1`, quantized once per input and shared by the
//! products that read it) through `dp4a` kernels: MMVQ for up to 16 rows, the tiled MMQ above
//! (bitwise the same results); prompt rows, on devices with tensor cores, through the `mma`
//! kernel (its own reduction order: see [`RowSplit`]). Float types take the f32 rows directly.

use cascade_weights::DType;

use crate::device::{Args, DevBuf, Device};
use crate::error::{GpuError, Result};
use crate::kernels;

/// Most token rows the MMVQ kernels take at their best; more go through MMQ's tiles.
pub const MMVQ_MAX_ROWS: usize = kernels::MMVQ_TOKENS as usize;

/// Which kernels a pass's rows take: the first `dp4a` rows (generated tokens: decode and
/// verification) MMVQ or MMQ, the `mma` rows after them (prompt tokens) the tensor-core kernel.
/// A row's kernel depends on what the row is, never on how many rows share the pass, so its
/// result is the same bits in any batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowSplit {
    pub dp4a: usize,
    pub mma: usize,
}

impl RowSplit {
    /// Every row through the dp4a kernels.
    pub fn dp4a(n: usize) -> RowSplit {
        RowSplit { dp4a: n, mma: 0 }
    }

    pub fn total(&self) -> usize {
        self.dp4a + self.mma
    }
}

/// A weight matrix on the device (plain row layout).
pub struct Mat {
    buf: DevBuf,
    dtype: DType,
    rows: usize,
    cols: usize,
    /// Kernel names, made once: the product for up to [`MMVQ_MAX_ROWS`] rows, above, and the
    /// row gather.
    few: &'static str,
    many: &'static str,
    /// The tensor-core product (quantized types).
    mma: Option<&'static str>,
    gather: &'static str,
}

impl Mat {
    pub fn new(buf: DevBuf, dtype: DType, rows: usize, cols: usize, name: &str) -> Result<Mat> {
        let missing =
            || GpuError::Unsupported(format!("{name}: no CUDA kernel for {dtype:?} matrices"));
        let few = kernels::matmul_kernel(dtype, false).ok_or_else(missing)?;
        let many = kernels::matmul_kernel(dtype, true).ok_or_else(missing)?;
        let gather = kernels::get_rows_kernel(dtype).ok_or_else(missing)?;
        let mma = kernels::mma_kernel(dtype);
        let want = rows * cols / dtype.block_len() * dtype.block_bytes();
        // A buffer may be longer (a reused workspace buffer holding gathered rows).
        if buf.len() < want || !cols.is_multiple_of(32) {
            return Err(GpuError::Unsupported(format!(
                "{name}: {rows}x{cols} {dtype:?} needs {want} bytes and 32 | cols; has {}",
                buf.len()
            )));
        }
        Ok(Mat {
            buf,
            dtype,
            rows,
            cols,
            few,
            many,
            mma,
            gather,
        })
    }

    pub fn bytes(&self) -> usize {
        self.rows * self.row_bytes()
    }

    /// Bytes of one row in the stored type.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_len() * self.dtype.block_bytes()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn buf(&self) -> &DevBuf {
        &self.buf
    }

    /// The buffer back (a matrix made over a workspace buffer).
    pub fn into_buf(self) -> DevBuf {
        self.buf
    }

    /// `y[t][r] = Σ_c W[r][c] · x[t][c]` for the rows of `x`, split between the kernels as
    /// `rows` says (float types take one kernel for all); quantized types quantize `x` through
    /// `mm` unless it holds `x` already.
    pub fn apply(
        &self,
        d: &Device,
        mm: &mut Matmul,
        x: &DevBuf,
        y: &DevBuf,
        rows: RowSplit,
    ) -> Result<()> {
        let n = rows.total();
        let nrows = self.rows as u32;
        if !kernels::is_quantized(self.dtype) {
            return d.launch(
                self.few,
                kernels::mv(nrows, n as u32),
                self.args(x, 0, y, 0, n),
            );
        }
        mm.prepare(d, x, self.cols, n)?;
        let g = rows.dp4a;
        if g > 0 {
            let (name, l) = if g <= MMVQ_MAX_ROWS {
                (self.few, kernels::mmvq(nrows, g as u32))
            } else {
                (self.many, kernels::mmq(nrows, g as u32))
            };
            d.launch(name, l, self.args(&mm.acts, 0, y, 0, g))?;
        }
        if rows.mma > 0 {
            let name = self.mma.ok_or_else(|| {
                GpuError::Unsupported(format!("no tensor-core kernel for {:?}", self.dtype))
            })?;
            let at = (Matmul::acts_bytes(g, self.cols), g * self.rows * 4);
            let l = kernels::mmq_mma(nrows, rows.mma as u32);
            d.launch(name, l, self.args(&mm.acts, at.0, y, at.1, rows.mma))?;
        }
        Ok(())
    }

    /// The product's arguments: `n` rows of `x` and `y` from byte offsets `x_at`, `y_at`.
    fn args(&self, x: &DevBuf, x_at: usize, y: &DevBuf, y_at: usize, n: usize) -> Args {
        Args::new()
            .buf(&self.buf)
            .buf_at(x, x_at)
            .buf_at(y, y_at)
            .int(self.rows)
            .int(self.cols)
            .int(n)
    }

    /// Embedding rows: `out[i] = W[ids[i]]` dequantized to f32.
    pub fn get_rows(&self, d: &Device, ids: &DevBuf, out: &DevBuf, n: usize) -> Result<()> {
        d.launch(
            self.gather,
            kernels::get_rows(self.cols as u32, n as u32),
            Args::new()
                .buf(&self.buf)
                .buf(ids)
                .buf(out)
                .int(self.cols)
                .int(n),
        )
    }
}

/// The 8-bit activations of the input the products read now.
pub struct Matmul {
    acts: DevBuf,
    /// Which input `acts` holds (its buffer address, columns, rows); `None` after `reset`.
    holds: Option<(u64, usize, usize)>,
}

impl Matmul {
    pub fn new(acts: DevBuf) -> Matmul {
        Matmul { acts, holds: None }
    }

    pub fn acts_bytes(n: usize, cols: usize) -> usize {
        n * cols.div_ceil(32) * kernels::Q8_1_BYTES as usize
    }

    pub fn into_buf(self) -> DevBuf {
        self.acts
    }

    /// Forgets the quantized input (call whenever a buffer that was quantized is rewritten).
    pub fn reset(&mut self) {
        self.holds = None;
    }

    fn prepare(&mut self, d: &Device, x: &DevBuf, cols: usize, n: usize) -> Result<()> {
        if self.holds == Some((x.ptr(), cols, n)) {
            return Ok(());
        }
        if Self::acts_bytes(n, cols) > self.acts.len() {
            return Err(GpuError::BadBatch(format!(
                "activations of {n}x{cols} exceed the workspace"
            )));
        }
        d.launch(
            "quantize_q8_1",
            kernels::quantize_q8_1(cols as u32, n as u32),
            Args::new().buf(x).buf(&self.acts).int(cols).int(n),
        )?;
        self.holds = Some((x.ptr(), cols, n));
        Ok(())
    }
}
