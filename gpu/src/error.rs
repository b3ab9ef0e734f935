//! The one error type of `cascade-gpu`.

/// Everything that can go wrong finding a GPU, compiling kernels and running them.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("this build has no CUDA support (built without the `cuda` feature)")]
    NotBuilt,
    #[error("no CUDA driver on this machine ({0}); run on the CPU with --device cpu or auto")]
    NoDriver(String),
    #[error("CUDA device {index} asked for, but the machine has {count}")]
    NoSuchDevice { index: usize, count: usize },
    #[error("{model} needs {need} bytes on cuda:{device} but {free} are free: {missing} bytes missing (use --device cpu, a smaller --kv-budget-mb, or a smaller model)")]
    OutOfMemory {
        model: String,
        device: usize,
        need: usize,
        free: usize,
        missing: usize,
    },
    #[error("CUDA driver call failed: {0}")]
    Driver(String),
}

pub type Result<T> = std::result::Result<T, GpuError>;
