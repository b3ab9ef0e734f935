//! cascade-kernels: the hot loops. Quantized matrix products that read weights in place from the
//! mapping (in f32, or with activations quantized to 8 bits and integer dot products), and the
//! per-row kernels of a transformer layer. Each is batch-invariant: a row's result never depends
//! on the other rows of its call or on the thread count.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod error;
pub mod interleave;
pub mod matmul;
pub mod ops;
pub mod q8;
pub mod qdot;
pub mod quant;

pub use error::{KernelError, Result};
pub use matmul::{matmul, matmul_reference, QMatrix};
pub use q8::{ActBlock, Q8Acts};
pub use qdot::{matmul_q8, matmul_q8_with, Isa, Kernel};
