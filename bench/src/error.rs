//! The one error type of `cascade-bench`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Engine(#[from] cascade_engine::EngineError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {reason}")]
    EvalLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: no evaluation items")]
    EmptyEval { path: PathBuf },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {reason}")]
    PromptLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: no prompts")]
    EmptyPrompts { path: PathBuf },
    /// Settings that cannot run (zero requests, chat messages sent to /v1/completions, ...).
    #[error("{0}")]
    Settings(String),
    /// A request outside the measured ones (model list, health) that failed.
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The server child exited or never answered; `log` is the tail of its output.
    #[error("server {reason}; its last output:\n{log}")]
    ServerStart { reason: String, log: String },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}
