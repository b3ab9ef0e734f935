//! cascade-gpu: the CUDA backend. Device discovery and placement, kernels compiled at first use
//! by NVRTC from the CUDA C sources in `kernels/cuda/`, and a host shim that runs those same
//! sources on the CPU so that every kernel is tested on machines without a GPU.

#[cfg(feature = "cuda")]
pub mod driver;
pub mod error;
pub mod placement;

pub use error::{GpuError, Result};
pub use placement::{place, probe, DeviceSpec, Footprint, GpuInfo, Placement};
