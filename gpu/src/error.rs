//! The one error type of `cascade-gpu`.

/// Everything that can go wrong finding a GPU, compiling kernels and running them.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("this build has no CUDA support (built without the `cuda` feature)")]
    NotBuilt,
    #[error("no CUDA driver on this machine ({0})")]
    NoDriver(String),
    #[error("the {model} cannot run on {spec}: {reason} (--device auto falls back to the CPU)")]
    CannotPlace {
        model: String,
        spec: String,
        reason: Box<GpuError>,
    },
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
    #[error("no kernel named `{0}` in the compiled module")]
    UnknownKernel(String),
    #[error("not supported on the GPU: {0}")]
    Unsupported(String),
    #[error("bad batch: {0}")]
    BadBatch(String),
    #[error("CUDA driver call failed: {0}")]
    Driver(String),
    #[error("NVRTC is not available: {0}")]
    NvrtcMissing(String),
    #[error("NVRTC failed to compile the kernels for sm_{arch}:\n{log}")]
    Nvrtc { arch: u32, log: String },
    #[error("host shim: kernel `{kernel}`: {reason}")]
    Shim { kernel: String, reason: String },
}

pub type Result<T> = std::result::Result<T, GpuError>;
