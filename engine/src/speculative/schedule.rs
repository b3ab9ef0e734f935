//! How many tokens to draft per round: fixed, or chosen per sequence from the observed acceptance
//! and the measured cost of a draft step against a target pass of each width.
//!
//! Model: each drafted token is accepted with probability α, independently, until the first
//! rejection, so a round of k drafted tokens emits E(k) = (1 − α^(k+1)) / (1 − α) tokens on
//! average and costs k·t_draft + t_verify(k + 1). The controller picks the k in 0..=max with the
//! most tokens per second; k = 0 is plain decoding (speculation would not pay). α is estimated
//! from decayed counts of accepted and rejected positions; t_verify(n) from the passes of width n
//! measured so far, with unmeasured widths interpolated (or extrapolated with a prior slope).

/// `--draft-len`: a fixed number of drafted tokens per round, or adaptive up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DraftLen {
    Fixed(usize),
    Auto { max: usize },
}

impl Default for DraftLen {
    fn default() -> Self {
        DraftLen::Auto { max: 8 }
    }
}

impl DraftLen {
    /// The most tokens a round may draft.
    pub fn max(&self) -> usize {
        match *self {
            DraftLen::Fixed(k) => k,
            DraftLen::Auto { max } => max,
        }
    }
}

/// Largest accepted draft length (a target pass of this many tokens is already compute bound).
pub const MAX_DRAFT_LEN: usize = 32;

/// Prior cost of each extra token in a target pass, relative to a one-token pass (measured on the
/// 1.5B target: 5 tokens cost 2.5 one-token passes). Replaced by measurements as they come.
const PRIOR_SLOPE: f64 = 0.4;
/// Decay of the acceptance counts per round (about the last 20 rounds weigh).
const DECAY: f64 = 0.95;
/// After this many plain steps the controller drafts one round again to re-measure acceptance.
const PROBE_EVERY: usize = 16;

#[derive(Debug, Clone, Copy, Default)]
struct Ema {
    value: Option<f64>,
}

impl Ema {
    fn push(&mut self, x: f64) {
        self.value = Some(match self.value {
            None => x,
            Some(v) => 0.7 * v + 0.3 * x,
        });
    }
}

/// Chooses the draft length of each round.
#[derive(Debug, Clone)]
pub struct Controller {
    mode: DraftLen,
    accepted: f64,
    rejected: f64,
    /// Seconds per drafted token (catch-up included).
    t_draft: Ema,
    /// Seconds per target pass of width n at index n.
    t_verify: Vec<Ema>,
    plain_streak: usize,
    costly: bool,
}

impl Controller {
    /// `costly`: drafting costs a model forward per token (false for prompt lookup).
    pub fn new(mode: DraftLen, costly: bool) -> Controller {
        Controller {
            mode,
            // Prior: α = 0.7 with the weight of a few rounds.
            accepted: 2.8,
            rejected: 1.2,
            t_draft: Ema::default(),
            t_verify: vec![Ema::default(); mode.max() + 2],
            plain_streak: 0,
            costly,
        }
    }

    /// Estimated probability that a drafted token is accepted.
    pub fn alpha(&self) -> f64 {
        self.accepted / (self.accepted + self.rejected)
    }

    /// Records a round: `drafted` tokens proposed, `accepted` kept, and the seconds spent drafting
    /// and verifying (a pass of `drafted + 1` tokens).
    pub fn observe(&mut self, drafted: usize, accepted: usize, draft_s: f64, verify_s: f64) {
        if let Some(e) = self.t_verify.get_mut(drafted + 1) {
            e.push(verify_s);
        }
        if drafted == 0 {
            self.plain_streak += 1;
            return;
        }
        self.plain_streak = 0;
        self.t_draft.push(draft_s / drafted as f64);
        self.accepted = self.accepted * DECAY + accepted as f64;
        self.rejected = self.rejected * DECAY + (accepted < drafted) as usize as f64;
    }

