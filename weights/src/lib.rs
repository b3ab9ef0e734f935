//! cascade-weights: one memory-mapped weight store for GGUF files and Hugging Face folders,
//! typed model configurations and tokenizers. No arithmetic lives here.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod config;
pub mod dtype;
pub mod error;
pub mod gguf;
mod safetensors_src;
pub mod store;
pub mod tokenizer;

pub use config::{Architecture, ModelConfig, RopeStyle};
pub use dtype::{from_stored_id, stored_id, DType, Layout, QK_K};
pub use error::{Result, WeightsError};
pub use gguf::{GgufHeader, GgufWriter, TensorInfo, Value};
pub use safetensors_src::canonical_name;
pub use store::{MappedFile, ModelFiles, ModelFormat, OpenOptions, TensorView, WeightStore};
pub use tokenizer::{StreamDecoder, TokenKind, Tokenizer};
