//! The scheduler thread's loop. Each step: take new requests, drop cancelled ones, admit what
//! fits, then run one round for every running sequence:
//!
//! ```text
//! plan rows   decode/verify rows of every running sequence first, then prompt chunks up to the
//!             step's token budget (chunked prefill); draft lengths priced by the step's rows
//! propose     prompt lookup (free), else the draft model: one draft forward per drafted position
//!             over every sequence still drafting (the first also carries the draft's prompt chunks)
//! verify      one target forward over every row; the verifier accepts per sequence
//! accept      roll each block table back to what was kept, emit, stream
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, TryRecvError};

use crate::engine::{Mode, Role, Shared};
use crate::error::{EngineError, Result};
use crate::generate::StopReason;
use crate::kv_cache::KvStorage;
use crate::model::{Model, Outputs};
use crate::scratch::Scratch;
use crate::speculative::{PassCosts, MAX_DRAFT_LEN};

use super::api::LogitRows;
use super::kv::BlockPool;
use super::memory::Memory;
use super::round::Round;
use super::seq::Seq;
use super::{metrics as m, Event, Job, SchedulerConfig, SchedulerStats};

/// Rows a step's forwards are priced for (the cost tables' width).
const MAX_ROWS: usize = 1024;

pub(crate) struct StepLoop {
    pub shared: Arc<Shared>,
    pub cfg: SchedulerConfig,
    rx: Receiver<Job>,
    stats: Arc<Mutex<SchedulerStats>>,
    pub target: BlockPool,
    pub draft: Option<BlockPool>,
    waiting: VecDeque<Job>,
    pub running: Vec<Seq>,
    pub bufs: Buffers,
    pub costs: Costs,
    pub memory: Memory,
    /// Ids both models may propose (a padded row of either vocabulary is never drafted).
    pub both_valid: Vec<bool>,
    /// Whether the draft's rows may be reduced to their top k: its own valid ids are
    /// `both_valid` (else its candidates could hold ids a proposal may not take).
    pub draft_top_k: bool,
    /// Logit rows returned so far, by kind.
    pub logit_rows: LogitRows,
    steps: u64,
}

/// Forward-pass buffers, one set per model, kept across steps.
#[derive(Default)]
pub(crate) struct Buffers {
    pub scratch_t: Scratch,
    pub scratch_d: Scratch,
    pub out_t: Outputs,
    pub out_d: Outputs,
}

/// Measured seconds of forwards by rows, and of a step's other work.
pub(crate) struct Costs {
    pub target: PassCosts,
    pub draft: PassCosts,
    pub overhead: f64,
    /// Draft forward cost over target forward cost before any draft forward is measured.
    pub draft_prior: f64,
}

/// Why a request could not start now.
enum Admit {
    Started(Box<Seq>),
    /// Not enough free blocks yet: it waits.
    NoRoom(Job),
    Failed(Job, EngineError),
}

impl StepLoop {
    pub fn new(
        shared: Arc<Shared>,
        cfg: SchedulerConfig,
        rx: Receiver<Job>,
        stats: Arc<Mutex<SchedulerStats>>,
    ) -> Result<StepLoop> {
        let (target, draft) = pools(&shared, &cfg)?;
        // Both models' decode steps are bound by reading their weights.
        let draft_prior = shared.draft.as_ref().map_or(1.0, |d| {
            d.step_weight_bytes() as f64 / shared.target.step_weight_bytes().max(1) as f64
        });
        let both_valid = match &shared.draft {
            Some(d) => (0..d.vocab_size() as u32)
                .map(|id| d.is_valid_token(id) && shared.target.is_valid_token(id))
                .collect(),
            None => Vec::new(),
        };
        let draft_top_k = shared
            .draft
            .as_ref()
            .is_some_and(|d| d.valid_mask() == both_valid.as_slice());
        let l = StepLoop {
            shared,
            cfg,
            rx,
            stats,
            target,
            draft,
            waiting: VecDeque::new(),
            running: Vec::new(),
            bufs: Buffers::default(),
            costs: Costs {
                target: PassCosts::new(MAX_ROWS),
                draft: PassCosts::new(MAX_ROWS),
                overhead: 0.0,
                draft_prior,
            },
            memory: Memory::default(),
            both_valid,
            draft_top_k,
            logit_rows: LogitRows::default(),
            steps: 0,
        };
        Ok(l)
    }

    /// Times both models' forwards by rows on this machine before any request (the plan's
    /// prices from the first step on; [`super::probe`]).
    fn probe_costs(&mut self) -> Result<()> {
        let shared = self.shared.clone();
        let models = (&shared.target, shared.draft.as_ref());
        let pools = (&mut self.target, self.draft.as_mut());
        let shared_pool = &shared.pool;
        let (costs, bufs) = (&mut self.costs, &mut self.bufs);
        let probed = shared_pool.install(|| super::probe::probe(models, pools, costs, bufs))?;
        if let Some(p) = probed {
            tracing::info!(
                "costs measured in {:.2} s: a target step {:.1} ms, a draft step {:.1} ms ({:.2} of it)",
                p.seconds,
                p.target_1 * 1e3,
                p.draft_1 * 1e3,
                p.draft_1 / p.target_1.max(1e-12)
            );
        }
        Ok(())
    }

