//! The verifier: a pure function of the target's distributions, the draft's distributions, the
//! drafted tokens and a random source. It is the only place that decides what is accepted.
//!
//! Rejection sampling (Leviathan et al., Chen et al.): the drafted token x at position i is kept
//! with probability min(1, p_i(x) / q_i(x)); at the first rejection the next token is drawn from
//! the normalised max(0, p_i − q_i); when every drafted token is kept, a bonus token is drawn from
//! p_k. The emitted tokens then follow p exactly. With greedy shaping p and q are point masses,
//! so this reduces to "keep while the drafted token is the target's argmax" without any draw.

use rand::Rng;

use crate::sampler::Distribution;

/// The draft's distribution at one drafted position.
#[derive(Debug, Clone, PartialEq)]
pub enum DraftProbs {
    /// The shaped distribution the draft sampled its token from.
    Dense(Distribution),
    /// A deterministic proposal (greedy draft, prompt lookup): all mass on the drafted token.
    Point,
}

impl DraftProbs {
    /// q(id) given that `drafted` was proposed at this position.
    pub fn prob(&self, drafted: u32, id: u32) -> f32 {
        match self {
            DraftProbs::Dense(d) => d.prob(id),
            DraftProbs::Point => (id == drafted) as u32 as f32,
        }
    }
}

/// Where the token after the accepted ones came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextKind {
    /// A drafted token was rejected; the target's residual chose this one instead.
    Correction,
    /// Every drafted token was accepted; the target adds one of its own.
    Bonus,
}

/// The outcome of verifying one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Drafted tokens kept, a prefix of the proposal.
    pub accepted: usize,
    /// The token emitted after them.
    pub next: u32,
    pub kind: NextKind,
}

/// Verifies `drafted` (k tokens, with the draft's `q` at each) against `p`: k + 1 target
/// distributions, `p[i]` being the target's distribution for the position of `drafted[i]` and
/// `p[k]` the one after the last drafted token.
///
/// # Panics
/// If `p.len() != drafted.len() + 1` or `q.len() != drafted.len()` (a caller bug, not input).
pub fn verify<R: Rng + ?Sized>(
    p: &[Distribution],
    q: &[DraftProbs],
    drafted: &[u32],
    rng: &mut R,
) -> Verdict {
    assert_eq!(
        p.len(),
        drafted.len() + 1,
        "one target distribution per position"
    );
    let k = drafted.len();
    if let Some(v) = verify_prefix(&p[..k], q, drafted, rng) {
        return v;
    }
    Verdict {
        accepted: k,
        next: sample(&p[k], rng),
        kind: NextKind::Bonus,
    }
}

/// The first part of [`verify`] for a stretch of drafted tokens with no position after them yet
/// (answer mode scores a long answer in chunks): `p[i]` is the target's distribution for the
/// position of `drafted[i]`. Returns the verdict at the first rejection, or `None` when every
/// token is kept (the caller verifies the rest, or draws the bonus, with the next rows). Spends
/// randomness exactly as [`verify`] does for the same positions, so a proposal verified in
/// stretches draws what it draws verified at once.
///
/// # Panics
/// If `p.len() != drafted.len()` or `q.len() != drafted.len()` (a caller bug, not input).
pub fn verify_prefix<R: Rng + ?Sized>(
    p: &[Distribution],
    q: &[DraftProbs],
    drafted: &[u32],
    rng: &mut R,
) -> Option<Verdict> {
    assert_eq!(p.len(), drafted.len(), "one target distribution per token");
    assert_eq!(
        q.len(),
        drafted.len(),
        "one draft distribution per drafted token"
    );
    for (i, (&x, qi)) in drafted.iter().zip(q).enumerate() {
        let px = p[i].prob(x);
        let qx = qi.prob(x, x);
        // p ≥ q keeps for certain and p = 0 rejects for certain: no draw is spent on either, so
        // greedy verification never touches the random source.
        let keep = if px >= qx {
            true
        } else if px <= 0.0 {
            false
        } else {
            rng.random::<f32>() * qx < px
        };
        if !keep {
            return Some(Verdict {
                accepted: i,
                next: sample_residual(&p[i], qi, x, rng),
                kind: NextKind::Correction,
            });
        }
    }
    None
}

/// A draw from `d`, without spending randomness on a point mass.
pub fn sample<R: Rng + ?Sized>(d: &Distribution, rng: &mut R) -> u32 {
    let mut support = d.support();
    if let (Some((only, _)), None) = (support.next(), support.next()) {
        return only;
    }
    d.quantile(rng.random::<f32>())
}

