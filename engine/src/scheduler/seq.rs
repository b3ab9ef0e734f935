//! One sequence under the scheduler: its tokens, its KV blocks, its sampler and speculative
//! state, and the events it sends. The scheduler steps it: prefill chunks, then decode or
//! verification rounds, until a stop reason.

use std::time::Instant;

use cascade_weights::StreamDecoder;

use crate::constraint::Constraint;
use crate::engine::{Completion, Mode, Role};
use crate::error::EngineError;
use crate::generate::{GenerateStats, StopReason};
use crate::model::{Model, Reduce, MAX_REDUCED_TOP_K};
use crate::sampler::Sampler;
use crate::speculative::{
    finish_stats, Cascade, Controller, Counters, NgramProposer, Proposal, SpecConfig,
};

use super::kv::SeqBlocks;
use super::{metrics as m, Event, Job};

/// Speculative state of a sequence.
pub(crate) struct SpecState {
    pub cfg: SpecConfig,
    pub lookup: Option<NgramProposer>,
    /// The draft model's blocks and the tokens they hold (`fed.len() == blocks.len`).
    pub draft: Option<DraftKv>,
    /// Acceptance of prompt lookup's proposals and of the draft model's.
    pub ctrl_lookup: Controller,
    pub ctrl_model: Controller,
    pub cascade: Option<Cascade>,
    /// Rounds in a row without drafting (a probe round follows a long streak).
    pub plain_streak: usize,
    /// Plain rounds before the next probe (doubles after each probe that finds nothing).
    pub probe_every: usize,
    /// This round is a probe.
    pub probing: bool,
    /// A probe is due (it warmed the draft up and drafts next).
    pub probe_due: bool,
    pub counters: Counters,
    /// Answer mode's phases, before the sequence decodes as an ordinary speculative one.
    pub answer: Option<AnswerPhase>,
}

/// Answer mode: the draft writes the whole answer in ordinary batched draft steps (a few tokens
/// a step, cancellable at every step, in its pool's blocks) while the target computes every
/// prompt position but the last; then the target scores the prompt's last position and the
/// answer as prompt-like chunks under the step's budget, and each chunk's kept tokens are
/// emitted as soon as they are verified. The first rejection (or the bonus after a whole answer)
/// ends the phases: the sequence goes on from there like any other.
pub(crate) enum AnswerPhase {
    /// The answer so far (`done`: complete: an end of generation, the room, or a token the
    /// target cannot take).
    Writing { answer: Proposal, done: bool },
    /// Chunks of the answer are being verified; every token before the target's position is.
    Scoring { answer: Proposal },
}

impl AnswerPhase {
    pub fn answer(&self) -> &Proposal {
        match self {
            AnswerPhase::Writing { answer, .. } | AnswerPhase::Scoring { answer } => answer,
        }
    }
}

pub(crate) struct DraftKv {
    pub blocks: SeqBlocks,
    pub fed: Vec<u32>,
    /// The context's distinct tokens, sorted: a restricted draft output layer computes them too.
    pub vocab: Vec<u32>,
}

pub(crate) struct Seq {
    pub job: Job,
    pub role: Role,
    /// The prompt and every token emitted so far.
    pub context: Vec<u32>,
    pub prompt_len: usize,
    /// Blocks in the pool of the model that decodes (`role`); they hold `context[..kv.len]`.
    pub kv: SeqBlocks,
    pub sampler: Sampler,
    pub spec: Option<SpecState>,
    pub stream: StreamDecoder,
    pub text: String,
    pub tokens: Vec<u32>,
    pub stats: GenerateStats,
    pub cached_tokens: usize,
    pub first_at: Option<Instant>,
    pub last_at: Option<Instant>,
    pub stop: Option<StopReason>,
    /// The grammar the output follows; it has consumed every emitted token (and, mid-round,
    /// the drafted ones).
    pub constraint: Option<Constraint>,
    /// The grammar's set for the next position, made while this step's forward ran.
    pub ahead: Option<crate::constraint::Allowed>,
    /// Why the sequence failed (its grammar could not go on): sent instead of a completion.
    pub failure: Option<EngineError>,
}

impl Seq {
    /// Whether the prompt is still being computed (in answer mode: until its answer is scored).
    pub fn prefilling(&self) -> bool {
        self.tokens.is_empty() || self.answering()
    }

    /// Whether the sequence is in answer mode's phases.
    pub fn answering(&self) -> bool {
        self.spec.as_ref().is_some_and(|sp| sp.answer.is_some())
    }

    pub fn max_tokens(&self) -> usize {
        self.job.req.config.max_tokens
    }

