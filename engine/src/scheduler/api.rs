//! What callers of the scheduler see: its settings, the events of a request, and the handle that
//! receives them or cancels the request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::engine::Completion;
use crate::error::{EngineError, Result};

/// How the scheduler batches, queues and holds KV memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Sequences running at once (each step runs every one of them).
    pub max_batch: usize,
    /// Requests waiting for a slot or for KV blocks; past it `submit` refuses with
    /// [`EngineError::QueueFull`].
    pub max_queue: usize,
    /// KV cache memory of both models together, in MiB.
    pub kv_budget_mb: usize,
    /// Rows of one target forward at most: every running sequence's decode or verification rows
    /// first, then chunks of waiting prompts (chunked prefill).
    pub step_tokens: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// Reuse the KV blocks of prompt prefixes that earlier requests computed.
    pub prefix_cache: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_batch: 16,
            max_queue: 256,
            kv_budget_mb: 1024,
            step_tokens: 64,
            block_size: 16,
            prefix_cache: true,
        }
    }
}

impl SchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &'static str, reason: &str| EngineError::InvalidParam {
            name,
            reason: reason.to_string(),
        };
        if self.max_batch == 0 {
            return Err(bad("max batch", "must be at least 1"));
        }
        if self.kv_budget_mb == 0 {
            return Err(bad("KV budget", "must be at least 1 MiB"));
        }
        if self.step_tokens == 0 {
            return Err(bad("step tokens", "must be at least 1"));
        }
        if self.block_size == 0 || !self.block_size.is_multiple_of(8) || self.block_size > 256 {
            return Err(bad("KV block size", "must be a multiple of 8 up to 256"));
        }
        Ok(())
    }
}

/// What a request produces, in order: any number of `Tokens`, then exactly one `Done` or
/// `Failed`.
#[derive(Debug)]
pub enum Event {
    /// Newly emitted tokens (end-of-generation tokens included) and the text they completed (empty
    /// while a character is split across tokens; end-of-generation tokens add no text).
    Tokens { ids: Vec<u32>, text: String },
    /// The request ended (for any [`crate::StopReason`], `Cancelled` included).
    Done(Box<Completion>),
    /// The request could not run (for example its prompt does not fit the KV budget).
    Failed(EngineError),
}

/// Where the scheduler delivers a request's events. `send` must never block (the scheduler
/// thread runs every sequence's steps); it returns false once nobody listens, which cancels the
/// request.
pub trait EventSink: Send {
    fn send(&mut self, event: Event) -> bool;
}

impl EventSink for Sender<Event> {
    fn send(&mut self, event: Event) -> bool {
        Sender::send(self, event).is_ok()
    }
}

/// Any non-blocking closure is a sink (for example one that forwards to a tokio channel).
impl<F: FnMut(Event) -> bool + Send> EventSink for F {
    fn send(&mut self, event: Event) -> bool {
        self(event)
    }
}

/// Cancels a request; cloned freely. [`CancelGuard`] cancels when dropped.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(pub(crate) Arc<AtomicBool>);

impl CancelToken {
    /// Asks the scheduler to stop the request: it ends with `StopReason::Cancelled` (or is
    /// dropped from the queue) and its KV blocks are freed within one step.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// A guard that cancels the request when dropped (unless disarmed).
    pub fn guard(&self) -> CancelGuard {
        CancelGuard(Some(self.clone()))
    }
}

/// Cancels its request when dropped: hold one for as long as the request's consumer lives.
#[derive(Debug)]
pub struct CancelGuard(Option<CancelToken>);

impl CancelGuard {
    /// Lets the request run to its end even after the guard is dropped.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.cancel();
        }
    }
}

/// A submitted request: its events, and a way to cancel it. Dropping the handle cancels it.
#[derive(Debug)]
pub struct RequestHandle {
    pub(crate) id: u64,
    pub(crate) events: Receiver<Event>,
    pub(crate) cancel: CancelToken,
}

impl RequestHandle {
    /// The request's id (unique per engine).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next event, waiting for it; `None` after the last.
    pub fn recv(&self) -> Option<Event> {
        self.events.recv().ok()
    }

    /// The next event within `timeout` (`Disconnected` after the last).
    pub fn recv_timeout(&self, timeout: Duration) -> std::result::Result<Event, RecvTimeoutError> {
        self.events.recv_timeout(timeout)
    }

    /// The receiving end of the request's events (for `select!`).
    pub fn receiver(&self) -> &Receiver<Event> {
        &self.events
    }

    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// Waits for the end of the request, giving `on_text` the text as it becomes complete UTF-8.
    pub fn wait(self, mut on_text: impl FnMut(&str)) -> Result<Completion> {
        loop {
            match self.events.recv() {
                Ok(Event::Tokens { text, .. }) => {
                    if !text.is_empty() {
                        on_text(&text);
                    }
                }
                Ok(Event::Done(c)) => return Ok(*c),
                Ok(Event::Failed(e)) => return Err(e),
                Err(_) => return Err(EngineError::SchedulerGone),
            }
        }
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A snapshot of the scheduler's state (also exported as metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SchedulerStats {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_used: usize,
    /// Blocks that hold a cached prompt prefix no running sequence uses (reclaimable).
    pub kv_blocks_cached: usize,
    pub steps: u64,
    /// Logit rows the forwards returned, by how they came back.
    pub logit_rows: LogitRows,
}

/// Logit rows by how a forward returned them: whole, or reduced to their argmax or top k (on a
/// device reduced there, so such a row copies back one id or k pairs, not the vocabulary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogitRows {
    pub whole: u64,
    pub argmax: u64,
    pub top_k: u64,
}

impl LogitRows {
    /// Counts `n` rows reduced as `r`.
    pub(crate) fn count(&mut self, n: usize, r: crate::model::Reduce) {
        use crate::model::Reduce;
        if n == 0 {
            return;
        }
        let (c, kind) = match r {
            Reduce::Logits => (&mut self.whole, "whole"),
            Reduce::Argmax => (&mut self.argmax, "argmax"),
            Reduce::TopK(_) => (&mut self.top_k, "top_k"),
        };
        *c += n as u64;
        metrics::counter!(super::metrics::LOGIT_ROWS, "kind" => kind).increment(n as u64);
    }
}
