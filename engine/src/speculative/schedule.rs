//! How many tokens to draft per round: fixed, or chosen per sequence from the observed acceptance
//! and the measured cost of a draft step against a target pass of each width.
//!
//! Model: drafted token i (1-based) is accepted with probability a_i given that the tokens before
//! it were, so a round of k drafted tokens emits E(k) = 1 + Σ_{j≤k} Π_{i≤j} a_i tokens on average.
//! It costs t_first + (k − 1)·t_step + t_verify(k + 1): the draft's first forward of a round also
//! catches up on the tokens the target emitted last round (one or two), so it is timed apart from
//! the one-token steps after it; counting it per drafted token made short rounds look dear per
//! token and kept the controller at k = 1. A round's time outside drafting and verification
//! (emitting and streaming its tokens) is measured too and added to every k. The controller
//! picks the k in 0..=max with the most tokens per second; k = 0 is plain decoding (speculation
//! would not pay). Each a_i comes from
//! decayed counts of the rounds that reached position i, shrunk towards the overall acceptance
//! rate where there are few; t_verify(n) from the passes of width n measured so far, with
//! unmeasured widths interpolated (or extrapolated with a prior slope).
//! Each proposer of a request has its own controller (prompt lookup drafts for free, the draft
//! model does not); the pass costs are shared. What they learned carries over to the next
//! request of the same engine and settings ([`super::SpecMemory`]): a 128-token request has
//! only 30-40 rounds, too few to spend the first of them relearning the machine's costs and
//! the pair's acceptance from a prior.

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

/// Measured seconds of target passes by width, shared by every proposer of a request.
#[derive(Debug, Clone)]
pub struct PassCosts {
    /// Index n: a pass of n tokens.
    t: Vec<Ema>,
    /// Seconds of a round spent neither drafting nor verifying.
    overhead: Ema,
}

impl PassCosts {
    /// Room for passes of up to `max_width` tokens.
    pub fn new(max_width: usize) -> PassCosts {
        PassCosts {
            t: vec![Ema::default(); max_width + 1],
            overhead: Ema::default(),
        }
    }

    /// Records the seconds of a round spent outside drafting and verification.
    pub fn observe_overhead(&mut self, seconds: f64) {
        if seconds.is_finite() {
            self.overhead.push(seconds.max(0.0));
        }
    }

    /// The same measurements with room for passes of up to `max_width` tokens (a later request
    /// may draft longer).
    pub fn widened(&self, max_width: usize) -> PassCosts {
        let mut c = self.clone();
        if c.t.len() < max_width + 1 {
            c.t.resize(max_width + 1, Ema::default());
        }
        c
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

/// Chooses the draft length of one proposer's rounds.
#[derive(Debug, Clone)]
pub struct Controller {
    mode: DraftLen,
    accepted: f64,
    rejected: f64,
    /// Index i: decayed counts of rounds that reached drafted position i + 1, and of those that
    /// accepted it.
    reached_at: Vec<f64>,
    accepted_at: Vec<f64>,
    /// Seconds of a round's first draft forward (with a short catch-up).
    t_first: Ema,
    /// Seconds of each later one-token draft forward.
    t_step: Ema,
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
            reached_at: vec![0.0; mode.max()],
            accepted_at: vec![0.0; mode.max()],
            t_first: Ema::default(),
            t_step: Ema::default(),
            plain_streak: 0,
            costly,
        }
    }