    /// How this sequence's logit rows come back from a forward of a model of `vocab` ids: greedy
    /// decoding and exact verification need only each row's argmax, sampling with a top-k cut
    /// (up to [`MAX_REDUCED_TOP_K`]) only the row's k candidates (both reduced on a device, so a
    /// GPU step copies back one id, or k pairs, per row); other sampling and cascade rules need
    /// the whole rows. `top_k`: whether the model's valid ids are those the rows are sampled on
    /// (not so for a draft with ids the target lacks: its candidates would be the wrong ones).
    pub fn reduce(&self, vocab: usize, top_k: bool) -> Reduce {
        let cascade = self.spec.as_ref().is_some_and(|sp| sp.cascade.is_some());
        let p = &self.sampler.params;
        // A grammar masks whole rows (a device's argmax or top k may be ids it forbids).
        if cascade || self.constraint.is_some() {
            Reduce::Logits
        } else if p.is_greedy() {
            Reduce::Argmax
        } else if top_k && p.top_k > 0 && p.top_k <= MAX_REDUCED_TOP_K && p.top_k < vocab {
            Reduce::TopK(p.top_k)
        } else {
            Reduce::Logits
        }
    }

    /// The most tokens a verification may draft: room left in the blocks and in `max_tokens`
    /// (a round emits up to k + 1 tokens).
    pub fn draft_room(&self, block: usize) -> usize {
        let cap = self.kv.table.len() * block;
        let kv_room = cap.saturating_sub(self.kv.len + 1);
        let left = self.max_tokens().saturating_sub(self.tokens.len() + 1);
        kv_room.min(left)
    }

    /// Emits `new` tokens: appends them, checks the stop conditions, sends one event. Returns
    /// false when the consumer is gone (the request is then cancelled).
    pub fn emit(&mut self, model: &Model, new: &[u32], context_cap: usize) -> bool {
        let now = Instant::now();
        let cfg = self.job.req.config;
        let tok = &model.tokenizer;
        let mut text = String::new();
        let mut ids = Vec::with_capacity(new.len());
        for &t in new {
            self.tokens.push(t);
            self.context.push(t);
            ids.push(t);
            let eog = tok.is_eog(t);
            if !(cfg.stop_at_eog && eog) {
                text.push_str(&self.stream.push(tok, t));
            }
            if cfg.stop_at_eog && eog {
                self.stop = Some(StopReason::EndOfGeneration);
            } else if self.tokens.len() >= cfg.max_tokens {
                self.stop = Some(StopReason::MaxTokens);
            } else if self.context.len() >= context_cap {
                self.stop = Some(StopReason::ContextFull);
            }
            if self.stop.is_some() {
                break;
            }
        }
        if self.stop.is_some() {
            text.push_str(&self.stream.finish());
        }
        match self.last_at {
            None => {
                self.first_at = Some(now);
                metrics::histogram!(m::TTFT).record((now - self.job.submitted).as_secs_f64());
            }
            Some(last) => metrics::histogram!(m::ITL).record((now - last).as_secs_f64()),
        }
        self.last_at = Some(now);
        metrics::counter!(m::GENERATION_TOKENS).increment(ids.len() as u64);
        self.text.push_str(&text);
        self.job.sink.send(Event::Tokens { ids, text })
    }

    /// Ends the sequence with `e` (its blocks are freed at the end of the step).
    pub fn fail(&mut self, e: EngineError) {
        tracing::warn!("request {} failed: {e}", self.job.id);
        self.failure = Some(e);
        self.stop = Some(StopReason::Cancelled);
    }

    /// The final event: the completion with its statistics (or the failure).
    pub fn finish(&mut self, stop: StopReason) {
        if let Some(e) = self.failure.take() {
            metrics::counter!(m::REQUESTS_FINISHED, "finished_reason" => "error").increment(1);
            self.job.sink.send(Event::Failed(e));
            return;
        }
        let s = &mut self.stats;
        s.prompt_tokens = self.prompt_len;
        s.generated_tokens = self.tokens.len();
        if let (Some(first), Some(last)) = (self.first_at, self.last_at) {
            s.prefill_s = (first - self.job.submitted).as_secs_f64();
            s.decode_s = (last - first).as_secs_f64();
            s.decode_tokens_per_s = if s.decode_s > 0.0 {
                self.tokens.len().saturating_sub(1) as f64 / s.decode_s
            } else {
                0.0
            };
        }
        if let Some(sp) = &self.spec {
            finish_stats(s, &sp.counters);
        }
        if matches!(self.job.req.mode, Mode::Draft) {
            s.draft_passes = std::mem::take(&mut s.target_passes);
            s.draft_tokens = std::mem::take(&mut s.target_tokens);
        }
        let reason = match stop {
            StopReason::EndOfGeneration => "stop",
            StopReason::MaxTokens | StopReason::ContextFull => "length",
            StopReason::Cancelled => "abort",
        };
        metrics::counter!(m::REQUESTS_FINISHED, "finished_reason" => reason).increment(1);
        metrics::histogram!(m::E2E).record(self.job.submitted.elapsed().as_secs_f64());
        let completion = Completion {
            text: std::mem::take(&mut self.text),
            tokens: std::mem::take(&mut self.tokens),
            prompt_tokens: self.prompt_len,
            cached_tokens: self.cached_tokens,
            stop,
            stats: std::mem::take(&mut self.stats),
        };
        self.job.sink.send(Event::Done(Box::new(completion)));
    }
}