/// A draw from the normalised max(0, p − q) after `drafted` was rejected.
fn sample_residual<R: Rng + ?Sized>(
    p: &Distribution,
    q: &DraftProbs,
    drafted: u32,
    rng: &mut R,
) -> u32 {
    if let Distribution::Point(id) = p {
        // p's whole mass is on one id: the residual's support is that id or empty (then p).
        return *id;
    }
    // The residual is zero wherever p is: only p's support is visited (in id order).
    let residual = |(id, pv): (u32, f32)| (id, (pv - q.prob(drafted, id)).max(0.0));
    let (mut total, mut support, mut only) = (0f64, 0usize, 0u32);
    for (id, r) in p.support().map(residual) {
        if r > 0.0 {
            total += r as f64;
            support += 1;
            only = id;
        }
    }
    if support == 0 {
        // p ≤ q everywhere yet x was rejected: only float rounding gets here. p itself is the
        // right fallback (the residual is p's mass that q does not cover, here none).
        return sample(p, rng);
    }
    if support == 1 {
        return only;
    }
    let u = rng.random::<f64>() * total;
    let mut cum = 0f64;
    for (id, r) in p.support().map(residual) {
        if r > 0.0 {
            cum += r as f64;
            only = id;
            if u < cum {
                return id;
            }
        }
    }
    only
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn dist(p: &[f32]) -> Distribution {
        Distribution::dense(p.to_vec())
    }

    fn point(n: usize, id: usize) -> Distribution {
        let mut p = vec![0.0; n];
        p[id] = 1.0;
        dist(&p)
    }

    /// Answer mode verifies a long answer in stretches: the verdict (and every draw) equals
    /// verifying it at once, for every way of cutting it, on sampled distributions.
    #[test]
    fn verifying_in_stretches_is_verifying_at_once() {
        let mut gen = ChaCha8Rng::seed_from_u64(11);
        for trial in 0..300u64 {
            let n = 1 + (trial as usize % 9);
            let row = |g: &mut ChaCha8Rng| {
                let v: Vec<f32> = (0..6).map(|_| g.random::<f32>() + 0.01).collect();
                let s: f32 = v.iter().sum();
                dist(&v.iter().map(|x| x / s).collect::<Vec<_>>())
            };
            let p: Vec<Distribution> = (0..=n).map(|_| row(&mut gen)).collect();
            let q: Vec<DraftProbs> = (0..n).map(|_| DraftProbs::Dense(row(&mut gen))).collect();
            let drafted: Vec<u32> = (0..n).map(|_| gen.random_range(0..6)).collect();
            let whole = verify(&p, &q, &drafted, &mut ChaCha8Rng::seed_from_u64(trial));
            let cut = 1 + (trial as usize * 7) % n;
            let mut rng = ChaCha8Rng::seed_from_u64(trial);
            let v = match verify_prefix(&p[..cut], &q[..cut], &drafted[..cut], &mut rng) {
                Some(v) => v,
                None => {
                    let rest = verify(&p[cut..], &q[cut..], &drafted[cut..], &mut rng);
                    Verdict {
                        accepted: cut + rest.accepted,
                        ..rest
                    }
                }
            };
            assert_eq!(v, whole, "trial {trial}, cut {cut} of {n}");
        }
    }

    #[test]
    fn greedy_keeps_while_the_draft_matches_the_argmax() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let p = [point(5, 1), point(5, 2), point(5, 3), point(5, 4)];
        let q = vec![DraftProbs::Point; 3];
        let all = verify(&p, &q, &[1, 2, 3], &mut rng);
        assert_eq!(
            all,
            Verdict {
                accepted: 3,
                next: 4,
                kind: NextKind::Bonus
            }
        );
        let second_wrong = verify(&p, &q, &[1, 0, 3], &mut rng);
        assert_eq!(
            second_wrong,
            Verdict {
                accepted: 1,
                next: 2,
                kind: NextKind::Correction
            }
        );
        let none = verify(&p[..1], &[], &[], &mut rng);
        assert_eq!(none.next, 1);
        assert_eq!(none.kind, NextKind::Bonus);
        // Greedy verification spends no randomness.
        let mut fresh = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(rng.random::<u64>(), fresh.random::<u64>());
    }

    #[test]
    fn residual_excludes_what_the_draft_covered() {
        // p = (0.5, 0.5, 0), q = (0, 1, 0) at the drafted token 1: p(1)/q(1) = 0.5. On rejection
        // the residual max(0, p − q) = (0.5, 0, 0) can only give 0.
        let p = [dist(&[0.5, 0.5, 0.0]), point(3, 2)];
        let q = [DraftProbs::Dense(dist(&[0.0, 1.0, 0.0]))];
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (mut kept, mut corrected_to_0) = (0, 0);
        for _ in 0..20_000 {
            let v = verify(&p, &q, &[1], &mut rng);
            match v.kind {
                NextKind::Bonus => {
                    kept += 1;
                    assert_eq!(v.next, 2);
                }
                NextKind::Correction => {
                    assert_eq!(v.next, 0);
                    corrected_to_0 += 1;
                }
            }
        }
        let rate = kept as f64 / 20_000.0;
        assert!((rate - 0.5).abs() < 0.02, "{rate}");
        assert_eq!(kept + corrected_to_0, 20_000);
    }

    #[test]
    fn point_proposals_follow_the_target() {
        // A lookup proposal (point mass) of token 0 against p = (0.2, 0.3, 0.5): the first emitted
        // token must still be distributed as p.
        let p = [dist(&[0.2, 0.3, 0.5]), dist(&[1.0, 0.0, 0.0])];
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut counts = [0usize; 3];
        let n = 60_000;
        for _ in 0..n {
            let v = verify(&p, &[DraftProbs::Point], &[0], &mut rng);
            let first = if v.accepted == 1 { 0 } else { v.next };
            counts[first as usize] += 1;
        }
        for (c, e) in counts.iter().zip([0.2, 0.3, 0.5]) {
            assert!((*c as f64 / n as f64 - e).abs() < 0.01, "{counts:?}");
        }
    }

    /// Targets and drafts held sparsely (rows reduced to their top k) give the verdicts, and
    /// consume the random source, exactly as the same distributions held densely, in rounds that
    /// end at the first drafted position, the second, and later.
    #[test]
    fn sparse_distributions_verify_as_their_dense_form() {
        let n = 12;
        let mut r = ChaCha8Rng::seed_from_u64(8);
        let mut random_dist = |support: usize| {
            let mut p = vec![0f32; n];
            for _ in 0..support {
                p[r.random_range(0..n)] += r.random::<f32>() + 0.05;
            }
            let s: f32 = p.iter().sum();
            p.iter_mut().for_each(|x| *x /= s);
            p
        };
        let sparse = |p: &[f32]| {
            Distribution::Sparse(
                p.iter()
                    .enumerate()
                    .filter(|(_, &x)| x > 0.0)
                    .map(|(i, &x)| (i as u32, x))
                    .collect(),
            )
        };
        let mut outcomes = [0usize; 3];
        for trial in 0..300u64 {
            let mut ps: Vec<Vec<f32>> = (0..4).map(|_| random_dist(4)).collect();
            let qs: Vec<Vec<f32>> = (0..3).map(|_| random_dist(3)).collect();
            if trial % 3 == 0 {
                // The target agrees with the draft at the first two positions: deeper rounds.
                ps[..2].clone_from_slice(&qs[..2]);
            }
            let drafted: Vec<u32> = qs.iter().map(|q| dist(q).argmax()).collect();
            let run = |p: Vec<Distribution>, q: Vec<DraftProbs>| {
                let mut rng = ChaCha8Rng::seed_from_u64(trial);
                let v = verify(&p, &q, &drafted, &mut rng);
                (v, rng.random::<u64>())
            };
            let dense = run(
                ps.iter().map(|p| dist(p)).collect(),
                qs.iter().map(|q| DraftProbs::Dense(dist(q))).collect(),
            );
            let held = run(
                ps.iter().map(|p| sparse(p)).collect(),
                qs.iter().map(|q| DraftProbs::Dense(sparse(q))).collect(),
            );
            assert_eq!(dense, held, "trial {trial}");
            outcomes[dense.0.accepted.min(2)] += 1;
        }
        assert!(outcomes.iter().all(|&c| c > 10), "{outcomes:?}");
    }

    /// Targets held as points (greedy rows reduced to their argmax) give the verdicts, and
    /// consume the random source, exactly as the same points held densely, against point and
    /// dense drafts, through acceptance, correction and bonus.
    #[test]
    fn point_targets_verify_as_their_dense_form() {
        let n = 6;
        let drafts = [
            (vec![DraftProbs::Point; 3], [2u32, 4, 1]),
            (
                vec![
                    DraftProbs::Dense(dist(&[0.1, 0.1, 0.5, 0.1, 0.1, 0.1])),
                    DraftProbs::Dense(dist(&[0.0, 0.0, 0.0, 0.0, 0.9, 0.1])),
                    DraftProbs::Point,
                ],
                [2, 4, 3],
            ),
        ];
        for targets in [[2u32, 4, 1, 5], [2, 4, 0, 5], [3, 4, 1, 5], [2, 5, 1, 0]] {
            let sparse: Vec<Distribution> =
                targets.iter().map(|&t| Distribution::point(t)).collect();
            let dense: Vec<Distribution> = targets.iter().map(|&t| point(n, t as usize)).collect();
            for (q, drafted) in &drafts {
                let (mut r1, mut r2) = (ChaCha8Rng::seed_from_u64(3), ChaCha8Rng::seed_from_u64(3));
                let a = verify(&sparse, q, drafted, &mut r1);
                let b = verify(&dense, q, drafted, &mut r2);
                assert_eq!(a, b, "targets {targets:?}, drafted {drafted:?}");
                assert_eq!(
                    r1.random::<u64>(),
                    r2.random::<u64>(),
                    "randomness used alike"
                );
            }
        }
        let p = Distribution::point(4);
        assert_eq!(
            (p.argmax(), p.prob(4), p.prob(3), p.quantile(0.99)),
            (4, 1.0, 0.0, 4)
        );
        assert_eq!(sample(&p, &mut ChaCha8Rng::seed_from_u64(1)), 4);
    }
}
