//! Integer matrix products: quantized weights read in place from the mapping, times activations
//! quantized to 8-bit blocks ([`Q8Acts`]), with AVX-512 VNNI, AVX2 or portable code picked at
//! run time.
//!
//! Every output element is computed by one thread, from its weight row and its token's
//! activations only, in a fixed order: a row's result is bitwise the same for any batch size,
//! any thread count and any of the three code paths.

use std::sync::OnceLock;

use cascade_weights::{DType, Layout};
use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::matmul::{QMatrix, SyncPtr};
use crate::q8::{ActBlock, Q8Acts};

mod portable;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

/// Weight types with an integer product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl Kernel {
    /// The integer kernel of `dtype`, if it has one.
    pub fn of(dtype: DType) -> Option<Kernel> {
        Some(match dtype {
            DType::Q4_0 => Kernel::Q4_0,
            DType::Q4_1 => Kernel::Q4_1,
            DType::Q5_0 => Kernel::Q5_0,
            DType::Q5_1 => Kernel::Q5_1,
            DType::Q8_0 => Kernel::Q8_0,
            DType::Q4K => Kernel::Q4K,
            DType::Q5K => Kernel::Q5K,
            DType::Q6K => Kernel::Q6K,
            _ => return None,
        })
    }

    pub fn dtype(self) -> DType {
        match self {
            Kernel::Q4_0 => DType::Q4_0,
            Kernel::Q4_1 => DType::Q4_1,
            Kernel::Q5_0 => DType::Q5_0,
            Kernel::Q5_1 => DType::Q5_1,
            Kernel::Q8_0 => DType::Q8_0,
            Kernel::Q4K => DType::Q4K,
            Kernel::Q5K => DType::Q5K,
            Kernel::Q6K => DType::Q6K,
        }
    }

    /// The activation blocks this kernel multiplies with.
    pub fn act_block(self) -> ActBlock {
        match self {
            Kernel::Q4K | Kernel::Q5K | Kernel::Q6K => ActBlock::B256,
            _ => ActBlock::B32,
        }
    }
}

/// A weight matrix with an integer kernel.
pub(crate) struct WeightBlocks<'a> {
    pub kind: Kernel,
    pub m: &'a QMatrix<'a>,
}

impl WeightBlocks<'_> {
    #[inline(always)]
    pub fn row(&self, r: usize) -> &[u8] {
        self.m.row(r)
    }
}

/// Instruction set of the integer products, ordered: a CPU that runs one runs the lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust, any CPU.
    Portable,
    /// AVX2 + FMA + F16C (`vpmaddubsw`, `vpmaddwd`).
    Avx2,
    /// AVX-512 VNNI on 256-bit vectors (`vpdpbusd`, `vpdpwssd`).
    Vnni,
    /// VNNI, and AMX tiles (`tdpbsud`) for interleaved Q4_K and Q6_K at batches of tokens.
    Amx,
}

impl Isa {
    /// The best instruction set this CPU has (detected once). `CASCADE_ISA=portable|avx2|vnni|amx`
    /// asks for a lower one, e.g. to compare paths; a higher one than the CPU has is ignored.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let have = Isa::detected();
            match std::env::var("CASCADE_ISA").ok().as_deref() {
                Some("portable") => Isa::Portable,
                Some("avx2") if have != Isa::Portable => Isa::Avx2,
                Some("vnni") if have >= Isa::Vnni => Isa::Vnni,
                _ => have,
            }
        })
    }

    /// What the CPU supports (probed once).
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(Isa::probe)
    }

    fn probe() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            let vnni = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni");
            if avx2 && vnni {
                return if x86::amx_usable() {
                    Isa::Amx
                } else {
                    Isa::Vnni
                };
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every path this CPU can run, lowest first.
    pub fn available() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Vnni, Isa::Amx]
            .into_iter()
            .filter(|&i| i <= Isa::detected())
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Vnni => "avx512-vnni",
            Isa::Amx => "amx-int8",
        }
    }
}

/// Weight rows handed to one task.
const ROWS_PER_TASK: usize = 16;

/// Where a task writes its outputs: row `r` (counted from the task's first) of token `t` at
/// `ptr[t * ld + r]`, straight into the `[token][row]` result (kernels that hold eight rows of
/// a token in one register store them at once).
#[derive(Clone, Copy)]
pub(crate) struct OutRows {
    ptr: *mut f32,
    ld: usize,
}

impl OutRows {
    /// Address of row `r`, token `t`.
    #[inline(always)]
    pub(crate) fn at(self, r: usize, t: usize) -> *mut f32 {
        self.ptr.wrapping_add(t * self.ld + r)
    }

    /// # Safety
    /// (r, t) must lie inside the task's rows and the batch.
    #[inline(always)]
    pub(crate) unsafe fn set(self, r: usize, t: usize, v: f32) {
        // SAFETY: by the caller's contract.
        unsafe { *self.at(r, t) = v };
    }

    /// The same outputs from row `r` on.
    #[inline(always)]
    pub(crate) fn offset(self, r: usize) -> OutRows {
        OutRows {
            ptr: self.ptr.wrapping_add(r),
            ld: self.ld,
        }
    }
}

