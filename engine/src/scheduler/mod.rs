//! The scheduler: requests enter through a bounded queue and one thread runs them.

mod admit;
mod answer;
mod api;
mod grammar;
mod kv;
mod memory;
pub mod metrics;
mod plan;
mod probe;
mod round;
mod seq;
mod step;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};

pub use crossbeam_channel::RecvTimeoutError;

pub use api::{
    CancelGuard, CancelToken, Event, EventSink, RequestHandle, SchedulerConfig, SchedulerStats,
};

use crate::engine::{Request, Shared};
use crate::error::{EngineError, Result};
use crate::generate::plan_capacity;

/// A request on its way to the scheduler thread.
pub(crate) struct Job {
    pub id: u64,
    pub req: Request,
    pub prompt: Vec<u32>,
    pub sink: Box<dyn EventSink>,
    pub cancel: CancelToken,
    pub submitted: std::time::Instant,
    /// The request's grammar, compiled at submission.
    pub constraint: Option<crate::constraint::Constraint>,
}

/// The handle the engine keeps on its scheduler thread.
pub(crate) struct Scheduler {
    queue: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<Mutex<SchedulerStats>>,
    config: SchedulerConfig,
    next_id: AtomicU64,
}

impl Scheduler {
    pub fn start(shared: Arc<Shared>, config: SchedulerConfig) -> Result<Scheduler> {
        config.validate()?;
        let (tx, rx) = crossbeam_channel::bounded(config.max_queue.max(1));
        let stats = Arc::new(Mutex::new(SchedulerStats::default()));
        let mut step = step::StepLoop::new(shared, config, rx, stats.clone())?;
        step.publish();
        let thread = std::thread::Builder::new()
            .name("cascade-scheduler".into())
            .spawn(move || step.run())
            .map_err(|e| EngineError::ThreadPool(e.to_string()))?;
        Ok(Scheduler {
            queue: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            stats,
            config,
            next_id: AtomicU64::new(1),
        })
    }

    pub fn submit(
        &self,
        shared: &Shared,
        req: Request,
        sink: Box<dyn EventSink>,
        cancel: CancelToken,
    ) -> Result<u64> {
        req.config.sampling.validate()?;
        if let crate::engine::Mode::Speculative(s) = &req.mode {
            s.validate()?;
        }
        let role = req.mode.role();
        let prompt = shared.encode(role, &req.prompt)?;
        plan_capacity(shared.model(role)?, &prompt, req.config.max_tokens)?;
        let constraint = compile_grammar(shared, &req)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            id,
            req,
            prompt,
            sink,
            cancel,
            submitted: std::time::Instant::now(),
            constraint,
        };
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let tx = queue.as_ref().ok_or(EngineError::ShuttingDown)?;
        match tx.try_send(job) {
            Ok(()) => Ok(id),
            Err(TrySendError::Full(_)) => Err(EngineError::QueueFull {
                limit: self.config.max_queue,
            }),
            Err(TrySendError::Disconnected(_)) => Err(EngineError::SchedulerGone),
        }
    }

    pub fn stats(&self) -> SchedulerStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> SchedulerConfig {
        self.config
    }

    pub fn shutdown(&self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The request's grammar compiled against the engine's vocabulary (on the caller's thread: a
/// large schema's compilation never holds up the scheduler's steps).
fn compile_grammar(
    shared: &Shared,
    req: &Request,
) -> Result<Option<crate::constraint::Constraint>> {
    let Some(g) = &req.grammar else {
        return Ok(None);
    };
    let refuse = |reason: &str| EngineError::InvalidParam {
        name: "grammar",
        reason: reason.to_string(),
    };
    if matches!(&req.mode, crate::engine::Mode::Speculative(s) if s.answer) {
        return Err(refuse(
            "answer mode cannot follow a grammar yet: use exact or cascade",
        ));
    }
    if !req.config.stop_at_eog {
        return Err(refuse(
            "a grammar ends the output at an end-of-generation token: it cannot be ignored",
        ));
    }
    shared.grammars()?.start(g).map(Some)
}
