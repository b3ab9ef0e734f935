//! Draft lengths: fixed, or chosen per sequence by the scheduler's plan (`scheduler::plan`) from
//! the measured cost of the step's forwards ([`PassCosts`], by rows) and each proposer's
//! acceptance ([`Controller`]).
//!
//! Model: drafted token i (1-based) is accepted with probability a_i given that the tokens before
//! it were, so a round of k drafted tokens emits E(k) = 1 + Σ_{j≤k} Π_{i≤j} a_i tokens on average.
//! Each a_i comes from decayed counts of the rounds that reached position i, shrunk towards the
//! overall acceptance rate where there are few. A pass's cost by rows comes from the passes
//! measured so far (and a probe at load), unmeasured widths interpolated (or extrapolated with a
//! prior slope).

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
/// 1.5B target: 5 tokens cost 1.65 one-token passes). Replaced by measurements as they come.
const PRIOR_SLOPE: f64 = 0.16;
/// Decay of the acceptance counts per round (about the last 20 rounds weigh).
const DECAY: f64 = 0.95;
/// Rounds' weight of the overall acceptance in each position's estimate.
const POSITION_PRIOR: f64 = 3.0;

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

/// Measured seconds of target passes by width, shared by every proposer of a request.
#[derive(Debug, Clone)]
pub struct PassCosts {
    /// Index n: a pass of n tokens.
    t: Vec<Ema>,
}

impl PassCosts {
    /// Room for passes of up to `max_width` tokens.
    pub fn new(max_width: usize) -> PassCosts {
        PassCosts {
            t: vec![Ema::default(); max_width + 1],
        }
    }

    pub fn observe(&mut self, width: usize, seconds: f64) {
        if let Some(e) = self.t.get_mut(width) {
            e.push(seconds);
        }
    }

    /// Estimated seconds of a pass of `n` tokens.
    pub(crate) fn cost(&self, n: usize) -> Option<f64> {
        let known = |i: usize| self.t.get(i).and_then(|e| e.value);
        if let Some(t) = known(n) {
            return Some(t);
        }
        let lo = (1..n).rev().find_map(|i| known(i).map(|t| (i, t)));
        let hi = (n + 1..self.t.len()).find_map(|i| known(i).map(|t| (i, t)));
        let prior = |i: usize| 1.0 + PRIOR_SLOPE * (i as f64 - 1.0);
        match (lo, hi) {
            (Some((a, ta)), Some((b, tb))) => {
                Some(ta + (tb - ta) * (n - a) as f64 / (b - a) as f64)
            }
            (Some((a, t)), None) | (None, Some((a, t))) => Some(t * prior(n) / prior(a)),
            (None, None) => None,
        }
    }
}

/// What one proposer's drafts have earned: acceptance by drafted position.
#[derive(Debug, Clone)]
pub struct Controller {
    accepted: f64,
    rejected: f64,
    /// Index i: decayed counts of rounds that reached drafted position i + 1, and of those that
    /// accepted it.
    reached_at: Vec<f64>,
    accepted_at: Vec<f64>,
}

impl Controller {
    /// A controller for drafts of up to `mode.max()` tokens, from the prior α = 0.7.
    pub fn new(mode: DraftLen) -> Controller {
        Controller {
            // Prior: α = 0.7 with the weight of a few rounds.
            accepted: 2.8,
            rejected: 1.2,
            reached_at: vec![0.0; mode.max()],
            accepted_at: vec![0.0; mode.max()],
        }
    }

    /// This controller's acceptance under a new request's `mode`: how a request resumes what
    /// the engine's earlier requests learned.
    pub fn resumed(&self, mode: DraftLen) -> Controller {
        let mut c = self.clone();
        c.reached_at.resize(mode.max(), 0.0);
        c.accepted_at.resize(mode.max(), 0.0);
        c
    }

    /// Estimated probability that drafted position `i` (0-based) is accepted given the ones
    /// before it were: its own counts, with [`POSITION_PRIOR`] rounds' weight of the overall
    /// rate (one unlucky first round must not condemn a proposer).
    pub fn alpha_at(&self, i: usize) -> f64 {
        let prior = self.alpha();
        match (self.reached_at.get(i), self.accepted_at.get(i)) {
            (Some(&n), Some(&a)) => (a + POSITION_PRIOR * prior) / (n + POSITION_PRIOR),
            _ => prior,
        }
    }

    /// Estimated probability that a drafted token is accepted.
    pub fn alpha(&self) -> f64 {
        self.accepted / (self.accepted + self.rejected)
    }

    /// Records a round of this proposer: `drafted` tokens proposed, `accepted` kept.
    pub fn observe(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        self.accepted = self.accepted * DECAY + accepted as f64;
        self.rejected = self.rejected * DECAY + (accepted < drafted) as usize as f64;
        for (i, (n, a)) in self
            .reached_at
            .iter_mut()
            .zip(&mut self.accepted_at)
            .enumerate()
        {
            *n *= DECAY;
            *a *= DECAY;
            if i < drafted && i <= accepted {
                *n += 1.0;
                *a += (i < accepted) as usize as f64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_controller_keeps_what_it_learned() {
        let mut c = Controller::new(DraftLen::Auto { max: 8 });
        for _ in 0..50 {
            c.observe(4, 0);
        }
        let r = c.resumed(DraftLen::Auto { max: 12 });
        assert_eq!(r.alpha(), c.alpha());
        for i in 0..8 {
            assert_eq!(r.alpha_at(i), c.alpha_at(i));
        }
        assert_eq!(r.reached_at.len(), 12);
        assert!(c.alpha() < 0.5 && Controller::new(DraftLen::Fixed(3)).alpha() == 0.7);
    }

    #[test]
    fn acceptance_is_estimated_per_position() {
        // Rounds of 4 that always accept the first two and reject the third.
        let mut c = Controller::new(DraftLen::Auto { max: 8 });
        for _ in 0..100 {
            c.observe(4, 2);
        }
        assert!(
            c.alpha_at(0) > 0.95 && c.alpha_at(1) > 0.95,
            "{}",
            c.alpha_at(1)
        );
        // Never accepted there: (0 + 3 rounds' weight of the overall 2/3) / (~20 decayed rounds
        // + 3) = 0.087.
        assert!(c.alpha_at(2) < 0.1, "{}", c.alpha_at(2));
        // Position 4 was never reached: it falls back to the overall rate (2 of 3 judged).
        assert!((c.alpha_at(3) - c.alpha()).abs() < 1e-12);
    }

    #[test]
    fn pass_costs_interpolate_and_extrapolate() {
        let mut c = PassCosts::new(9);
        assert!(c.cost(3).is_none());
        c.observe(1, 1.0);
        c.observe(5, 3.0);
        assert!((c.cost(3).unwrap() - 2.0).abs() < 1e-12);
        let t9 = c.cost(9).unwrap();
        assert!((t9 - 3.0 * (1.0 + 8.0 * PRIOR_SLOPE) / (1.0 + 4.0 * PRIOR_SLOPE)).abs() < 1e-12);
    }
}
