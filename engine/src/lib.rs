//! cascade-engine: models (Llama/Qwen2 family), KV cache with rollback, sampling, generation,
//! perplexity and the `Engine` API that users embed.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod chat;
pub mod constraint;
pub mod engine;
pub mod error;
pub mod fastcopy;
/// Tiny random-weight models for tests; not part of the API users build on.
#[cfg(any(test, feature = "fixture"))]
pub mod fixture;
pub mod generate;
pub mod kv_cache;
pub mod model;
pub mod perplexity;
pub mod placement;
pub mod repack;
pub mod sampler;
pub mod scheduler;
mod scratch;
pub mod speculative;

pub use cascade_gpu::DeviceSpec;
pub use chat::Message;
pub use constraint::Grammar;
pub use engine::{Completion, DraftVocab, Engine, EngineConfig, Mode, Prompt, Request, Role};
pub use error::{EngineError, Result};
pub use fastcopy::{fast_path, RepackPolicy};
pub use generate::{generate, GenerateConfig, GenerateStats, Generation, StopReason};
pub use kv_cache::KvCache;
pub use model::{Logits, Model, Precision};
pub use perplexity::{perplexity, PerplexityResult};
pub use sampler::{Distribution, Sampled, Sampler, SamplingParams};
pub use scheduler::{
    CancelGuard, CancelToken, Event, EventSink, RecvTimeoutError, RequestHandle, SchedulerConfig,
    SchedulerStats,
};
pub use speculative::{Cascade, DraftLen, NgramProposer, Rule, SpecConfig, MAX_DRAFT_LEN};
