//! Draft lengths for one step of a batch. A step's time is one target forward over all its rows
//! plus the draft forwards (one per drafted position, over every sequence still drafting), so a
//! drafted token is priced by what it adds to the whole step: nearly nothing while the batch is
//! small and the products are bound by reading the weights, a full row's share once they are
//! bound by arithmetic. The plan maximizes expected tokens per second of the step: starting from
//! plain decoding everywhere, it repeatedly takes the change of one sequence's draft length that
//! raises the rate most, and stops when none does. As batches grow it turns speculation down
//! per sequence, down to plain decoding.

use crate::speculative::PassCosts;

/// A longer draft must promise at least this much more rate than the plan without it: the costs
/// are measured with noise, and a round that drafts pays overheads the tables do not see (the
/// draft's catch-up, its sampling), so a break-even draft is a loss in practice.
const MARGIN: f64 = 0.05;

/// One decoding sequence's options this step.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// Estimated acceptance of drafted position i given the ones before it were accepted.
    pub alphas: Vec<f64>,
    /// The most it may draft (0: it decodes plainly).
    pub max: usize,
    /// Drafting costs draft-model forwards (false for prompt lookup).
    pub costly: bool,
    /// Rows of its first draft forward (the tokens the draft has not seen yet).
    pub catch_up: usize,
    /// Seconds added to the step when it drafts at all (a catch-up's one-off cost, spread over
    /// the request's remaining rounds).
    pub setup: f64,
    /// A length decided already (fixed `--draft-len`, or a probe).
    pub forced: Option<usize>,
}

impl Candidate {
    /// Expected tokens a round drafting `k` emits: 1 + Σ_j Π_{i≤j} α_i.
    fn tokens(&self, k: usize) -> f64 {
        let (mut total, mut reach) = (1.0, 1.0);
        for &a in self.alphas.iter().take(k) {
            reach *= a;
            total += reach;
        }
        total
    }
}

/// Measured costs: target forwards and draft forwards by rows, and the step's other time.
pub(crate) struct StepCosts<'a> {
    pub target: &'a PassCosts,
    pub draft: &'a PassCosts,
    pub overhead: f64,
    /// A draft forward's cost over a target forward's of the same rows before any draft forward
    /// is measured (the ratio of the bytes their steps read: both are bound by memory at a few
    /// rows). Without it the draft model would never run, so never be measured.
    pub draft_prior: f64,
}

impl StepCosts<'_> {
    /// Seconds of a draft forward over `rows` rows: measured, or the prior from the target's.
    pub fn draft_cost(&self, rows: usize) -> Option<f64> {
        self.draft
            .cost(rows)
            .or_else(|| Some(self.target.cost(rows)? * self.draft_prior))
    }

    /// Seconds of a step with `rows` target rows and draft lengths `k`, or None before the
    /// first measurements.
    fn time(&self, rows: usize, cands: &[Candidate], k: &[usize]) -> Option<f64> {
        let setup: f64 = cands
            .iter()
            .zip(k)
            .filter(|(_, &k)| k > 0)
            .map(|(c, _)| c.setup)
            .sum();
        let mut t = self.target.cost(rows)? + self.overhead + setup;
        let deepest = cands
            .iter()
            .zip(k)
            .filter(|(c, _)| c.costly)
            .map(|(_, &k)| k)
            .max()
            .unwrap_or(0);
        for i in 1..=deepest {
            let rows: usize = cands
                .iter()
                .zip(k)
                .filter(|(c, &k)| c.costly && k >= i)
                .map(|(c, _)| if i == 1 { c.catch_up.max(1) } else { 1 })
                .sum();
            t += self.draft_cost(rows)?;
        }
        Some(t)
    }
}

