//! Proposers: where drafted tokens come from. A draft model (with its own KV cache, rolled back to
//! what the target accepted), or prompt lookup (n-gram matching against the text so far).

use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::model::{Logits, Model};
use crate::sampler::{Distribution, Sampler, SamplingParams};

use super::verify::DraftProbs;

/// Drafted tokens and the distribution each was drawn from.
#[derive(Debug, Clone, Default)]
pub struct Proposal {
    pub tokens: Vec<u32>,
    pub probs: Vec<DraftProbs>,
    /// Context tokens the proposer had to process before drafting (the prompt on the first
    /// round, the last emitted token or two afterwards; 0 for lookup).
    pub catch_up: usize,
    /// Tokens run through a draft model's forward passes for this proposal.
    pub computed: usize,
    /// Seconds of the first forward (the catch-up that yields the first drafted token); the
    /// draft-length controller prices it apart from the one-token steps after it.
    pub first_s: f64,
    /// For cascade rules: the draft's distribution at each drafted position as the rules judge
    /// it (untempered when decoding is greedy, else the shaped one); empty when not asked for or
    /// when the proposer has none (lookup).
    pub judge: Vec<Distribution>,
}

impl Proposal {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Proposes up to `k` tokens to follow `context` (the prompt and every token emitted so far).
pub trait Proposer: Send {
    fn propose(&mut self, context: &[u32], k: usize, sampler: &mut Sampler) -> Result<Proposal>;

    /// Whether proposals come with a cost worth weighing (a model forward per token).
    fn costly(&self) -> bool {
        true
    }
}

/// Length of the common prefix of `a` and `b`.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A draft model. Its cache holds `fed`; each proposal first rolls back to the part of `fed` that
/// is still a prefix of the context (what the target accepted), then feeds the rest in one pass,
/// so the prompt is computed once and a correction or bonus token costs one short catch-up.
pub struct ModelProposer<'m> {
    model: &'m Model,
    cache: KvCache,
    fed: Vec<u32>,
    /// Ids the draft may propose: valid for both models, so a padded row of either vocabulary is
    /// never drafted (q is then the distribution the token was really drawn from).
    valid: Vec<bool>,
    stop_at_eog: bool,
    /// Keep the judging distributions (cascade rules need them).
    judging: bool,
}

impl<'m> ModelProposer<'m> {
    /// A proposer for `target` whose cache holds up to `capacity` positions (capped at the
    /// draft's context).
    pub fn new(model: &'m Model, target: &Model, capacity: usize, stop_at_eog: bool) -> Self {
        let valid = (0..model.vocab_size() as u32)
            .map(|id| model.is_valid_token(id) && target.is_valid_token(id))
            .collect();
        ModelProposer {
            model,
            cache: model.new_cache(capacity),
            fed: Vec::new(),
            valid,
            stop_at_eog,
            judging: false,
        }
    }

    /// Also return the draft's distributions as cascade rules judge them.
    pub fn with_judging(mut self, on: bool) -> Self {
        self.judging = on;
        self
    }

    /// Tokens in the draft's cache.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

impl Proposer for ModelProposer<'_> {
    fn propose(&mut self, context: &[u32], k: usize, sampler: &mut Sampler) -> Result<Proposal> {
        let mut out = Proposal::default();
        if k == 0 || context.is_empty() {
            return Ok(out);
        }
        // At least the last token must be fed to get logits for the next position.
        let keep = common_prefix(&self.fed, context).min(context.len() - 1);
        self.cache.rollback_to(keep)?;
        self.fed.truncate(keep);
        // Room for the catch-up and k − 1 drafted tokens; a draft whose context is shorter than
        // the target's simply stops proposing.
        let room = self.cache.capacity().saturating_sub(keep);
        let catch_up = context.len() - keep;
        if room < catch_up {
            return Ok(out);
        }
        let k = k.min(room - catch_up + 1);
        out.catch_up = catch_up;
        out.computed = catch_up;
        let first = std::time::Instant::now();
        let mut logits = self
            .model
            .forward(&context[keep..], &mut self.cache, Logits::Last)?;
        out.first_s = first.elapsed().as_secs_f64();
        self.fed.extend_from_slice(&context[keep..]);
        loop {
            let s = sampler.sample(&logits, &self.valid);
            if self.judging {
                out.judge.push(if sampler.params.is_greedy() {
                    Distribution::from_logits(&logits, &SamplingParams::untempered(), &self.valid)
                } else {
                    s.dist.clone()
                });
            }
            let probs = if sampler.params.is_greedy() {
                DraftProbs::Point
            } else {
                DraftProbs::Dense(s.dist)
            };
            out.tokens.push(s.token);
            out.probs.push(probs);
            let eog = self.stop_at_eog && self.model.tokenizer.is_eog(s.token);
            if out.len() == k || eog {
                break;
            }
            self.model
                .forward_into(&[s.token], &mut self.cache, Logits::Last, &mut logits)?;
            self.fed.push(s.token);
            out.computed += 1;
        }
        Ok(out)
    }
}

