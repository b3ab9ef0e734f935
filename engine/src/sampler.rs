//! Sampling: greedy, temperature, top-k and top-p, seeded and reproducible. The sampler hands
//! back the distribution it sampled from, not just the token, because verification needs it.
//!
//! Order of shaping (as in Hugging Face and vLLM): mask invalid ids, divide by the temperature,
//! keep the top k, then the smallest set whose probability reaches top-p.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1 means no top-p cut.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams::greedy()
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    /// Temperature 1, no cuts: the model's own distribution (what cascade rules judge under
    /// greedy decoding).
    pub fn untempered() -> Self {
        SamplingParams {
            temperature: 1.0,
            ..SamplingParams::greedy()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(EngineError::InvalidParam {
                name: "temperature",
                reason: format!("{} must be a finite number ≥ 0", self.temperature),
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(EngineError::InvalidParam {
                name: "top-p",
                reason: format!("{} must be in (0, 1]", self.top_p),
            });
        }
        Ok(())
    }
}

/// A probability distribution over the (padded) vocabulary; zero outside its support.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    /// The probability of each id (empty for a point mass).
    pub probs: Vec<f32>,
    /// All the mass on this id, held without a vocabulary-sized vector (`probs` is then empty):
    /// a greedy choice. Read through the methods, which treat both forms alike.
    pub point: Option<u32>,
}

impl Distribution {
    /// Shapes `logits` by `params`; ids with `valid[id] == false` get probability 0.
    pub fn from_logits(logits: &[f32], params: &SamplingParams, valid: &[bool]) -> Distribution {
        let n = logits.len();
        let is_valid = |i: usize| valid.get(i).copied().unwrap_or(false);
        if params.is_greedy() {
            return match argmax_valid(logits, valid) {
                Some(best) => Distribution::point(best),
                None => Distribution::dense(vec![0f32; n]),
            };
        }
        let mut probs = vec![0f32; n];
        let inv_t = 1.0 / params.temperature;
        let max = (0..n)
            .filter(|&i| is_valid(i))
            .map(|i| logits[i] * inv_t)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f64;
        for i in 0..n {
            if is_valid(i) {
                let p = ((logits[i] * inv_t - max) as f64).exp();
                probs[i] = p as f32;
                sum += p;
            }
        }
        if sum == 0.0 || !sum.is_finite() {
            return Distribution::dense(probs);
        }
        let inv = (1.0 / sum) as f32;
        probs.iter_mut().for_each(|p| *p *= inv);
        let cut_k = params.top_k > 0 && params.top_k < n;
        if cut_k || params.top_p < 1.0 {
            let keep = kept_candidates(&probs, params);
            let mut kept = vec![0f32; n];
            let mut s = 0f32;
            for &id in &keep {
                kept[id as usize] = probs[id as usize];
                s += probs[id as usize];
            }
            let inv = 1.0 / s;
            kept.iter_mut().for_each(|p| *p *= inv);
            probs = kept;
        }
        Distribution::dense(probs)
    }

    /// Probabilities of each id.
    pub fn dense(probs: Vec<f32>) -> Distribution {
        Distribution { probs, point: None }
    }

    /// All mass on `id` (a greedy choice): no vocabulary-sized vector is made, so a greedy
    /// verification of k tokens costs k comparisons, not k passes over the vocabulary.
    pub fn point(id: u32) -> Distribution {
        Distribution {
            probs: Vec::new(),
            point: Some(id),
        }
    }

    /// The largest probability.
    pub fn max_prob(&self) -> f32 {
        match self.point {
            Some(_) => 1.0,
            None => self.probs.iter().copied().fold(0.0, f32::max),
        }
    }