    /// Estimated seconds of a target pass of `n` tokens.
    fn verify_cost(&self, n: usize) -> Option<f64> {
        let known = |i: usize| self.t_verify.get(i).and_then(|e| e.value);
        if let Some(t) = known(n) {
            return Some(t);
        }
        let lo = (1..n).rev().find_map(|i| known(i).map(|t| (i, t)));
        let hi = (n + 1..self.t_verify.len()).find_map(|i| known(i).map(|t| (i, t)));
        let prior = |i: usize| 1.0 + PRIOR_SLOPE * (i as f64 - 1.0);
        match (lo, hi) {
            (Some((a, ta)), Some((b, tb))) => {
                Some(ta + (tb - ta) * (n - a) as f64 / (b - a) as f64)
            }
            (Some((a, t)), None) | (None, Some((a, t))) => Some(t * prior(n) / prior(a)),
            (None, None) => None,
        }
    }

    /// Expected tokens per second of a round drafting `k` tokens.
    fn rate(&self, k: usize, alpha: f64, t_draft: f64) -> Option<f64> {
        let tokens = if alpha >= 1.0 {
            (k + 1) as f64
        } else {
            (1.0 - alpha.powi(k as i32 + 1)) / (1.0 - alpha)
        };
        let cost = k as f64 * t_draft + self.verify_cost(k + 1)?;
        Some(tokens / cost)
    }

    /// Tokens to draft this round.
    pub fn choose(&self) -> usize {
        let max = match self.mode {
            DraftLen::Fixed(k) => return k,
            DraftLen::Auto { max } => max,
        };
        let t_draft = match self.t_draft.value {
            Some(t) => t,
            // Nothing measured yet: start in the middle.
            None => return max.min(4),
        };
        if self.plain_streak >= PROBE_EVERY {
            return 1.min(max);
        }
        let t_draft = if self.costly { t_draft } else { 0.0 };
        let alpha = self.alpha();
        let mut best = (0, 0.0);
        for k in 0..=max {
            if let Some(r) = self.rate(k, alpha, t_draft) {
                if r > best.1 {
                    best = (k, r);
                }
            }
        }
        best.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trained(alpha_hits: (usize, usize), t_draft: f64, verify: &[(usize, f64)]) -> Controller {
        let mut c = Controller::new(DraftLen::Auto { max: 8 }, true);
        for &(n, t) in verify {
            c.t_verify[n].push(t);
        }
        let (acc, drafted) = alpha_hits;
        for _ in 0..50 {
            c.observe(
                drafted,
                acc,
                t_draft * drafted as f64,
                c.verify_cost(drafted + 1).unwrap(),
            );
        }
        c
    }

    #[test]
    fn fixed_is_fixed_and_auto_starts_in_the_middle() {
        assert_eq!(Controller::new(DraftLen::Fixed(3), true).choose(), 3);
        assert_eq!(Controller::new(DraftLen::Auto { max: 8 }, true).choose(), 4);
        assert_eq!(Controller::new(DraftLen::Auto { max: 2 }, true).choose(), 2);
    }

    #[test]
    fn cheap_verification_and_high_acceptance_draft_long() {
        // Every token accepted, a draft step 5% of a pass, passes nearly flat in width.
        let c = trained((4, 4), 0.002, &[(1, 0.037), (5, 0.040), (9, 0.045)]);
        assert!(c.alpha() > 0.9);
        assert!(c.choose() >= 6, "{}", c.choose());
    }

    #[test]
    fn expensive_drafts_or_poor_acceptance_fall_back_to_plain_decoding() {
        // Acceptance 25% and a draft step 60% of a pass: no k beats plain decoding.
        let c = trained((1, 4), 0.023, &[(1, 0.037), (5, 0.095), (9, 0.141)]);
        assert_eq!(c.choose(), 0);
        // ... but it probes again after a streak of plain steps.
        let mut c = c;
        for _ in 0..PROBE_EVERY {
            c.observe(0, 0, 0.0, 0.037);
        }
        assert_eq!(c.choose(), 1);
    }

    #[test]
    fn verify_cost_interpolates_and_extrapolates() {
        let mut c = Controller::new(DraftLen::Auto { max: 8 }, true);
        assert!(c.verify_cost(3).is_none());
        c.t_verify[1].push(1.0);
        c.t_verify[5].push(3.0);
        assert!((c.verify_cost(3).unwrap() - 2.0).abs() < 1e-12);
        let t9 = c.verify_cost(9).unwrap();
        assert!((t9 - 3.0 * (1.0 + 8.0 * PRIOR_SLOPE) / (1.0 + 4.0 * PRIOR_SLOPE)).abs() < 1e-12);
    }
}