/// Prompt lookup: finds the most recent earlier occurrence of the context's last n tokens
/// (n from `max_n` down to `min_n`) and proposes what followed it. No model, no cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgramProposer {
    pub min_n: usize,
    pub max_n: usize,
}

impl Default for NgramProposer {
    fn default() -> Self {
        NgramProposer { min_n: 1, max_n: 3 }
    }
}

impl NgramProposer {
    /// Lookup that runs before a draft model: 3-grams only. A lookup round displaces a draft
    /// model round, and on code a match of one or two tokens is a weak guess (per-position
    /// acceptance 0.65, 0.54, ... against the 0.5B draft's 0.93, 0.87, ...): on 20 code prompts,
    /// with `auto` and the Qwen pair, 3-grams ran at 1.19x target-only against 1.17x for 1-grams
    /// (median per prompt; fixed 4: 1.23x against 1.12x), and on 12 edit prompts 1.06x against
    /// 1.05x (`bench/results/2026-11-29-memory-speed-*-lookup-interleaved.txt`).
    pub fn beside_draft() -> NgramProposer {
        NgramProposer { min_n: 3, max_n: 3 }
    }

    /// The default lookup of a request: [`NgramProposer::beside_draft`] ahead of a draft model,
    /// [`NgramProposer::default`] when lookup drafts alone.
    pub fn for_request(with_draft_model: bool) -> NgramProposer {
        if with_draft_model {
            NgramProposer::beside_draft()
        } else {
            NgramProposer::default()
        }
    }

    /// The continuation of the latest earlier match of the context's suffix, up to `k` tokens.
    pub fn lookup(&self, context: &[u32], k: usize) -> Vec<u32> {
        let len = context.len();
        if k == 0 {
            return Vec::new();
        }
        for n in (self.min_n.max(1)..=self.max_n).rev() {
            if len <= n {
                continue;
            }
            let pattern = &context[len - n..];
            // Latest start i < len − n whose n tokens equal the suffix.
            if let Some(i) = (0..len - n).rev().find(|&i| &context[i..i + n] == pattern) {
                let from = i + n;
                return context[from..(from + k).min(len)].to_vec();
            }
        }
        Vec::new()
    }
}

impl Proposer for NgramProposer {
    fn propose(&mut self, context: &[u32], k: usize, _: &mut Sampler) -> Result<Proposal> {
        let tokens = self.lookup(context, k);
        let probs = vec![DraftProbs::Point; tokens.len()];
        Ok(Proposal {
            tokens,
            probs,
            ..Default::default()
        })
    }

    fn costly(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_proposes_what_followed_the_latest_match() {
        let p = NgramProposer::default();
        // ... 7 8 9 | 1 2 3 4 ... 1 2 3 → propose 4 5 (the latest "1 2 3" is followed by 4 5).
        let ctx = [1, 2, 3, 9, 9, 1, 2, 3, 4, 5, 6, 1, 2, 3];
        assert_eq!(p.lookup(&ctx, 2), vec![4, 5]);
        assert_eq!(p.lookup(&ctx, 10), vec![4, 5, 6, 1, 2, 3]);
        // No earlier occurrence of the last token: nothing to propose.
        assert!(p.lookup(&[1, 2, 3, 4], 4).is_empty());
        // Falls back to shorter n-grams.
        assert_eq!(p.lookup(&[5, 6, 7, 8, 6], 2), vec![7, 8]);
        assert!(p.lookup(&[], 3).is_empty());
        assert!(p.lookup(&ctx, 0).is_empty());
    }

    #[test]
    fn common_prefix_counts_matching_tokens() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
    }
}
