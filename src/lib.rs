//! cascade: a speculative inference engine. A small draft model proposes tokens and a large
//! target model verifies them in one batched forward pass.
//!
//! This crate is the facade: it re-exports the engine API and hosts the `cascade` command.
//!
//! ```no_run
//! use cascade::engine::{Engine, EngineConfig, GenerateConfig, Mode, Prompt, Request};
//! let engine = Engine::load(&EngineConfig { target: "model.gguf".into(), ..Default::default() })?;
//! let req = Request { prompt: Prompt::Text("def fib(n):".into()), mode: Mode::Target, config: GenerateConfig::default(), grammar: None };
//! let out = engine.generate(&req, |piece| print!("{piece}"))?;
//! println!("\n{} tokens", out.tokens.len());
//! # Ok::<(), cascade::engine::EngineError>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub use cascade_engine as engine;
pub use cascade_gpu as gpu;
pub use cascade_kernels as kernels;
pub use cascade_weights as weights;

pub mod cli;
pub mod models;
pub mod serve;
