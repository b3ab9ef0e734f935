//! The one error type of `cascade-kernels`.

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
}

pub type Result<T> = std::result::Result<T, KernelError>;
