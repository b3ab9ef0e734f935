//! Deferral rules of speculative cascades (Narasimhan et al., "Faster Cascades via Speculative
//! Decoding"). At each drafted position a rule turns the draft's q and the target's p into a
//! target distribution π; the verifier then accepts against π exactly as it accepts against p in
//! exact mode. π = p (defer) gives exact speculative decoding at that position; π = q (do not
//! defer) keeps the draft's token whatever the target thinks.
//!
//! - Chow: defer unless max q ≥ 1 − α.
//! - Diff: defer unless max q ≥ max p − α.
//! - OPT: defer unless max q ≥ max p − α·TV(p, q).
//! - Token-specific: token v is acceptable when p(v) ≥ (1 − α)·max p;
//!   π(v) = q(v)·[v acceptable] + (1 − Σ_acceptable q)·p(v).
//!
//! α = 0 is exact mode for every rule (it is checked before any rule runs): Diff and OPT would
//! otherwise keep a draft that is more confident than the target, and token-specific would
//! reweight p.

use crate::error::{EngineError, Result};
use crate::sampler::Distribution;

/// A deferral rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Chow,
    Diff,
    Opt,
    Token,
}

impl Rule {
    pub const ALL: [Rule; 4] = [Rule::Chow, Rule::Diff, Rule::Opt, Rule::Token];

    pub fn name(&self) -> &'static str {
        match self {
            Rule::Chow => "chow",
            Rule::Diff => "diff",
            Rule::Opt => "opt",
            Rule::Token => "token",
        }
    }
}

/// A rule and its lenience α in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cascade {
    pub rule: Rule,
    pub alpha: f32,
}

impl Cascade {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(EngineError::InvalidParam {
                name: "alpha",
                reason: format!("{} must be in [0, 1]", self.alpha),
            });
        }
        Ok(())
    }

    /// Whether this is exact mode in disguise (α = 0).
    pub fn is_exact(&self) -> bool {
        self.alpha == 0.0
    }

    /// Whether the rule keeps the draft at a position without consulting the target's choice:
    /// for Chow/Diff/OPT, "does not defer"; for token-specific, "`token` is acceptable".
    pub fn keeps(&self, p: &Distribution, q: &Distribution, token: u32) -> bool {
        !self.is_exact() && self.rule_keeps(p, q, token)
    }

    /// The rule's own test, without the α = 0 short cut (at α = 0 Chow still keeps a certain
    /// draft, Diff and OPT one at least as confident as the target, token-specific the target's
    /// argmax: exactness at α = 0 is the short cut's doing, tested apart).
    fn rule_keeps(&self, p: &Distribution, q: &Distribution, token: u32) -> bool {
        let a = self.alpha;
        let (max_p, max_q) = (max(p), max(q));
        match self.rule {
            Rule::Chow => max_q >= 1.0 - a,
            Rule::Diff => max_q >= max_p - a,
            Rule::Opt => max_q >= max_p - a * total_variation(p, q),
            Rule::Token => p.prob(token) >= (1.0 - a) * max_p,
        }
    }

    /// π at one position, from the distributions the rule judges on (`p`, `q`) and the ones
    /// sampling uses (`p_s`, `q_s`; the same unless decoding is greedy).
    pub fn target(&self, p: &Distribution, q: &Distribution) -> Distribution {
        if self.is_exact() {
            return p.clone();
        }
        match self.rule {
            Rule::Chow | Rule::Diff | Rule::Opt => {
                // The deferral does not depend on the token: π is q or p.
                if self.keeps(p, q, 0) {
                    q.clone()
                } else {
                    p.clone()
                }
            }
            Rule::Token => {
                let max_p = max(p);
                let floor = (1.0 - self.alpha) * max_p;
                let n = p.span().max(q.span());
                let ok = |v: usize| p.prob(v as u32) >= floor;
                let kept: f32 = q
                    .support()
                    .filter(|&(v, _)| ok(v as usize))
                    .map(|(_, qv)| qv)
                    .sum();
                let rest = (1.0 - kept).max(0.0);
                let probs = (0..n)
                    .map(|v| {
                        let qv = if ok(v) { q.prob(v as u32) } else { 0.0 };
                        qv + rest * p.prob(v as u32)
                    })
                    .collect();
                Distribution::dense(probs)
            }
        }
    }
}

fn max(d: &Distribution) -> f32 {
    d.max_prob()
}