    /// The loop: runs on the scheduler thread; each step's kernels run on the engine's pool.
    pub fn run(mut self) {
        // On this thread, before the first request: the probe's buffers are the steps' own.
        if let Err(e) = self.probe_costs() {
            tracing::warn!("costs not measured at load ({e}): the first steps measure them");
        }
        let shared = self.shared.clone();
        while self.receive() {
            self.reap_cancelled();
            self.admit();
            if !self.running.is_empty() {
                // A bug in a step fails the requests that ran in it, not the engine.
                let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    shared.pool.install(|| Round::run(&mut self))
                }));
                match step {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => self.fail_running(e),
                    Err(_) => self.fail_running(EngineError::StepFailed(
                        "a step panicked (a bug: please report it)".into(),
                    )),
                }
                self.finish_stopped();
                self.steps += 1;
            }
            self.publish();
        }
        self.close();
    }

    /// Moves requests from the channel into the waiting list (as many as could start); blocks
    /// when there is nothing to do. False once the engine shuts down.
    fn receive(&mut self) -> bool {
        if self.running.is_empty() && self.waiting.is_empty() {
            match self.rx.recv() {
                Ok(job) => self.waiting.push_back(job),
                Err(_) => return false,
            }
        }
        while self.running.len() + self.waiting.len() < self.cfg.max_batch {
            match self.rx.try_recv() {
                Ok(job) => self.waiting.push_back(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
        true
    }

    fn reap_cancelled(&mut self) {
        for s in &mut self.running {
            if s.job.cancel.is_cancelled() && s.stop.is_none() {
                s.stop = Some(StopReason::Cancelled);
            }
        }
        self.finish_stopped();
    }

    fn admit(&mut self) {
        while self.running.len() < self.cfg.max_batch {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            if job.cancel.is_cancelled() {
                cancelled_in_queue(job);
                continue;
            }
            match self.start(job) {
                Admit::Started(seq) => {
                    tracing::debug!(
                        "request {} started: {} prompt tokens, {} cached",
                        seq.job.id,
                        seq.prompt_len,
                        seq.cached_tokens
                    );
                    metrics::counter!(m::PROMPT_TOKENS).increment(seq.prompt_len as u64);
                    self.running.push(*seq);
                }
                Admit::NoRoom(job) => {
                    self.waiting.push_front(job);
                    break;
                }
                Admit::Failed(mut job, e) => {
                    metrics::counter!(m::REQUESTS_FINISHED, "finished_reason" => "error")
                        .increment(1);
                    job.sink.send(Event::Failed(e));
                }
            }
        }
    }

    /// Positions a request may occupy: prompt, output, and one round's drafts past the end.
    fn positions(&self, job: &Job, model: &Model) -> usize {
        let kmax = match &job.req.mode {
            Mode::Speculative(s) => s.draft_len.max().min(MAX_DRAFT_LEN),
            _ => 0,
        };
        (job.prompt.len() + job.req.config.max_tokens + kmax + 1).min(model.config.context_length)
    }

    fn start(&mut self, job: Job) -> Admit {
        let role = job.req.mode.role();
        let shared = self.shared.clone();
        let model = match shared.model(role) {
            Ok(m) => m,
            Err(e) => return Admit::Failed(job, e),
        };
        let positions = self.positions(&job, model);
        let uses_draft_pool =
            role == Role::Draft || matches!(&job.req.mode, Mode::Speculative(s) if s.draft_model);
        let main = match role {
            Role::Target => &mut self.target,
            Role::Draft => match self.draft.as_mut() {
                Some(p) => p,
                None => return Admit::Failed(job, EngineError::NoDraft),
            },
        };
        let need = main.blocks_for(positions);
        if need > main.total() {
            let total = main.total();
            return Admit::Failed(job, kv_budget(need, positions, total));
        }
        let mut kv = main.lookup(&job.prompt);
        if !main.grow(&mut kv, need) {
            main.release(&mut kv);
            return Admit::NoRoom(job);
        }
        let draft_kv = if role == Role::Target && uses_draft_pool {
            let Some(pool) = self.draft.as_mut() else {
                self.target.release(&mut kv);
                return Admit::Failed(job, EngineError::NoDraft);
            };
            let mut d = pool.lookup(&job.prompt);
            if !pool.grow(&mut d, need) {
                pool.release(&mut d);
                self.target.release(&mut kv);
                return Admit::NoRoom(job);
            }
            Some(d)
        } else {
            None
        };
        let seq = super::admit::new_seq(self, job, role, kv, draft_kv);
        Admit::Started(Box::new(seq))
    }

    /// Sends the final event of every stopped sequence and gives its blocks back (keeping its
    /// full blocks as cached prefixes).
    fn finish_stopped(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let Some(stop) = self.running[i].stop else {
                i += 1;
                continue;
            };
            let mut s = self.running.swap_remove(i);
            self.release(&mut s);
            s.finish(stop);
        }
    }

    pub fn release(&mut self, s: &mut Seq) {
        if let Some(sp) = &s.spec {
            let c = (sp.ctrl_lookup.clone(), sp.ctrl_model.clone());
            self.memory.store(&sp.cfg, &s.job.req.config.sampling, c);
        }
        let main = match s.role {
            Role::Target => &mut self.target,
            Role::Draft => self
                .draft
                .as_mut()
                .expect("a draft-role sequence has a pool"),
        };
        let computed = main.cacheable(s.kv.len.min(s.context.len()), s.prompt_len);
        main.register(&s.kv, &s.context[..computed]);
        main.release(&mut s.kv);
        if let (Some(pool), Some(d)) = (
            self.draft.as_mut(),
            s.spec.as_mut().and_then(|sp| sp.draft.as_mut()),
        ) {
            let fed = pool.cacheable(d.fed.len(), s.prompt_len);
            pool.register(&d.blocks, &d.fed[..fed]);
            pool.release(&mut d.blocks);
        }
    }

    fn fail_running(&mut self, e: EngineError) {
        tracing::error!("scheduler step failed: {e}");
        let msg = e.to_string();
        for mut s in std::mem::take(&mut self.running) {
            self.release(&mut s);
            s.job
                .sink
                .send(Event::Failed(EngineError::StepFailed(msg.clone())));
        }
    }

    /// Publishes the state (stats snapshot and gauges).
    pub fn publish(&mut self) {
        let st = SchedulerStats {
            running: self.running.len(),
            waiting: self.waiting.len() + self.rx.len(),
            kv_blocks_total: self.target.total(),
            kv_blocks_used: self.target.used(),
            kv_blocks_cached: self.target.idle(),
            steps: self.steps,
            logit_rows: self.logit_rows,
        };
        metrics::gauge!(m::REQUESTS_RUNNING).set(st.running as f64);
        metrics::gauge!(m::REQUESTS_WAITING).set(st.waiting as f64);
        metrics::gauge!(m::KV_BLOCKS_USED).set(st.kv_blocks_used as f64);
        metrics::gauge!(m::STEPS).set(st.steps as f64);
        metrics::gauge!(m::KV_BLOCKS_FREE).set(self.target.available() as f64);
        metrics::gauge!(m::KV_BLOCKS_CACHED).set(st.kv_blocks_cached as f64);
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = st;
    }

    /// Shutdown: everything queued or running ends as cancelled.
    fn close(&mut self) {
        for s in &mut self.running {
            s.stop = Some(StopReason::Cancelled);
        }
        self.finish_stopped();
        for job in self.waiting.drain(..).chain(self.rx.try_iter()) {
            cancelled_in_queue(job);
        }
        self.publish();
    }
}

fn kv_budget(needed: usize, tokens: usize, total: usize) -> EngineError {
    EngineError::KvBudget {
        needed,
        tokens,
        total,
    }
}

/// A request cancelled before it started: it ends with no tokens.
fn cancelled_in_queue(mut job: Job) {
    metrics::counter!(m::REQUESTS_FINISHED, "finished_reason" => "abort").increment(1);
    job.sink
        .send(Event::Done(Box::new(crate::engine::Completion {
            text: String::new(),
            tokens: Vec::new(),
            prompt_tokens: job.prompt.len(),
            cached_tokens: 0,
            stop: StopReason::Cancelled,
            stats: Default::default(),
        })));
}

/// The two pools: the same number of blocks each (a speculative sequence holds as many in both),
/// as many as the budget holds for both models' bytes per position.
fn pools(shared: &Shared, cfg: &SchedulerConfig) -> Result<(BlockPool, Option<BlockPool>)> {
    let too_large = || EngineError::Limit {
        what: "the KV cache's bytes per block",
        limit: usize::MAX as u64,
    };
    let per_pos = |m: &Model| KvStorage::bytes_per_position(m.config.n_layers, m.config.kv_dim());
    let t = &shared.target;
    let draft = shared.draft.as_ref().map_or(Some(0), per_pos);
    let per_block = per_pos(t)
        .zip(draft)
        .and_then(|(a, b)| a.checked_add(b)?.checked_mul(cfg.block_size))
        .ok_or_else(too_large)?;
    let budget = cfg
        .kv_budget_mb
        .checked_mul(1 << 20)
        .ok_or_else(too_large)?;
    let n_blocks = budget / per_block.max(1);
    let pool = |m: &Model| -> Result<BlockPool> {
        let s = m.new_storage(cfg.block_size, n_blocks)?;
        let p = BlockPool::new(s, cfg.prefix_cache);
        Ok(if m.prompt_kernels_differ() {
            p.register_prompts_only()
        } else {
            p
        })
    };
    Ok((pool(t)?, shared.draft.as_ref().map(pool).transpose()?))
}
