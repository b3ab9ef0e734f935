//! What a round verifies: a [`Proposal`] (drafted tokens and the distributions they came from),
//! filled by the draft model in the scheduler's draft forwards or by prompt lookup
//! ([`NgramProposer`], n-gram matching against the text so far).

use crate::sampler::Distribution;

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
    /// Under a grammar: the ids it allowed at each drafted position (the draft sampled under
    /// them, and the grammar consumed each drafted token); the target's rows are masked alike.
    pub(crate) allowed: Vec<crate::constraint::Allowed>,
}

impl Proposal {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Takes back the last drafted token (and what was recorded of its position).
    pub(crate) fn pop(&mut self) {
        self.tokens.pop();
        self.probs.truncate(self.tokens.len());
        self.judge.truncate(self.tokens.len());
        self.allowed.truncate(self.tokens.len());
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
}