/// `out[t * w.rows + r] = Σ_c acts[t][c] · W[r][c]` with the best instruction set.
pub fn matmul_q8(w: &QMatrix, acts: &Q8Acts, out: &mut [f32]) -> Result<()> {
    matmul_q8_with(Isa::best(), w, acts, out)
}

/// [`matmul_q8`] on a chosen instruction set (which the CPU must have: see [`Isa::available`]).
pub fn matmul_q8_with(isa: Isa, w: &QMatrix, acts: &Q8Acts, out: &mut [f32]) -> Result<()> {
    let kind = Kernel::of(w.dtype).ok_or_else(|| KernelError::Shape {
        op: "matmul_q8",
        detail: format!("{} has no integer kernel", w.dtype),
    })?;
    // Re-checked here, at the safe entry: the kernels below load without bounds checks.
    let out_len = acts.n.checked_mul(w.rows);
    let matrix_ok = w
        .rows
        .checked_mul(w.cols)
        .is_some_and(|v| w.data.len() == w.dtype.bytes_for(v))
        && w.rows.is_multiple_of(w.layout.group_rows());
    if !matrix_ok || !acts.consistent() {
        return Err(KernelError::Shape {
            op: "matmul_q8",
            detail: "inconsistent matrix or activation buffers".into(),
        });
    }
    if acts.block != kind.act_block() || acts.cols != w.cols || out_len != Some(out.len()) {
        return Err(KernelError::Shape {
            op: "matmul_q8",
            detail: format!(
                "W {} [{}, {}] needs {:?} activations of {} columns; got {:?} [{}, {}], out {}",
                w.dtype,
                w.rows,
                w.cols,
                kind.act_block(),
                w.cols,
                acts.block,
                acts.n,
                acts.cols,
                out.len()
            ),
        });
    }
    if isa > Isa::detected() {
        return Err(KernelError::Shape {
            op: "matmul_q8",
            detail: format!("this CPU cannot run the {} path", isa.name()),
        });
    }
    debug_assert!(ROWS_PER_TASK.is_multiple_of(w.layout.group_rows()));
    let wb = WeightBlocks { kind, m: w };
    let rows = w.rows;
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let n_tasks = rows.div_ceil(ROWS_PER_TASK);
    (0..n_tasks).into_par_iter().for_each(|task| {
        let r0 = task * ROWS_PER_TASK;
        let r1 = (r0 + ROWS_PER_TASK).min(rows);
        let o = OutRows {
            ptr: out_ptr.get().wrapping_add(r0),
            ld: rows,
        };
        // SAFETY (all arms): `o` covers rows r0..r1 of every token (out.len() == n * rows,
        // checked above), which belong to this task only; `isa` was checked against the CPU.
        match isa {
            // The portable twin reads rows; an interleaved task's rows are gathered first (the
            // same blocks, so the same sums).
            Isa::Portable if w.layout != Layout::Rows => {
                let mut gathered = Vec::new();
                let local = w.rows_major(r0, r1, &mut gathered);
                let lb = WeightBlocks { kind, m: &local };
                // SAFETY: see above; `local` holds exactly rows r0..r1.
                unsafe { portable::rows(&lb, acts, 0, r1 - r0, o) }
            }
            // SAFETY: see above.
            Isa::Portable => unsafe { portable::rows(&wb, acts, r0, r1, o) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: see above; `isa <= Isa::detected()` so the CPU has AVX2, FMA and F16C.
            Isa::Avx2 => unsafe { x86::rows_avx2(&wb, acts, r0, r1, o) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: see above; the CPU has every feature of the VNNI path.
            Isa::Vnni => unsafe { x86::rows_vnni(&wb, acts, r0, r1, o) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: see above; the CPU has every feature of the VNNI path and AMX is usable
            // (`Isa::Amx` is detected only then).
            Isa::Amx => unsafe { x86::rows_amx(&wb, acts, r0, r1, o) },
            #[cfg(not(target_arch = "x86_64"))]
            // SAFETY: see above.
            _ => unsafe { portable::rows(&wb, acts, r0, r1, o) },
        }
    });
    Ok(())
}

/// 8-bit multiply-adds per iteration of [`peak_loop`].
pub const PEAK_MACS_PER_ITER: u64 = 8 * 32;

/// `iters` iterations of a register-only integer dot-product loop on the best instruction set:
/// times it to measure the integer units' peak. On the AMX path this is still the VNNI loop (the
/// tile unit's own rate, about 1.5 trillion multiply-adds a second per core here, is not what
/// bounds its kernels: unpacking and scaling are).
pub fn peak_loop(iters: u64) -> i64 {
    match Isa::best() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `best` only returns instruction sets the CPU has.
        Isa::Vnni | Isa::Amx => unsafe { x86::peak_vnni(iters) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::peak_avx2(iters) },
        _ => {
            let mut acc = [0i32; 8];
            for i in 0..iters {
                for (l, a) in acc.iter_mut().enumerate() {
                    let w = std::hint::black_box((i as i32 + l as i32) & 0x7f);
                    *a = a.wrapping_add(32 * w);
                }
            }
            acc.iter().map(|&v| v as i64).sum()
        }
    }
}

#[cfg(test)]
mod tests;
