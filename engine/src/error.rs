//! The one error type of `cascade-engine`.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Weights(#[from] cascade_weights::WeightsError),
    #[error(transparent)]
    Kernel(#[from] cascade_kernels::KernelError),
    #[error(transparent)]
    Gpu(#[from] cascade_gpu::GpuError),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {prompt} tokens but the model's context holds {context}")]
    PromptTooLong { prompt: usize, context: usize },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    InvalidToken { id: u32, vocab: usize },
    #[error("KV cache full: {len} tokens held, {adding} more asked, capacity {capacity}")]
    CacheFull {
        len: usize,
        adding: usize,
        capacity: usize,
    },
    #[error("cannot roll the KV cache back to {to}: it holds {len} tokens")]
    BadRollback { to: usize, len: usize },
    #[error("the model has no chat template")]
    NoChatTemplate,
    #[error("{what} passed the limit of {limit}")]
    Limit { what: &'static str, limit: u64 },
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("grammar: {reason}")]
    Grammar { reason: String },
    #[error("invalid {name}: {reason}")]
    InvalidParam { name: &'static str, reason: String },
    #[error("draft and target tokenizers differ: {detail}")]
    TokenizerMismatch { detail: String },
    #[error("no draft model was loaded (pass --draft PATH)")]
    NoDraft,
    #[error("thread pool: {0}")]
    ThreadPool(String),
    #[error("tensor '{name}': {reason}")]
    BadTensor { name: String, reason: String },
    #[error("the request queue is full ({limit} requests waiting); try again later")]
    QueueFull { limit: usize },
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("a scheduler step failed: {0}")]
    StepFailed(String),
    #[error("the scheduler thread stopped")]
    SchedulerGone,
    #[error(
        "the request needs {needed} KV blocks ({tokens} tokens) but the KV budget holds {total}; \
         raise the KV budget or lower max_tokens"
    )]
    KvBudget {
        needed: usize,
        tokens: usize,
        total: usize,
    },
    #[error("cannot map {bytes} bytes for the KV cache: {reason}")]
    KvAlloc { bytes: usize, reason: String },
    #[error("{0}")]
    Io(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, EngineError>;
