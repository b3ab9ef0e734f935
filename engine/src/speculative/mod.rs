//! Speculative decoding: a proposer drafts tokens, the target scores them all in one forward
//! pass, the verifier keeps a prefix and adds one token of the target's own.
//!
//! - exact: lossless. Greedy output is token for token the target's (the kernels are batch
//!   invariant, so a position's logits do not depend on how many tokens shared its pass); sampled
//!   output follows the target's distribution.
//! - cascade: a deferral rule ([`rules`]) mixes the draft's and the target's distributions into the
//!   one the verifier accepts against, trading quality for fewer target passes.
//! - answer: the draft writes the whole answer first, the target scores prompt and answer in one
//!   pass, and generation continues (exact or cascade) from the first token it rejects.
//!
//! Caches: the target's cache never holds the newest token (it is the first input of the next
//! pass) and is rolled back to the accepted length after each pass; the draft model's cache is
//! rolled back by its proposer to whatever part of it the target accepted.

mod proposer;
pub mod rules;
mod schedule;
pub mod verify;
pub mod vocab;

#[cfg(test)]
mod tests;

use std::time::Instant;

use rand_chacha::ChaCha8Rng;

pub use proposer::{ModelProposer, NgramProposer, Proposal, Proposer};
pub use rules::{Cascade, Rule};
pub use schedule::{Controller, DraftLen, PassCosts, MAX_DRAFT_LEN};
pub use verify::{verify, DraftProbs, NextKind, Verdict};

use crate::error::{EngineError, Result};
use crate::generate::{plan_capacity, GenerateConfig, GenerateStats, Generation, StopReason};
use crate::kv_cache::KvCache;
use crate::model::{Logits, Model};
use crate::sampler::{Distribution, Sampler, SamplingParams};

/// How a speculative request drafts. Each round asks prompt lookup first (free when it finds a
/// match), then the draft model. The default looks up 3-grams only
/// ([`NgramProposer::beside_draft`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpecConfig {
    pub draft_len: DraftLen,
    /// Draft with the engine's draft model.
    pub draft_model: bool,
    /// Prompt lookup: n-gram matches against the prompt and the text so far.
    pub lookup: Option<NgramProposer>,
    /// A deferral rule (cascade); `None` is exact.
    pub cascade: Option<Cascade>,
    /// The draft model first writes the whole answer, which the target scores in one pass.
    pub answer: bool,
}

impl Default for SpecConfig {
    fn default() -> Self {
        SpecConfig {
            draft_len: DraftLen::default(),
            draft_model: true,
            lookup: Some(NgramProposer::beside_draft()),
            cascade: None,
            answer: false,
        }
    }
}

impl SpecConfig {
    pub fn validate(&self) -> Result<()> {
        let (name, k) = match self.draft_len {
            DraftLen::Fixed(k) => ("draft length", k),
            DraftLen::Auto { max } => ("maximum draft length", max),
        };
        if k == 0 || k > MAX_DRAFT_LEN {
            return Err(EngineError::InvalidParam {
                name,
                reason: format!("{k} must be between 1 and {MAX_DRAFT_LEN}"),
            });
        }
        if let Some(c) = self.cascade {
            c.validate()?;
        }
        if self.answer && !self.draft_model {
            return Err(EngineError::InvalidParam {
                name: "mode",
                reason: "answer mode needs a draft model to write the answer".into(),
            });
        }
        if !self.draft_model && self.lookup.is_none() {
            return Err(EngineError::InvalidParam {
                name: "proposer",
                reason: "neither a draft model nor prompt lookup was asked for".into(),
            });
        }
        if let Some(n) = self.lookup {
            if n.min_n == 0 || n.min_n > n.max_n {
                return Err(EngineError::InvalidParam {
                    name: "n-gram sizes",
                    reason: format!("need 1 ≤ min ({}) ≤ max ({})", n.min_n, n.max_n),
                });
            }
        }
        Ok(())
    }
}

