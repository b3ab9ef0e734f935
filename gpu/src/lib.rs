//! cascade-gpu: the CUDA backend. Device discovery and placement, kernels compiled at first use
//! by NVRTC from the CUDA C sources in `kernels/cuda/`, and a host shim that runs those same
//! sources on the CPU so that every kernel is tested on machines without a GPU.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(any(feature = "cuda", feature = "shim"))]
pub mod device;
#[cfg(feature = "cuda")]
pub mod driver;
pub mod error;
#[cfg(any(feature = "cuda", feature = "shim"))]
pub mod graph;
pub mod kernels;
#[cfg(any(feature = "cuda", feature = "shim"))]
pub mod matmul;
#[cfg(any(feature = "cuda", feature = "shim"))]
pub mod model;
#[cfg(feature = "cuda")]
pub mod nvrtc;
pub mod placement;
#[cfg(feature = "shim")]
pub mod shim;

#[cfg(any(feature = "cuda", feature = "shim"))]
pub use device::{DevBuf, Device, Pod};
pub use error::{GpuError, Result};
pub use placement::{place, probe, DeviceSpec, Footprint, GpuInfo, Placement};