    /// This controller's measurements (acceptance, draft step times) under a new request's
    /// `mode`: how a request resumes what the engine's earlier requests learned.
    pub fn resumed(&self, mode: DraftLen) -> Controller {
        let mut c = self.clone();
        c.mode = mode;
        c.reached_at.resize(mode.max(), 0.0);
        c.accepted_at.resize(mode.max(), 0.0);
        c.plain_streak = 0;
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

    /// Records a round of this proposer: `drafted` tokens proposed after feeding it `catch_up`
    /// tokens of context, `accepted` kept, `draft_s` seconds spent proposing, of which `first_s`
    /// in the first forward. A long catch-up (the prompt, or the tokens of a streak of plain
    /// steps) is a one-off, not a per-round cost.
    pub fn observe(
        &mut self,
        drafted: usize,
        accepted: usize,
        catch_up: usize,
        draft_s: f64,
        first_s: f64,
    ) {
        if drafted == 0 {
            return;
        }
        self.plain_streak = 0;
        if catch_up <= 2 {
            self.t_first.push(first_s);
        }
        if drafted > 1 {
            self.t_step
                .push((draft_s - first_s).max(0.0) / (drafted - 1) as f64);
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

    /// Records that this proposer was asked for nothing (its choice was 0) this round.
    pub fn observe_plain(&mut self) {
        self.plain_streak += 1;
    }

    /// Expected tokens emitted by a round drafting `k` tokens.
    fn tokens(&self, k: usize) -> f64 {
        let (mut total, mut reach) = (1.0, 1.0);
        for i in 0..k {
            reach *= self.alpha_at(i);
            total += reach;
        }
        total
    }

    /// Expected tokens per second of a round drafting `k` tokens, with a round's first draft
    /// forward taking `t_first` seconds and each later one `t_step`.
    fn rate(&self, costs: &PassCosts, k: usize, t_first: f64, t_step: f64) -> Option<f64> {
        let draft = if k == 0 {
            0.0
        } else {
            t_first + (k - 1) as f64 * t_step
        };
        let overhead = costs.overhead.value.unwrap_or(0.0);
        Some(self.tokens(k) / (draft + costs.cost(k + 1)? + overhead))
    }

    /// Tokens to draft this round (0: decode plainly).
    pub fn choose(&self, costs: &PassCosts) -> usize {
        let max = match self.mode {
            DraftLen::Fixed(k) => return k,
            DraftLen::Auto { max } => max,
        };
        let (t_first, t_step) = match (self.costly, self.t_first.value, self.t_step.value) {
            (false, _, _) => (0.0, 0.0),
            (true, Some(f), Some(s)) => (f, s),
            // Only one-token rounds so far: a later step costs at most a first one.
            (true, Some(f), None) => (f, f),
            // Nothing measured yet: start in the middle.
            (true, None, _) => return max.min(4),
        };
        if self.plain_streak >= PROBE_EVERY {
            return 1.min(max);
        }
        let mut best = (0, 0.0);
        for k in 0..=max {
            match self.rate(costs, k, t_first, t_step) {
                Some(r) if r > best.1 => best = (k, r),
                Some(_) => {}
                // No pass measured yet: draft as much as allowed (it costs nothing).
                None => return max.min(4),
            }
        }
        best.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trained(
        hits: (usize, usize),
        t_draft: f64,
        verify: &[(usize, f64)],
    ) -> (Controller, PassCosts) {
        let mut c = Controller::new(DraftLen::Auto { max: 8 }, true);
        let mut costs = PassCosts::new(9);
        for &(n, t) in verify {
            costs.observe(n, t);
        }
        let (acc, drafted) = hits;
        for _ in 0..50 {
            c.observe(drafted, acc, 1, t_draft * drafted as f64, t_draft);
        }
        (c, costs)
    }

    #[test]
    fn a_resumed_controller_keeps_what_it_learned() {
        let (c, costs) = trained((1, 4), 0.004, &[(1, 0.03), (5, 0.045)]);
        let r = c.resumed(DraftLen::Auto { max: 12 });
        let wide = costs.widened(13);
        assert_eq!(r.alpha(), c.alpha());
        for i in 0..8 {
            assert_eq!(r.alpha_at(i), c.alpha_at(i));
        }
        assert_eq!(r.reached_at.len(), 12);
        assert_eq!(wide.t.len(), 14);
        assert_eq!(wide.cost(5), costs.cost(5));
        // Low acceptance learned: the next request does not open with the prior's k = 4.
        let fresh = Controller::new(DraftLen::Auto { max: 12 }, true);
        assert_eq!(fresh.choose(&PassCosts::new(13)), 4);
        assert_eq!(r.choose(&wide), c.choose(&costs));
        assert!(r.choose(&wide) < 4, "{}", r.choose(&wide));
        // Under a fixed length it drafts that length, whatever it learned.
        assert_eq!(c.resumed(DraftLen::Fixed(3)).choose(&wide), 3);
    }

    #[test]
    fn fixed_is_fixed_and_auto_starts_in_the_middle() {
        let costs = PassCosts::new(9);
        assert_eq!(Controller::new(DraftLen::Fixed(3), true).choose(&costs), 3);
        assert_eq!(
            Controller::new(DraftLen::Auto { max: 8 }, true).choose(&costs),
            4
        );
        assert_eq!(
            Controller::new(DraftLen::Auto { max: 2 }, true).choose(&costs),
            2
        );
    }

    #[test]
    fn cheap_verification_and_high_acceptance_draft_long() {
        // Every token accepted, a draft step 5% of a pass, passes nearly flat in width.
        let (c, costs) = trained((4, 4), 0.002, &[(1, 0.037), (5, 0.040), (9, 0.045)]);
        assert!(c.alpha() > 0.9);
        assert!(c.choose(&costs) >= 6, "{}", c.choose(&costs));
        // A free proposer (prompt lookup) drafts long as soon as passes are cheap.
        let mut free = Controller::new(DraftLen::Auto { max: 8 }, false);
        free.observe(4, 4, 0, 0.0, 0.0);
        assert_eq!(free.choose(&costs), 8);
    }

    #[test]
    fn expensive_drafts_or_poor_acceptance_fall_back_to_plain_decoding() {
        // Acceptance 25% and a draft step 60% of a pass: no k beats plain decoding.
        let (mut c, costs) = trained((1, 4), 0.023, &[(1, 0.037), (5, 0.095), (9, 0.141)]);
        assert_eq!(c.choose(&costs), 0);
        // ... but it probes again after a streak of plain steps.
        for _ in 0..PROBE_EVERY {
            c.observe_plain();
        }
        assert_eq!(c.choose(&costs), 1);
    }

    #[test]
    fn a_long_catch_up_is_not_a_per_token_cost() {
        let (mut c, costs) = trained((4, 4), 0.002, &[(1, 0.037), (5, 0.040), (9, 0.045)]);
        let before = c.choose(&costs);
        // The prompt's prefill on the draft: 1 s for 4 drafted tokens.
        c.observe(4, 4, 300, 1.0, 0.99);
        assert_eq!(c.choose(&costs), before);
    }

    #[test]
    fn acceptance_is_estimated_per_position() {
        // Rounds of 4 that always accept the first two and reject the third.
        let mut c = Controller::new(DraftLen::Auto { max: 8 }, true);
        for _ in 0..100 {
            c.observe(4, 2, 1, 0.04, 0.01);
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
        let costs = {
            let mut p = PassCosts::new(9);
            for n in 1..=9 {
                p.observe(n, 0.030 + 0.004 * n as f64);
            }
            p
        };
        assert_eq!(c.choose(&costs), 2);
    }

    #[test]
    fn per_round_overhead_favours_longer_rounds() {
        // Rounds of 8 whose tokens are each accepted with probability 0.93 (a fixed
        // pseudo-random sequence), draft steps 14 ms, passes 33 ms plus 6 ms per extra token.
        let mut c = Controller::new(DraftLen::Auto { max: 8 }, true);
        let mut seed = 12345u64;
        for _ in 0..400 {
            let mut accepted = 0;
            while accepted < 8 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if (seed >> 11) as f64 / (1u64 << 53) as f64 >= 0.93 {
                    break;
                }
                accepted += 1;
            }
            c.observe(8, accepted, 1, 8.0 * 0.014, 0.014);
        }
        let mut costs = PassCosts::new(9);
        for n in 1..=9 {
            costs.observe(n, 0.033 + 0.006 * (n - 1) as f64);
        }
        let short = c.choose(&costs);
        assert!((2..=4).contains(&short), "{short}");
        // 30 ms of each round spent emitting tokens: fewer, longer rounds pay.
        for _ in 0..20 {
            costs.observe_overhead(0.030);
        }
        let long = c.choose(&costs);
        assert!(long > short, "{short} then {long}");
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