/// What the draft-length controllers of an engine's speculative requests learned, for the next
/// request to start from: the target's pass costs by width (a property of the machine and the
/// model), and per proposer its acceptance by position and its draft step times, kept apart for
/// each combination of speculative settings (draft length aside) and sampling parameters, since
/// both change what gets accepted. A request resumes from it and leaves its own measurements.
#[derive(Debug, Clone, Default)]
pub struct SpecMemory {
    costs: Option<PassCosts>,
    controllers: Vec<(MemoryKey, Vec<Controller>)>,
}

/// The settings a proposer's learned acceptance holds for.
#[derive(Debug, Clone, Copy, PartialEq)]
struct MemoryKey {
    spec: SpecConfig,
    pub sampling: SamplingParams,
}

impl MemoryKey {
    /// The seed does not change what gets accepted on average: every seed shares one entry.
    fn new(spec: &SpecConfig, sampling: SamplingParams) -> MemoryKey {
        MemoryKey {
            spec: SpecConfig {
                draft_len: DraftLen::default(),
                ..*spec
            },
            sampling: SamplingParams {
                seed: 0,
                ..sampling
            },
        }
    }
}

/// Settings a [`SpecMemory`] remembers at most (the oldest entry goes first).
const MEMORY_ENTRIES: usize = 32;

impl SpecMemory {
    /// Pass costs with room for passes of `max_width` tokens.
    fn costs(&self, max_width: usize) -> PassCosts {
        match &self.costs {
            Some(c) => c.widened(max_width),
            None => PassCosts::new(max_width),
        }
    }

    /// One controller per proposer (`costly`: whether each drafts with a model): what earlier
    /// requests with `key` learned, or fresh ones.
    fn controllers(&self, key: &MemoryKey, costly: &[bool], mode: DraftLen) -> Vec<Controller> {
        match self.controllers.iter().find(|(k, _)| k == key) {
            Some((_, c)) if c.len() == costly.len() => c.iter().map(|c| c.resumed(mode)).collect(),
            _ => costly.iter().map(|&c| Controller::new(mode, c)).collect(),
        }
    }

    fn store(&mut self, key: MemoryKey, controllers: Vec<Controller>, costs: PassCosts) {
        self.costs = Some(costs);
        match self.controllers.iter_mut().find(|(k, _)| *k == key) {
            Some((_, c)) => *c = controllers,
            None => {
                if self.controllers.len() >= MEMORY_ENTRIES {
                    self.controllers.remove(0);
                }
                self.controllers.push((key, controllers));
            }
        }
    }

    /// Takes the pass costs, and the controllers of `spec` and `sampling`, from `other` (a copy
    /// of this memory that one request ran with), leaving the other settings' entries as they
    /// are: a request run alongside others only overwrites what it measured.
    pub fn absorb(&mut self, other: &SpecMemory, spec: &SpecConfig, sampling: SamplingParams) {
        let key = MemoryKey::new(spec, sampling);
        if let (Some(costs), Some((_, c))) = (
            &other.costs,
            other.controllers.iter().find(|(k, _)| *k == key),
        ) {
            self.store(key, c.clone(), costs.clone());
        }
    }

    /// Whether any request has left measurements.
    pub fn is_empty(&self) -> bool {
        self.costs.is_none()
    }
}

/// The verifier's signature, so that tests can substitute a broken one and watch it fail.
pub(crate) type VerifyFn = fn(&[Distribution], &[DraftProbs], &[u32], &mut ChaCha8Rng) -> Verdict;

/// Generates up to `cfg.max_tokens` tokens after `prompt` with `target`. Each round asks the
/// `proposers` in order and drafts with the first that proposes anything (with one draft length
/// controller each, per `spec.draft_len`); with none it decodes one token plainly. `on_token`
/// sees each emitted token and returns false to stop.
pub fn generate_speculative(
    target: &Model,
    proposers: &mut [&mut dyn Proposer],
    prompt: &[u32],
    cfg: &GenerateConfig,
    spec: &SpecConfig,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    let mut memory = SpecMemory::default();
    generate_speculative_with(target, proposers, prompt, cfg, spec, &mut memory, on_token)
}