/// Total variation distance ½·Σ|p − q|.
pub fn total_variation(p: &Distribution, q: &Distribution) -> f32 {
    let n = p.span().max(q.span());
    let at = |d: &Distribution, i: usize| d.prob(i as u32);
    0.5 * (0..n).map(|i| (at(p, i) - at(q, i)).abs()).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(p: &[f32]) -> Distribution {
        Distribution::dense(p.to_vec())
    }

    fn c(rule: Rule, alpha: f32) -> Cascade {
        Cascade { rule, alpha }
    }

    #[test]
    fn chow_keeps_a_confident_draft() {
        let p = d(&[0.1, 0.9, 0.0]);
        let q = d(&[0.8, 0.2, 0.0]);
        // max q = 0.8: kept when 0.8 ≥ 1 − α, i.e. α ≥ 0.2.
        assert!(!c(Rule::Chow, 0.19).keeps(&p, &q, 0));
        assert!(c(Rule::Chow, 0.2).keeps(&p, &q, 0));
        assert_eq!(c(Rule::Chow, 0.2).target(&p, &q), q);
        assert_eq!(c(Rule::Chow, 0.1).target(&p, &q), p);
    }

    #[test]
    fn diff_compares_confidences() {
        let p = d(&[0.1, 0.9]);
        let q = d(&[0.7, 0.3]);
        // max q = 0.7 ≥ 0.9 − α from α = 0.2 on.
        assert!(!c(Rule::Diff, 0.15).keeps(&p, &q, 0));
        assert!(c(Rule::Diff, 0.25).keeps(&p, &q, 0));
        // A draft more confident than the target is kept at any α > 0 ...
        let sure = d(&[0.95, 0.05]);
        assert!(c(Rule::Diff, 0.01).keeps(&p, &sure, 0));
        // ... but α = 0 is exact mode.
        assert!(!c(Rule::Diff, 0.0).keeps(&p, &sure, 0));
        assert_eq!(c(Rule::Diff, 0.0).target(&p, &sure), p);
    }

    #[test]
    fn opt_scales_the_margin_by_the_distance() {
        let p = d(&[0.1, 0.9]);
        let q = d(&[0.7, 0.3]);
        let tv = total_variation(&p, &q);
        assert!((tv - 0.6).abs() < 1e-6);
        // Kept when 0.7 ≥ 0.9 − 0.6 α, i.e. α ≥ 1/3.
        assert!(!c(Rule::Opt, 0.3).keeps(&p, &q, 0));
        assert!(c(Rule::Opt, 0.34).keeps(&p, &q, 0));
        // Identical distributions: TV = 0, kept as soon as max q ≥ max p.
        assert!(c(Rule::Opt, 0.01).keeps(&p, &p, 1));
    }

    #[test]
    fn token_rule_accepts_tokens_near_the_top_and_mixes() {
        let p = d(&[0.5, 0.3, 0.2]);
        let q = d(&[0.2, 0.2, 0.6]);
        // α = 0.5: acceptable where p(v) ≥ 0.25, tokens 0 and 1.
        let r = c(Rule::Token, 0.5);
        assert!(r.keeps(&p, &q, 0) && r.keeps(&p, &q, 1) && !r.keeps(&p, &q, 2));
        let pi = r.target(&p, &q);
        // π = q on {0, 1} plus (1 − 0.4)·p.
        let want = [0.2 + 0.6 * 0.5, 0.2 + 0.6 * 0.3, 0.6 * 0.2];
        let probs = pi.to_dense(3);
        for (a, b) in probs.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{probs:?}");
        }
        assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // α = 1 accepts every token: π = q.
        assert_eq!(c(Rule::Token, 1.0).target(&p, &q), q);
    }

    #[test]
    fn each_rule_at_alpha_zero_and_small_alpha() {
        // The formulas themselves, worked by hand. p prefers token 1; q is unsure and prefers 0.
        let p = d(&[0.2, 0.8]);
        let unsure = d(&[0.6, 0.4]);
        let certain = d(&[1.0, 0.0]);
        let keeps = |rule, a: f32, q: &Distribution, t| c(rule, a).rule_keeps(&p, q, t);
        // Chow: max q ≥ 1 − α. At 0 only a certain draft; at 0.001 still only it (0.6 < 0.999).
        assert!(keeps(Rule::Chow, 0.0, &certain, 0) && !keeps(Rule::Chow, 0.0, &unsure, 0));
        assert!(!keeps(Rule::Chow, 0.001, &unsure, 0));
        assert!(keeps(Rule::Chow, 0.4, &unsure, 0), "0.6 ≥ 0.6");
        // Diff: max q ≥ max p − α: 0.6 ≥ 0.8 − α holds from α = 0.2 on.
        assert!(!keeps(Rule::Diff, 0.0, &unsure, 0) && !keeps(Rule::Diff, 0.19, &unsure, 0));
        assert!(keeps(Rule::Diff, 0.21, &unsure, 0) && keeps(Rule::Diff, 0.0, &certain, 0));
        // OPT: max q ≥ max p − α·TV(p, q), TV = 0.4 here: from α = 0.5 on.
        assert!(!keeps(Rule::Opt, 0.0, &unsure, 0) && !keeps(Rule::Opt, 0.49, &unsure, 0));
        assert!(keeps(Rule::Opt, 0.51, &unsure, 0));
        // Token: p(v) ≥ (1 − α)·max p: at 0 only p's argmax; token 0 (0.2) from α = 0.75 on.
        assert!(keeps(Rule::Token, 0.0, &unsure, 1) && !keeps(Rule::Token, 0.0, &unsure, 0));
        assert!(!keeps(Rule::Token, 0.74, &unsure, 0) && keeps(Rule::Token, 0.76, &unsure, 0));
        // The public test is the formula for α > 0 and never keeps at α = 0.
        for rule in Rule::ALL {
            for a in [0.001f32, 0.3, 0.9] {
                for t in [0, 1] {
                    let cc = c(rule, a);
                    assert_eq!(cc.keeps(&p, &unsure, t), cc.rule_keeps(&p, &unsure, t));
                }
            }
            assert!(!c(rule, 0.0).keeps(&p, &certain, 1));
        }
    }

    #[test]
    fn alpha_zero_is_exact_for_every_rule_and_bad_alpha_is_an_error() {
        let p = d(&[0.2, 0.8]);
        let q = d(&[1.0, 0.0]);
        for rule in Rule::ALL {
            assert_eq!(c(rule, 0.0).target(&p, &q), p, "{rule:?}");
            assert!(!c(rule, 0.0).keeps(&p, &q, 0));
            assert!(c(rule, -0.1).validate().is_err());
            assert!(c(rule, 1.5).validate().is_err());
            assert!(c(rule, f32::NAN).validate().is_err());
            assert!(c(rule, 1.0).validate().is_ok());
        }
    }
}
