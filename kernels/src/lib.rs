//! cascade-kernels: the hot loops. Quantized matrix products that read weights in place from the
//! mapping, and the per-row kernels of a transformer layer. CPU implementations; each is
//! batch-invariant (a row's result never depends on the other rows of its call).

pub mod error;
pub mod matmul;
pub mod ops;
pub mod quant;

pub use error::{KernelError, Result};
pub use matmul::{matmul, matmul_reference, QMatrix};