/// [`generate_speculative`] starting from what earlier requests learned (`memory`), which it
/// updates with this request's measurements when it completes. [`crate::Engine`] keeps one per
/// engine.
pub fn generate_speculative_with(
    target: &Model,
    proposers: &mut [&mut dyn Proposer],
    prompt: &[u32],
    cfg: &GenerateConfig,
    spec: &SpecConfig,
    memory: &mut SpecMemory,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    let verify_fn: VerifyFn = verify::<ChaCha8Rng>;
    run(
        target, proposers, prompt, cfg, spec, memory, verify_fn, on_token,
    )
}

/// Per-position and per-round counters, turned into `GenerateStats` at the end.
#[derive(Debug, Clone)]
pub(crate) struct Counters {
    pub drafted_at: Vec<usize>,
    pub accepted_at: Vec<usize>,
    pub rounds_by_len: Vec<usize>,
}

impl Counters {
    /// Room for draft lengths up to `kmax`.
    pub(crate) fn new(kmax: usize) -> Counters {
        Counters {
            drafted_at: vec![0; kmax],
            accepted_at: vec![0; kmax],
            rounds_by_len: vec![0; kmax + 1],
        }
    }

    /// Records a round that drafted `drafted` tokens and kept `accepted`.
    pub(crate) fn round(&mut self, drafted: usize, accepted: usize) {
        self.rounds_by_len[drafted] += 1;
        for i in 0..drafted {
            self.drafted_at[i] += 1;
            self.accepted_at[i] += (i < accepted) as usize;
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    target: &Model,
    proposers: &mut [&mut dyn Proposer],
    prompt: &[u32],
    cfg: &GenerateConfig,
    spec: &SpecConfig,
    memory: &mut SpecMemory,
    verify_fn: VerifyFn,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    cfg.sampling.validate()?;
    spec.validate()?;
    let kmax = spec.draft_len.max();
    // Room for the widest pass past the last emitted token; rolled back after each pass.
    let capacity = plan_capacity(target, prompt, cfg.max_tokens + kmax + 1)?;
    let mut cache = target.new_cache(capacity);
    let mut sampler = Sampler::new(cfg.sampling);
    let mut stats = GenerateStats {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    let mut tokens = Vec::new();
    if cfg.max_tokens == 0 {
        return Ok(Generation {
            tokens,
            stop: StopReason::MaxTokens,
            stats,
        });
    }
    let judge = Judge {
        target,
        cascade: spec.cascade.filter(|c| !c.is_exact()),
        sampling: cfg.sampling,
    };
    let mut n = Counters::new(kmax);
    let mut context = prompt.to_vec();
    let t0 = Instant::now();
    let mut new = if spec.answer {
        answer_round(
            target,
            proposers,
            &mut cache,
            &context,
            cfg,
            &judge,
            verify_fn,
            &mut sampler,
            &mut stats,
        )?
    } else {
        let logits = target.forward_prompt(prompt, &mut cache, Logits::Last)?;
        stats.target_tokens += prompt.len();
        vec![sampler.sample(&logits, target.valid_mask()).token]
    };
    stats.prefill_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let key = MemoryKey::new(spec, cfg.sampling);
    let costly: Vec<bool> = proposers.iter().map(|p| p.costly()).collect();
    let mut ctrls = memory.controllers(&key, &costly, spec.draft_len);
    let mut costs = memory.costs(kmax + 1);
    // The previous round's start and the seconds it spent drafting and verifying: the rest of
    // its wall time (emitting tokens, streaming them out) is a per-round overhead the
    // draft-length controller weighs (it favours fewer, longer rounds).
    let mut last_round: Option<(Instant, f64)> = None;
    // The verification's logits, one buffer for every round (`Model::forward_into`).
    let mut logits_buf = Vec::new();
    let stop = 'rounds: loop {
        for &t in &new {
            tokens.push(t);
            context.push(t);
            if !on_token(t) {
                break 'rounds StopReason::Cancelled;
            }
            if cfg.stop_at_eog && target.tokenizer.is_eog(t) {
                break 'rounds StopReason::EndOfGeneration;
            }
            if tokens.len() >= cfg.max_tokens {
                break 'rounds StopReason::MaxTokens;
            }
        }
        // The invariant of the loop: the target holds every token but the newest.
        debug_assert_eq!(cache.len() + 1, context.len());
        if cache.len() >= cache.capacity() {
            break StopReason::ContextFull;
        }
        // Never draft past the cache or past what the request still wants (a round emits up to
        // k + 1 tokens).
        let room = (cache.capacity() - cache.len() - 1).min(cfg.max_tokens - tokens.len() - 1);
        let td = Instant::now();
        if let Some((start, busy)) = last_round {
            costs.observe_overhead((td - start).as_secs_f64() - busy);
        }
        let mut proposal = Proposal::default();
        let mut used = None;
        for (i, (p, ctrl)) in proposers.iter_mut().zip(&mut ctrls).enumerate() {
            let k = ctrl.choose(&costs).min(room);
            if k == 0 {
                ctrl.observe_plain();
                continue;
            }
            proposal = p.propose(&context, k, &mut sampler)?;
            stats.draft_tokens += proposal.computed;
            if !proposal.is_empty() {
                used = Some(i);
                break;
            }
        }
        let draft_s = td.elapsed().as_secs_f64();

        let tv = Instant::now();
        let base = cache.len();
        let pending = *context.last().expect("the context holds the prompt");
        let mut input = Vec::with_capacity(proposal.len() + 1);
        input.push(pending);
        input.extend_from_slice(&proposal.tokens);
        target.forward_into(&input, &mut cache, Logits::All, &mut logits_buf)?;
        stats.target_tokens += input.len();
        let p = judge.targets(&logits_buf, &proposal, &mut stats);
        let verdict = verify_fn(&p, &proposal.probs, &proposal.tokens, sampler.rng());
        cache.rollback_to(base + 1 + verdict.accepted)?;
        let verify_s = tv.elapsed().as_secs_f64();

        let d = proposal.len();
        costs.observe(d + 1, verify_s);
        if let Some(i) = used {
            ctrls[i].observe(
                d,
                verdict.accepted,
                proposal.catch_up,
                draft_s,
                proposal.first_s,
            );
        }
        stats.target_passes += 1;
        stats.drafted += d;
        stats.accepted += verdict.accepted;
        stats.draft_s += draft_s;
        stats.verify_s += verify_s;
        last_round = Some((td, draft_s + verify_s));
        n.round(d, verdict.accepted);
        new.clear();
        new.extend_from_slice(&proposal.tokens[..verdict.accepted]);
        new.push(verdict.next);
    };
    stats.decode_s = t1.elapsed().as_secs_f64();
    memory.store(key, ctrls, costs);
    stats.generated_tokens = tokens.len();
    stats.target_s = stats.prefill_s + stats.verify_s - stats.answer_draft_s;
    stats.draft_s += stats.answer_draft_s;
    finish_stats(&mut stats, &n);
    Ok(Generation {
        tokens,
        stop,
        stats,
    })
}

/// Answer mode's first round: the draft model writes the whole answer, the target scores the
/// prompt and the answer in one forward pass, and the verifier keeps the answer up to the first
/// token the rule rejects. Returns the tokens to emit (the kept answer and the target's token).
#[allow(clippy::too_many_arguments)]
fn answer_round(
    target: &Model,
    proposers: &mut [&mut dyn Proposer],
    cache: &mut KvCache,
    prompt: &[u32],
    cfg: &GenerateConfig,
    judge: &Judge,
    verify_fn: VerifyFn,
    sampler: &mut Sampler,
    stats: &mut GenerateStats,
) -> Result<Vec<u32>> {
    let writer = proposers
        .iter_mut()
        .find(|p| p.costly())
        .ok_or(EngineError::NoDraft)?;
    let td = Instant::now();
    let room = (cache.capacity() - prompt.len()).min(cfg.max_tokens);
    let answer = writer.propose(prompt, room, sampler)?;
    stats.draft_tokens += answer.computed;
    stats.answer_draft_s = td.elapsed().as_secs_f64();
    // Rows from the prompt's last position on: the target's distribution for every answer token
    // and the one after it.
    let mut input = prompt.to_vec();
    input.extend_from_slice(&answer.tokens);
    let mut logits = Vec::new();
    let want = Logits::From(prompt.len() - 1);
    target.forward_rows(&input, cache, want, prompt.len(), &mut logits)?;
    stats.target_tokens += input.len();
    let p = judge.targets(&logits, &answer, stats);
    let verdict = verify_fn(&p, &answer.probs, &answer.tokens, sampler.rng());
    cache.rollback_to(prompt.len() + verdict.accepted)?;
    stats.answer_drafted = answer.len();
    stats.answer_kept = verdict.accepted;
    stats.drafted += answer.len();
    stats.accepted += verdict.accepted;
    let mut out = answer.tokens[..verdict.accepted].to_vec();
    // A whole answer that ran to the token limit needs no token after it.
    if verdict.accepted < answer.len() || answer.len() < cfg.max_tokens {
        out.push(verdict.next);
    }
    Ok(out)
}

/// Builds the distributions the verifier accepts against: the target's p, or the cascade rule's
/// π where the rule can judge (a proposal with the draft's distributions).
pub(crate) struct Judge<'m> {
    pub target: &'m Model,
    pub cascade: Option<Cascade>,
    pub sampling: SamplingParams,
}

impl Judge<'_> {
    /// One distribution per row of `logits` (drafted positions, then the bonus position).
    pub(crate) fn targets(
        &self,
        logits: &[f32],
        proposal: &Proposal,
        stats: &mut GenerateStats,
    ) -> Vec<Distribution> {
        let valid = self.target.valid_mask();
        let rows = logits.chunks_exact(self.target.vocab_size());
        let mut p: Vec<Distribution> = rows
            .clone()
            .map(|row| Distribution::from_logits(row, &self.sampling, valid))
            .collect();
        let Some(rule) = self.cascade else {
            return p;
        };
        let greedy = self.sampling.is_greedy();
        for (i, (row, q)) in rows.zip(&proposal.judge).enumerate() {
            let token = proposal.tokens[i];
            if greedy {
                // Judge on the untempered distributions; where the rule keeps the draft's
                // token, π is a point mass on it (else p, the target's argmax).
                let pu = Distribution::from_logits(row, &SamplingParams::untempered(), valid);
                if rule.keeps(&pu, q, token) {
                    stats.kept_by_rule += 1;
                    p[i] = if (token as usize) < self.target.vocab_size() {
                        Distribution::point(token)
                    } else {
                        Distribution::dense(vec![0f32; self.target.vocab_size()])
                    };
                }
            } else {
                stats.kept_by_rule += rule.keeps(&p[i], q, token) as usize;
                p[i] = rule.target(&p[i], q);
            }
        }
        p
    }
}

/// Fills the rates, per-position acceptance and draft-length histogram of `s` from `n` (and the
/// decode rate from `decode_s`).
pub(crate) fn finish_stats(s: &mut GenerateStats, n: &Counters) {
    let ratio = |a: usize, b: usize| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    s.acceptance_rate = ratio(s.accepted, s.drafted);
    s.mean_accepted_per_pass = ratio(s.accepted, s.target_passes);
    s.decode_tokens_per_s = if s.decode_s > 0.0 {
        s.generated_tokens.saturating_sub(1) as f64 / s.decode_s
    } else {
        0.0
    };
    let used = n
        .drafted_at
        .iter()
        .rposition(|&d| d > 0)
        .map_or(0, |i| i + 1);
    s.per_position_acceptance = (0..used)
        .map(|i| ratio(n.accepted_at[i], n.drafted_at[i]))
        .collect();
    s.per_position_drafted = n.drafted_at[..used].to_vec();
    let lens = n
        .rounds_by_len
        .iter()
        .rposition(|&r| r > 0)
        .map_or(0, |i| i + 1);
    s.draft_lengths = n.rounds_by_len[..lens].to_vec();
}
