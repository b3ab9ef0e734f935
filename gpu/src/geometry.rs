//! Launch geometry of each kernel family for the shapes the model runs (the kernels' own
//! comments in `kernels/cuda/` document what each block computes).

use cascade_weights::DType;

use crate::device::Launch;
use crate::error::{GpuError, Result};

pub fn mv(rows: usize, _cols: usize, _n: usize) -> Launch {
    Launch::linear(rows.div_ceil(4) as u32, 128)
}

pub fn mmvq(_dtype: DType, rows: usize, _cols: usize, _n: usize) -> Launch {
    Launch::linear(rows.div_ceil(4) as u32, 128)
}

pub fn mmq(_dtype: DType, rows: usize, _cols: usize, n: usize) -> Launch {
    Launch {
        grid: [rows.div_ceil(64) as u32, n.div_ceil(64) as u32, 1],
        block: [256, 1, 1],
        shared: 0,
    }
}

pub fn get_rows(_cols: usize, n: usize) -> Launch {
    Launch::linear(n as u32, 256)
}

pub fn quantize(cols: usize, n: usize) -> Launch {
    Launch {
        grid: [cols.div_ceil(32 * 8) as u32, n as u32, 1],
        block: [256, 1, 1],
        shared: 0,
    }
}

pub fn attention(n: usize, n_heads: usize, _head_dim: usize) -> Launch {
    Launch {
        grid: [n_heads as u32, n as u32, 1],
        block: [128, 1, 1],
        shared: 0,
    }
}

/// The kernel module for a device of compute capability `cc`.
pub fn module_image(cc: (u32, u32)) -> Result<Vec<u8>> {
    Err(GpuError::Unsupported(format!(
        "no kernels compiled for sm_{}{}",
        cc.0, cc.1
    )))
}
