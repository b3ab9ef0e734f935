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
//! This module holds the pieces every mode shares: the settings, the pure verifier, the cascade
//! rules, the draft-length controllers and prompt lookup. The loop that runs them is the
//! scheduler's, one per-sequence state machine for every mode (`crate::scheduler`): the target's
//! blocks never hold the newest token (it is the first input of the next pass) and are rolled
//! back to the accepted length after each pass; the draft's blocks are rolled back to whatever
//! part of them the target accepted.

mod proposer;
pub mod rules;
mod schedule;
pub mod verify;
pub mod vocab;

#[cfg(test)]
mod tests;

use rand_chacha::ChaCha8Rng;

pub use proposer::{NgramProposer, Proposal};
pub use rules::{Cascade, Rule};
pub use schedule::{Controller, DraftLen, PassCosts, MAX_DRAFT_LEN};
pub use verify::{verify, verify_prefix, DraftProbs, NextKind, Verdict};

use crate::error::{EngineError, Result};
use crate::generate::GenerateStats;
use crate::model::Model;
use crate::sampler::{Distribution, SamplingParams};

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

/// The verifier's signature, so that tests can substitute a broken one and watch it fail.
pub type VerifyFn = fn(&[Distribution], &[DraftProbs], &[u32], &mut ChaCha8Rng) -> Verdict;

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

/// Builds the distributions the verifier accepts against: the target's p, or the cascade rule's
/// π where the rule can judge (a proposal with the draft's distributions).
pub(crate) struct Judge<'m> {
    pub target: &'m Model,
    pub cascade: Option<Cascade>,
    pub sampling: SamplingParams,
}

impl Judge<'_> {
    /// One distribution per row of `logits`, whose drafted tokens are `tokens`: row i judges
    /// `tokens[i]` with the draft's `judge[i]`; a row past them (the bonus position) stays p.
    pub(crate) fn targets(
        &self,
        logits: &[f32],
        tokens: &[u32],
        judge: &[Distribution],
        masks: Option<&[Vec<bool>]>,
        stats: &mut GenerateStats,
    ) -> Vec<Distribution> {
        let rows = logits.chunks_exact(self.target.vocab_size());
        // Each row's valid ids: the model's, or a grammar's at that position.
        let valid_at = |i: usize| match masks {
            Some(m) => m.get(i).map_or(&[][..], Vec::as_slice),
            None => self.target.valid_mask(),
        };
        let mut p: Vec<Distribution> = rows
            .clone()
            .enumerate()
            .map(|(i, row)| Distribution::from_logits(row, &self.sampling, valid_at(i)))
            .collect();
        let Some(rule) = self.cascade else {
            return p;
        };
        let greedy = self.sampling.is_greedy();
        for (i, (row, q)) in rows.zip(judge).enumerate() {
            let token = tokens[i];
            if greedy {
                // Judge on the untempered distributions; where the rule keeps the draft's
                // token, π is a point mass on it (else p, the target's argmax).
                let pu = Distribution::from_logits(row, &SamplingParams::untempered(), valid_at(i));
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