    /// The ids with a nonzero probability, and those probabilities, in id order.
    pub fn support(&self) -> Box<dyn Iterator<Item = (u32, f32)> + '_> {
        match self.point {
            Some(id) => Box::new(std::iter::once((id, 1.0))),
            None => Box::new(
                self.probs
                    .iter()
                    .enumerate()
                    .filter(|(_, &p)| p > 0.0)
                    .map(|(i, &p)| (i as u32, p)),
            ),
        }
    }

    /// The most probable id (lowest id on ties).
    pub fn argmax(&self) -> u32 {
        if let Some(id) = self.point {
            return id;
        }
        let mut best = 0;
        for (i, &p) in self.probs.iter().enumerate() {
            if p > self.probs[best] {
                best = i;
            }
        }
        best as u32
    }

    pub fn prob(&self, id: u32) -> f32 {
        match self.point {
            Some(p) => (p == id) as u32 as f32,
            None => self.probs.get(id as usize).copied().unwrap_or(0.0),
        }
    }

    /// The id at which the cumulative probability first exceeds `u` in [0, 1).
    pub fn quantile(&self, u: f32) -> u32 {
        if let Some(id) = self.point {
            return id;
        }
        let mut cum = 0f32;
        let mut last = 0;
        for (i, &p) in self.probs.iter().enumerate() {
            if p > 0.0 {
                cum += p;
                last = i;
                if u < cum {
                    return i as u32;
                }
            }
        }
        last as u32
    }
}

/// The ids top-k and top-p keep: candidates by descending probability (ties by id), the first
/// `top_k`, then the shortest prefix whose probability reaches `top_p`. Only as many candidates
/// as needed are sorted (a selection finds the largest 64, then 256, ...), since a full sort of a
/// 150k-token vocabulary per position would cost more than the sampling is worth; the result is
/// the same prefix a full sort gives.
fn kept_candidates(probs: &[f32], params: &SamplingParams) -> Vec<u32> {
    let mut order: Vec<u32> = (0..probs.len() as u32)
        .filter(|&i| probs[i as usize] > 0.0)
        .collect();
    let by_prob = |a: &u32, b: &u32| {
        probs[*b as usize]
            .total_cmp(&probs[*a as usize])
            .then(a.cmp(b))
    };
    let limit = if params.top_k > 0 {
        params.top_k.min(order.len())
    } else {
        order.len()
    };
    let mut m = 64.min(limit);
    loop {
        if m < order.len() {
            order.select_nth_unstable_by(m - 1, by_prob);
        }
        order[..m].sort_by(by_prob);
        let mut keep = m;
        let mut reached = params.top_p >= 1.0 && m == limit;
        if params.top_p < 1.0 {
            let mut cum = 0f32;
            for (i, &id) in order[..m].iter().enumerate() {
                cum += probs[id as usize];
                if cum >= params.top_p {
                    keep = i + 1;
                    reached = true;
                    break;
                }
            }
        }
        if reached || m == limit {
            order.truncate(keep);
            return order;
        }
        m = (m * 4).min(limit);
    }
}

/// The valid id with the largest logit (lowest id on ties; NaN never chosen, as on the device).
pub fn argmax_valid(logits: &[f32], valid: &[bool]) -> Option<u32> {
    let mut best: Option<usize> = None;
    for (i, &l) in logits.iter().enumerate() {
        let ok = valid.get(i).copied().unwrap_or(false) && !l.is_nan();
        if ok && best.is_none_or(|b| l > logits[b]) {
            best = Some(i);
        }
    }
    best.map(|b| b as u32)
}

/// A seeded sampler.
#[derive(Debug, Clone)]
pub struct Sampler {
    pub params: SamplingParams,
    rng: ChaCha8Rng,
}