/// Draft lengths for `cands`, given `base_rows` target rows the step runs anyway (decode rows,
/// prefill chunks) and at most `max_extra` drafted rows. `plain` sequences decode without a
/// candidate and count one token each.
pub(crate) fn plan(
    cands: &[Candidate],
    plain: usize,
    base_rows: usize,
    max_extra: usize,
    costs: &StepCosts,
) -> Vec<usize> {
    let mut k: Vec<usize> = cands.iter().map(|c| c.forced.unwrap_or(0)).collect();
    let mut extra: usize = k.iter().sum();
    let rate = |k: &[usize], extra: usize| -> Option<f64> {
        let tokens = plain as f64 + cands.iter().zip(k).map(|(c, &k)| c.tokens(k)).sum::<f64>();
        Some(tokens / costs.time(base_rows + extra, cands, k)?)
    };
    let Some(mut best) = rate(&k, extra) else {
        // Nothing measured yet: a middle length, as a lone request starts.
        for (ki, c) in k.iter_mut().zip(cands) {
            if c.forced.is_none() {
                *ki = c.max.min(4);
            }
        }
        return k;
    };
    loop {
        let mut step: Option<(usize, usize, f64)> = None;
        for (i, c) in cands.iter().enumerate() {
            if c.forced.is_some() {
                continue;
            }
            for nk in 0..=c.max {
                if nk == k[i] || extra - k[i] + nk > max_extra {
                    continue;
                }
                let old = std::mem::replace(&mut k[i], nk);
                let r = rate(&k, extra - old + nk);
                k[i] = old;
                // Rates compared as if a longer draft earned MARGIN less.
                let r = r.map(|r| if nk > old { r / (1.0 + MARGIN) } else { r });
                if let Some(r) = r {
                    if r > step.map_or(best, |s| s.2) {
                        step = Some((i, nk, r));
                    }
                }
            }
        }
        match step {
            Some((i, nk, _)) => {
                extra = extra - k[i] + nk;
                k[i] = nk;
                best = rate(&k, extra).unwrap_or(best);
            }
            _ => return k,
        }
    }
}

/// Acceptance per drafted position of a draft that nearly always agrees with the target (a
/// strong pair on code): the most a probe could find.
pub(crate) const OPTIMISTIC: f64 = 0.9;

