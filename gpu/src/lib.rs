//! cascade-gpu: the CUDA backend. Device discovery and placement, kernels compiled at first use
//! by NVRTC from the CUDA C sources in `kernels/cuda/`, and a host shim that runs those same
//! sources on the CPU so that every kernel is tested on machines without a GPU.

pub mod error;

pub use error::{GpuError, Result};