/// One sampled token and the distribution it was drawn from.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub token: u32,
    pub dist: Distribution,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        Sampler {
            params,
            rng: ChaCha8Rng::seed_from_u64(params.seed),
        }
    }

    /// The random source (verification draws from it too, so one seed fixes a whole request).
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// A uniform draw in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        self.rng.random::<f32>()
    }

    pub fn sample(&mut self, logits: &[f32], valid: &[bool]) -> Sampled {
        let dist = Distribution::from_logits(logits, &self.params, valid);
        let token = if self.params.is_greedy() {
            dist.argmax()
        } else {
            let u = self.uniform();
            dist.quantile(u)
        };
        Sampled { token, dist }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32, k: usize, p: f32) -> SamplingParams {
        SamplingParams {
            temperature: t,
            top_k: k,
            top_p: p,
            seed: 1,
        }
    }

    #[test]
    fn greedy_skips_invalid_ids() {
        let logits = [1.0, 5.0, 3.0, 3.0];
        let valid = [true, false, true, true];
        let s = Sampler::new(SamplingParams::greedy()).sample(&logits, &valid);
        assert_eq!(s.token, 2);
        assert_eq!(s.dist.prob(2), 1.0);
    }

    #[test]
    fn temperature_top_k_top_p_shape_the_distribution() {
        let logits = [2.0, 1.0, 0.0, -1.0];
        let valid = [true; 4];
        let d = Distribution::from_logits(&logits, &params(1.0, 0, 1.0), &valid);
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        for (p, l) in d.probs.iter().zip(logits) {
            assert!((p - l.exp() / z).abs() < 1e-6);
        }
        let k2 = Distribution::from_logits(&logits, &params(1.0, 2, 1.0), &valid);
        assert!(k2.probs[2] == 0.0 && k2.probs[3] == 0.0);
        assert!((k2.probs[0] + k2.probs[1] - 1.0).abs() < 1e-6);
        // Probabilities 0.644, 0.237, 0.087, 0.032 (cumulative 0.644, 0.881, 0.968): top-p 0.5
        // keeps one token, 0.85 keeps two, 0.9 keeps three.
        let p5 = Distribution::from_logits(&logits, &params(1.0, 0, 0.5), &valid);
        assert_eq!(p5.probs[0], 1.0);
        let p85 = Distribution::from_logits(&logits, &params(1.0, 0, 0.85), &valid);
        assert!(p85.probs[1] > 0.0 && p85.probs[2] == 0.0);
        let p9 = Distribution::from_logits(&logits, &params(1.0, 0, 0.9), &valid);
        assert!(p9.probs[2] > 0.0 && p9.probs[3] == 0.0);
        assert!((p9.probs[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_follows_probabilities() {
        let logits = [0.0, (3.0f32).ln()];
        let valid = [true; 2];
        let mut a = Sampler::new(params(1.0, 0, 1.0));
        let mut b = Sampler::new(params(1.0, 0, 1.0));
        let xs: Vec<u32> = (0..4000).map(|_| a.sample(&logits, &valid).token).collect();
        let ys: Vec<u32> = (0..4000).map(|_| b.sample(&logits, &valid).token).collect();
        assert_eq!(xs, ys);
        let ones = xs.iter().filter(|&&t| t == 1).count() as f64 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
    }

    #[test]
    fn partial_selection_keeps_what_a_full_sort_keeps() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for trial in 0..40 {
            let n = [10, 300, 5000][trial % 3];
            // Peaked or flat logits, with ties.
            let scale = [0.5f32, 3.0, 8.0][trial % 3];
            let logits: Vec<f32> = (0..n)
                .map(|_| (rng.random::<f32>() * scale * 4.0).round() / 4.0)
                .collect();
            let valid = vec![true; n];
            for (k, p) in [
                (0, 0.9),
                (0, 0.5),
                (40, 1.0),
                (40, 0.95),
                (1000, 0.99),
                (0, 0.999),
            ] {
                let params = SamplingParams {
                    temperature: 0.8,
                    top_k: k,
                    top_p: p,
                    seed: 0,
                };
                let base = Distribution::from_logits(
                    &logits,
                    &SamplingParams {
                        top_k: 0,
                        top_p: 1.0,
                        ..params
                    },
                    &valid,
                );
                // Reference: full sort by probability, ties by id.
                let mut order: Vec<u32> = (0..n as u32)
                    .filter(|&i| base.probs[i as usize] > 0.0)
                    .collect();
                order.sort_by(|&a, &b| {
                    base.probs[b as usize]
                        .total_cmp(&base.probs[a as usize])
                        .then(a.cmp(&b))
                });
                let mut keep = if k > 0 {
                    k.min(order.len())
                } else {
                    order.len()
                };
                if p < 1.0 {
                    let mut cum = 0f32;
                    for (i, &id) in order[..keep].iter().enumerate() {
                        cum += base.probs[id as usize];
                        if cum >= p {
                            keep = i + 1;
                            break;
                        }
                    }
                }
                let mut want = order[..keep].to_vec();
                want.sort_unstable();
                let got = Distribution::from_logits(&logits, &params, &valid);
                let support: Vec<u32> = (0..n as u32)
                    .filter(|&i| got.probs[i as usize] > 0.0)
                    .collect();
                assert_eq!(support, want, "n {n}, top-k {k}, top-p {p}");
            }
        }
    }

    #[test]
    fn bad_params_are_rejected() {
        assert!(params(-1.0, 0, 1.0).validate().is_err());
        assert!(params(1.0, 0, 0.0).validate().is_err());
        assert!(params(f32::NAN, 0, 1.0).validate().is_err());
    }
}