/// Whether the plan would draft for `c` alone (its costs, catch-up and setup) at
/// [`OPTIMISTIC`] acceptance: where even that loses to plain decoding, a probe cannot find a
/// reason to draft.
pub(crate) fn could_pay(c: &Candidate, costs: &StepCosts) -> bool {
    let best_case = Candidate {
        alphas: vec![OPTIMISTIC; c.max],
        forced: None,
        ..c.clone()
    };
    plan(std::slice::from_ref(&best_case), 0, 1, c.max, costs)
        .first()
        .is_some_and(|&k| k > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Costs as measured on one machine: a Zen 4 with VNNI (a draft step 0.36 of the target's,
    /// 5 rows 1.33x one) makes a strong draft worth probing; a Zen 3 with AVX2 alone (0.75, 5
    /// rows 2x, 8 rows 2.8x: the figures) does not, so it steps aside without paying for
    /// probes.
    #[test]
    fn probes_only_where_a_strong_draft_could_pay() {
        let vnni_t = costs(
            &[(1, 0.0334), (2, 0.036), (3, 0.038), (5, 0.0445), (9, 0.062)],
            16,
        );
        let vnni_d = costs(&[(1, 0.0121), (2, 0.0135), (3, 0.015)], 16);
        let avx2_t = costs(
            &[(1, 0.068), (2, 0.085), (3, 0.1), (5, 0.137), (9, 0.192)],
            16,
        );
        let avx2_d = costs(&[(1, 0.050), (2, 0.055), (3, 0.060)], 16);
        let at = |t, d| StepCosts {
            target: t,
            draft: d,
            overhead: 0.0,
            draft_prior: 0.4,
        };
        let c = cand(OPTIMISTIC);
        assert!(could_pay(&c, &at(&vnni_t, &vnni_d)));
        assert!(!could_pay(&c, &at(&avx2_t, &avx2_d)));
        // Prompt lookup costs no draft forward: worth probing on either.
        let free = Candidate {
            costly: false,
            ..cand(OPTIMISTIC)
        };
        assert!(could_pay(&free, &at(&avx2_t, &avx2_d)));
        // A setup cost spread over the step (a warm-up) counts against it.
        let behind = Candidate {
            setup: 0.2,
            ..cand(OPTIMISTIC)
        };
        assert!(!could_pay(&behind, &at(&vnni_t, &vnni_d)));
    }

    fn costs(pairs: &[(usize, f64)], max: usize) -> PassCosts {
        let mut c = PassCosts::new(max);
        for &(n, t) in pairs {
            c.observe(n, t);
        }
        c
    }

    fn cand(alpha: f64) -> Candidate {
        Candidate {
            alphas: vec![alpha; 8],
            max: 8,
            costly: true,
            catch_up: 1,
            setup: 0.0,
            forced: None,
        }
    }

    #[test]
    fn speculation_pays_alone_and_turns_itself_off_in_a_busy_batch() {
        // The 1.5B target on this machine: memory bound at a few rows, about 9 ms a row at 8+
        // rows; the 0.5B draft about 20 ms a forward, rising with rows.
        let target = costs(
            &[
                (1, 0.040),
                (2, 0.042),
                (5, 0.055),
                (8, 0.072),
                (16, 0.140),
                (32, 0.280),
                (64, 0.56),
            ],
            128,
        );
        let draft = costs(&[(1, 0.020), (4, 0.024), (8, 0.036), (16, 0.07)], 128);
        let sc = StepCosts {
            target: &target,
            draft: &draft,
            overhead: 0.0,
            draft_prior: 0.4,
        };
        // Alone at α = 0.8: k = 1 emits 1.8 tokens in 42 + 20 ms (29.0/s), k = 2 2.44 in
        // 46.3 + 40 ms (28.3/s), plain decoding 25/s.
        let alone = plan(&[cand(0.8)], 0, 1, 64, &sc);
        assert_eq!(alone, vec![1], "one sequence with high acceptance drafts");
        // A cheaper draft step makes longer drafts pay: at 5 ms, k = 3 gives 2.95 tokens in
        // 50.7 + 15 ms (44.9/s) against k = 2's 2.44 in 56.3 ms (43.3/s).
        let cheap = costs(&[(1, 0.005), (8, 0.009)], 128);
        let sc2 = StepCosts {
            target: &target,
            draft: &cheap,
            overhead: 0.0,
            draft_prior: 0.4,
        };
        assert!(plan(&[cand(0.8)], 0, 1, 64, &sc2)[0] >= 3);
        let poor = plan(&[cand(0.2)], 0, 1, 64, &sc);
        assert_eq!(poor, vec![0], "low acceptance never pays for the draft");
        let busy: Vec<Candidate> = (0..8).map(|_| cand(0.6)).collect();
        let k = plan(&busy, 0, 8, 64, &sc);
        assert!(
            k.iter().all(|&k| k == 0),
            "eight rows are compute bound: {k:?}"
        );
        // Free drafts (prompt lookup) at α = 0.99: beside one other sequence, where rows are
        // nearly free, k = 4 takes the step from 2 tokens in 42 ms to 5.9 in 60.7 ms; in the
        // busy batch a drafted row costs about what the token it may yield is worth (9 rows:
        // 111.8 tokens/s, one more: 112.2), short of the margin.
        let mut free = cand(0.99);
        free.costly = false;
        let k = plan(&[free.clone()], 1, 2, 64, &sc);
        assert!(k[0] >= 4, "{k:?}");
        let mut mix = busy.clone();
        mix.push(free);
        let k = plan(&mix, 0, 9, 64, &sc);
        assert_eq!(k, vec![0; 9]);
        // The row cap holds.
        let many: Vec<Candidate> = (0..4).map(|_| cand(0.95)).collect();
        let k = plan(&many, 0, 4, 3, &sc);
        assert!(k.iter().sum::<usize>() <= 3, "{k:?}");
    }

    #[test]
    fn forced_lengths_are_kept_and_unmeasured_costs_start_in_the_middle() {
        let empty = PassCosts::new(64);
        let sc = StepCosts {
            target: &empty,
            draft: &empty,
            overhead: 0.0,
            draft_prior: 0.4,
        };
        let mut fixed = cand(0.1);
        fixed.forced = Some(6);
        assert_eq!(plan(&[cand(0.5), fixed], 0, 2, 64, &sc), vec![4, 6]);
    }

    /// Before any draft forward is measured, the draft is priced from the target's measured
    /// cost and the byte ratio: a good draft gets to run (and be measured), a bad one does not.
    #[test]
    fn an_unmeasured_draft_is_priced_from_the_target() {
        let target = costs(&[(1, 0.060), (2, 0.063), (4, 0.070), (8, 0.080)], 64);
        let empty = PassCosts::new(64);
        let sc = StepCosts {
            target: &target,
            draft: &empty,
            overhead: 0.0,
            draft_prior: 0.4,
        };
        assert_eq!(sc.draft_cost(1), Some(0.060 * 0.4));
        // α = 0.9: k = 1 emits 1.9 tokens in 63 + 24 ms (21.8/s) against plain 16.7/s.
        assert!(plan(&[cand(0.9)], 0, 1, 64, &sc)[0] >= 1);
        // α = 0.3: 1.3 tokens in 87 ms (14.9/s): plain decoding.
        assert_eq!(plan(&[cand(0.3)], 0, 1, 64, &sc), vec![0]);
        // A draft as dear as the target never pays.
        let dear = StepCosts {
            draft_prior: 1.0,
            ..sc
        };
        assert_eq!(plan(&[cand(0.7)], 0, 1, 64, &dear), vec![0]);
    }
}
