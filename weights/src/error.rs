//! The one error type of `cascade-weights`.

use std::path::PathBuf;

/// Everything that can go wrong while opening, mapping and describing model files.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("model file not found: {path}")]
    NotFound { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a GGUF file (magic bytes {magic:02x?})")]
    BadMagic { path: PathBuf, magic: [u8; 4] },
    #[error("{path}: unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path}: file is truncated: needed {needed} bytes at offset {offset} while reading {what}, file has {len}")]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        needed: u64,
        len: u64,
    },
    #[error("{path}: corrupt or truncated header: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{path}: tensor '{name}' spans bytes {start}..{end} but the data section ends at {len}"
    )]
    TensorOutOfBounds {
        path: PathBuf,
        name: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("{path}: tensor '{name}' has unsupported type {ty}")]
    UnsupportedTensorType {
        path: PathBuf,
        name: String,
        ty: String,
    },
    #[error("{path}: tensor '{name}' has shape {shape:?} whose first dimension is not a multiple of the block size {block} of {ty}")]
    BadTensorShape {
        path: PathBuf,
        name: String,
        shape: Vec<u64>,
        block: usize,
        ty: &'static str,
    },
    #[error("unsupported architecture '{arch}' (supported: llama, qwen2)")]
    UnsupportedArchitecture { arch: String },
    #[error("missing metadata key '{key}'")]
    MissingMetadata { key: String },
    #[error("metadata key '{key}' has the wrong type: expected {expected}")]
    MetadataType { key: String, expected: &'static str },
    #[error("missing tensor '{name}'")]
    MissingTensor { name: String },
    #[error("tensor '{name}' has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("invalid config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("invalid safetensors file {path}: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{what} is {value}, past the limit of {limit}")]
    Limit {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("tokenizer: {reason}")]
    Tokenizer { reason: String },
}

pub type Result<T> = std::result::Result<T, WeightsError>;
