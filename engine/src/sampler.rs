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

/// A probability distribution over the (padded) vocabulary; zero outside its support. Read
/// through the methods, which treat every form alike.
#[derive(Debug, Clone, PartialEq)]
pub enum Distribution {
    /// The probability of each id.
    Dense(Vec<f32>),
    /// All the mass on this id, without a vocabulary-sized vector: a greedy choice.
    Point(u32),
    /// The ids with a nonzero probability and their probabilities, in id order: a top-k cut, made
    /// from the k candidates alone (a device reduces a row to them, so no vocabulary-sized vector
    /// crosses to the host or is made here).
    Sparse(Vec<(u32, f32)>),
}

/// The id of a candidate entry past a row's valid ids (a device's top-k pads with it).
pub const NO_CANDIDATE: u32 = u32::MAX;

impl Distribution {
    /// Shapes `logits` by `params`; ids with `valid[id] == false` get probability 0. With a top-k
    /// cut, the distribution is made from the k candidates ([`top_candidates`]) alone, exactly as
    /// [`Distribution::from_candidates`] makes it from a device's reduction of the row.
    pub fn from_logits(logits: &[f32], params: &SamplingParams, valid: &[bool]) -> Distribution {
        let n = logits.len();
        if params.is_greedy() {
            return match argmax_valid(logits, valid) {
                Some(best) => Distribution::point(best),
                None => Distribution::dense(vec![0f32; n]),
            };
        }
        if params.top_k > 0 && params.top_k < n {
            // (A cut at or past the vocabulary is no cut: the whole row below.)
            let cands = top_candidates(logits, valid, params.top_k);
            return Distribution::from_candidates(&cands, params, valid);
        }
        let inv_t = 1.0 / params.temperature;
        let Some(mut probs) = dense_softmax(logits, valid, inv_t) else {
            return Distribution::dense(vec![0f32; n]);
        };
        if params.top_p < 1.0 {
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

    /// Shapes a row's top candidates by `params` (temperature, the first `top_k` of them, then the
    /// shortest prefix whose probability reaches `top_p`, as Hugging Face, vLLM and llama.cpp
    /// order the cuts). `cands` are (id, logit) by descending logit, lowest id on ties, as
    /// [`top_candidates`] and a device's top-k give them; entries with [`NO_CANDIDATE`], an id
    /// not valid, or a NaN logit are left out.
    pub fn from_candidates(
        cands: &[(u32, f32)],
        params: &SamplingParams,
        valid: &[bool],
    ) -> Distribution {
        let k = if params.top_k > 0 {
            params.top_k
        } else {
            usize::MAX
        };
        let kept: Vec<(u32, f32)> = cands
            .iter()
            .filter(|&&(id, l)| valid.get(id as usize).copied().unwrap_or(false) && !l.is_nan())
            .take(k)
            .copied()
            .collect();
        if params.is_greedy() {
            return kept.first().map_or(Distribution::Sparse(Vec::new()), |c| {
                Distribution::point(c.0)
            });
        }
        let inv_t = 1.0 / params.temperature;
        let max = kept
            .iter()
            .map(|c| c.1 * inv_t)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<f32> = Vec::with_capacity(kept.len());
        let mut sum = 0f64;
        for c in &kept {
            let s = c.1 * inv_t;
            let p = (if s == max { 0.0 } else { (s - max) as f64 }).exp();
            probs.push(p as f32);
            sum += p;
        }
        if sum == 0.0 || !sum.is_finite() {
            return Distribution::Sparse(Vec::new());
        }
        let inv = (1.0 / sum) as f32;
        probs.iter_mut().for_each(|p| *p *= inv);
        if params.top_p < 1.0 {
            let mut cum = 0f32;
            let keep = probs
                .iter()
                .position(|&p| {
                    cum += p;
                    cum >= params.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            let inv = 1.0 / probs.iter().sum::<f32>();
            probs.iter_mut().for_each(|p| *p *= inv);
        }
        let mut support: Vec<(u32, f32)> = kept
            .iter()
            .zip(probs)
            .filter(|&(_, p)| p > 0.0)
            .map(|(c, p)| (c.0, p))
            .collect();
        support.sort_unstable_by_key(|&(id, _)| id);
        Distribution::Sparse(support)
    }

    /// Probabilities of each id.
    pub fn dense(probs: Vec<f32>) -> Distribution {
        Distribution::Dense(probs)
    }

    /// All mass on `id` (a greedy choice): no vocabulary-sized vector is made, so a greedy
    /// verification of k tokens costs k comparisons, not k passes over the vocabulary.
    pub fn point(id: u32) -> Distribution {
        Distribution::Point(id)
    }

    /// The largest probability.
    pub fn max_prob(&self) -> f32 {
        match self {
            Distribution::Point(_) => 1.0,
            Distribution::Dense(p) => p.iter().copied().fold(0.0, f32::max),
            Distribution::Sparse(s) => s.iter().map(|e| e.1).fold(0.0, f32::max),
        }
    }

    /// The ids with a nonzero probability, and those probabilities, in id order.
    pub fn support(&self) -> Box<dyn Iterator<Item = (u32, f32)> + '_> {
        match self {
            Distribution::Point(id) => Box::new(std::iter::once((*id, 1.0))),
            Distribution::Dense(p) => Box::new(
                p.iter()
                    .enumerate()
                    .filter(|(_, &p)| p > 0.0)
                    .map(|(i, &p)| (i as u32, p)),
            ),
            Distribution::Sparse(s) => Box::new(s.iter().copied()),
        }
    }

    /// The probabilities of ids `0..n` (zero outside the support).
    pub fn to_dense(&self, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n];
        for (id, p) in self.support() {
            if let Some(o) = out.get_mut(id as usize) {
                *o = p;
            }
        }
        out
    }

    /// One past the largest id that may have a nonzero probability (what a loop over every id
    /// must cover).
    pub fn span(&self) -> usize {
        match self {
            Distribution::Point(id) => *id as usize + 1,
            Distribution::Dense(p) => p.len(),
            Distribution::Sparse(s) => s.last().map_or(0, |e| e.0 as usize + 1),
        }
    }

    /// The most probable id (lowest id on ties).
    pub fn argmax(&self) -> u32 {
        match self {
            Distribution::Point(id) => *id,
            Distribution::Dense(p) => {
                let mut best = 0;
                for (i, &x) in p.iter().enumerate() {
                    if x > p[best] {
                        best = i;
                    }
                }
                best as u32
            }
            Distribution::Sparse(s) => {
                let mut best = (0, 0f32);
                for &(id, x) in s {
                    if x > best.1 {
                        best = (id, x);
                    }
                }
                best.0
            }
        }
    }

    pub fn prob(&self, id: u32) -> f32 {
        match self {
            Distribution::Point(p) => (*p == id) as u32 as f32,
            Distribution::Dense(p) => p.get(id as usize).copied().unwrap_or(0.0),
            Distribution::Sparse(s) => s.binary_search_by_key(&id, |e| e.0).map_or(0.0, |i| s[i].1),
        }
    }

    /// The id at which the cumulative probability first exceeds `u` in [0, 1) (in id order, so
    /// every form of the same probabilities gives the same id).
    pub fn quantile(&self, u: f32) -> u32 {
        if let Distribution::Point(id) = self {
            return *id;
        }
        let mut cum = 0f32;
        let mut last = 0;
        for (id, p) in self.support() {
            cum += p;
            last = id;
            if u < cum {
                return id;
            }
        }
        last
    }
}

/// The softmax of `logits * inv_t` over the valid ids (zero elsewhere, and for NaN), `None` when
/// no id has a probability. Made to vectorize, as it runs over a whole vocabulary per sampled
/// token: the exponentials are `ops::exp` (f32, within 2 ulp; below e^-87 they are 0, so an id at
/// -inf, as one outside a restricted output layer, stays at 0), summed in f64 over eight fixed
/// lanes; ids at +inf share the mass equally.
fn dense_softmax(logits: &[f32], valid: &[bool], inv_t: f32) -> Option<Vec<f32>> {
    let (full, n) = (logits.len(), logits.len().min(valid.len()));
    let (logits, valid) = (&logits[..n], &valid[..n]);
    let scaled = |l: f32, ok: bool| {
        if ok && !l.is_nan() {
            l * inv_t
        } else {
            f32::NEG_INFINITY
        }
    };
    let max = logits
        .iter()
        .zip(valid)
        .map(|(&l, &ok)| scaled(l, ok))
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return None;
    }
    // A plain loop over slices with selects, not branches (the exponential is computed for
    // every id and dropped where it does not apply), so that it vectorizes.
    let mut probs = vec![0f32; full];
    for ((p, &l), &ok) in probs.iter_mut().zip(logits).zip(valid) {
        let s = scaled(l, ok);
        // s == max: exactly 1, also where max is +inf (where s - max would be NaN).
        let d = if s == max { 0.0 } else { s - max };
        let e = cascade_kernels::ops::exp(d);
        *p = if d < -87.0 { 0.0 } else { e };
    }
    let mut lanes = [0f64; 8];
    let mut chunks = probs.chunks_exact(8);
    for c in &mut chunks {
        for (acc, &p) in lanes.iter_mut().zip(c) {
            *acc += p as f64;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&p| p as f64).sum();
    let sum = lanes.iter().sum::<f64>() + tail;
    if !(sum > 0.0 && sum.is_finite()) {
        return None;
    }
    let inv = (1.0 / sum) as f32;
    probs.iter_mut().for_each(|p| *p *= inv);
    Some(probs)
}

/// The `k` valid ids with the largest logits, as (id, logit) by descending logit, lowest id on
/// ties (-0 and +0 equal), NaN never taken; padded to `k` with ([`NO_CANDIDATE`], -inf). The
/// host's form of a device's top-k reduction of a row: both give the same entries.
pub fn top_candidates(logits: &[f32], valid: &[bool], k: usize) -> Vec<(u32, f32)> {
    let mut c = top_of(logits, k, |i, l| {
        valid.get(i).copied().unwrap_or(false) && !l.is_nan()
    });
    c.resize(k, (NO_CANDIDATE, f32::NEG_INFINITY));
    c
}

/// The (up to) `k` largest `values` among the ids `ok` takes (never a NaN), as (id, value) by
/// descending value, lowest id on ties (-0 and +0 equal). One pass in id order keeps what could
/// still be among the k best: once the buffer has been cut to its k best, a later (higher) id
/// must beat the k-th value strictly; so the cost is a pass over the values, not a sort.
fn top_of(values: &[f32], k: usize, ok: impl Fn(usize, f32) -> bool) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let order = |a: &(u32, f32), b: &(u32, f32)| {
        b.1.partial_cmp(&a.1)
            .expect("no NaN is kept")
            .then(a.0.cmp(&b.0))
    };
    let cap = (4 * k).max(64);
    let mut c: Vec<(u32, f32)> = Vec::with_capacity(cap + 1);
    let mut floor: Option<f32> = None;
    let cut = |c: &mut Vec<(u32, f32)>| {
        if k < c.len() {
            c.select_nth_unstable_by(k - 1, order);
            c.truncate(k);
        }
    };
    for (i, &v) in values.iter().enumerate() {
        if floor.is_none_or(|f| v > f) && ok(i, v) {
            c.push((i as u32, v));
            if c.len() > cap {
                cut(&mut c);
                floor = c.iter().map(|e| e.1).reduce(f32::min);
            }
        }
    }
    cut(&mut c);
    c.sort_unstable_by(order);
    c
}

/// The ids top-k and top-p keep: candidates by descending probability (ties by id), the first
/// `top_k`, then the shortest prefix whose probability reaches `top_p`. Only as many candidates
/// as needed are found (the largest 64, then 256, ..., each a pass of [`top_of`]), since a full
/// sort of a 150k-token vocabulary per position would cost more than the sampling is worth; the
/// result is the same prefix a full sort gives.
fn kept_candidates(probs: &[f32], params: &SamplingParams) -> Vec<u32> {
    let positive = probs.iter().filter(|&&p| p > 0.0).count();
    let limit = if params.top_k > 0 {
        params.top_k.min(positive)
    } else {
        positive
    };
    let mut m = 64.min(limit);
    loop {
        let top = top_of(probs, m, |_, p| p > 0.0);
        let mut keep = top.len();
        let mut reached = params.top_p >= 1.0 && m == limit;
        if params.top_p < 1.0 {
            let mut cum = 0f32;
            for (i, &(_, p)) in top.iter().enumerate() {
                cum += p;
                if cum >= params.top_p {
                    keep = i + 1;
                    reached = true;
                    break;
                }
            }
        }
        if reached || m == limit {
            return top[..keep].iter().map(|e| e.0).collect();
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
        self.draw(dist)
    }

    /// As [`Sampler::sample`] from a row's top candidates (a row reduced to its top k, with this
    /// sampler's k: the same draw as from the whole row).
    pub fn sample_candidates(&mut self, cands: &[(u32, f32)], valid: &[bool]) -> Sampled {
        let dist = Distribution::from_candidates(cands, &self.params, valid);
        self.draw(dist)
    }

    fn draw(&mut self, dist: Distribution) -> Sampled {
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
        for (p, l) in d.to_dense(4).iter().zip(logits) {
            assert!((p - l.exp() / z).abs() < 1e-6);
        }
        let k2 = Distribution::from_logits(&logits, &params(1.0, 2, 1.0), &valid).to_dense(4);
        assert!(k2[2] == 0.0 && k2[3] == 0.0);
        assert!((k2[0] - 1.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
        assert!((k2[0] + k2[1] - 1.0).abs() < 1e-6);
        // Top-p after top-k is taken on the renormalized top k (0.731, 0.269): 0.7 keeps one
        // token, where against the whole vocabulary's mass (0.644) it would keep two.
        let k2p7 = Distribution::from_logits(&logits, &params(1.0, 2, 0.7), &valid);
        assert_eq!(k2p7, Distribution::Sparse(vec![(0, 1.0)]));
        // Probabilities 0.644, 0.237, 0.087, 0.032 (cumulative 0.644, 0.881, 0.968): top-p 0.5
        // keeps one token, 0.85 keeps two, 0.9 keeps three.
        let p5 = Distribution::from_logits(&logits, &params(1.0, 0, 0.5), &valid);
        assert_eq!(p5.to_dense(4)[0], 1.0);
        let p85 = Distribution::from_logits(&logits, &params(1.0, 0, 0.85), &valid);
        assert!(p85.to_dense(4)[1] > 0.0 && p85.to_dense(4)[2] == 0.0);
        let p9 = Distribution::from_logits(&logits, &params(1.0, 0, 0.9), &valid);
        assert!(p9.to_dense(4)[2] > 0.0 && p9.to_dense(4)[3] == 0.0);
        assert!((p9.to_dense(4)[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
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
                let probs = base.to_dense(n);
                // Reference: full sort by probability, ties by id; the top k renormalized (in
                // f64) before the top-p cut, as Hugging Face and vLLM cut.
                let mut order: Vec<u32> =
                    (0..n as u32).filter(|&i| probs[i as usize] > 0.0).collect();
                order.sort_by(|&a, &b| {
                    probs[b as usize]
                        .total_cmp(&probs[a as usize])
                        .then(a.cmp(&b))
                });
                let keep = if k > 0 {
                    k.min(order.len())
                } else {
                    order.len()
                };
                let mass: f64 = order[..keep]
                    .iter()
                    .map(|&i| probs[i as usize] as f64)
                    .sum();
                let mut cuts = vec![keep];
                if p < 1.0 && k == 0 {
                    // No top-k: the cut on the whole row's probabilities, summed as f32.
                    let mut cum = 0f32;
                    for (i, &id) in order[..keep].iter().enumerate() {
                        cum += probs[id as usize];
                        if cum >= p {
                            cuts[0] = i + 1;
                            break;
                        }
                    }
                } else if p < 1.0 {
                    // Where the cumulative mass meets top-p within float rounding (equal
                    // probabilities summing to it exactly), the cut may fall on either side.
                    let mut cum = 0f64;
                    for (i, &id) in order[..keep].iter().enumerate() {
                        cum += probs[id as usize] as f64 / mass;
                        if (cum - p as f64).abs() < 1e-5 {
                            cuts.extend([i + 1, i + 2]);
                        }
                        if cum >= p as f64 {
                            cuts[0] = i + 1;
                            break;
                        }
                    }
                }
                let got = Distribution::from_logits(&logits, &params, &valid);
                let support: Vec<u32> = got.support().map(|(id, _)| id).collect();
                let fits = |keep: usize| {
                    let mut want = order[..keep.min(order.len())].to_vec();
                    want.sort_unstable();
                    support == want
                };
                assert!(
                    cuts.iter().any(|&c| fits(c)),
                    "n {n}, top-k {k}, top-p {p}: kept {} of cuts {cuts:?}",
                    support.len()
                );
            }
        }
    }

    /// Random rows with ties, signed zeros, infinities, NaN and invalid ids.
    fn awkward_row(rng: &mut ChaCha8Rng, n: usize) -> (Vec<f32>, Vec<bool>) {
        let mut logits: Vec<f32> = (0..n)
            .map(|_| (rng.random::<f32>() * 24.0).round() / 4.0 - 3.0)
            .collect();
        for (i, x) in [
            f32::NAN,
            -0.0,
            0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            3.0,
            3.0,
        ]
        .into_iter()
        .enumerate()
        {
            logits[(i * 37 + 11) % n] = x;
        }
        let valid = (0..n).map(|i| i % 13 != 5).collect();
        (logits, valid)
    }

    #[test]
    fn top_candidates_are_the_first_k_of_the_full_order() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for (n, k) in [(50, 64), (300, 1), (300, 40), (5000, 64), (9, 0)] {
            let (logits, valid) = awkward_row(&mut rng, n);
            let mut all: Vec<(u32, f32)> = (0..n)
                .filter(|&i| valid[i] && !logits[i].is_nan())
                .map(|i| (i as u32, logits[i]))
                .collect();
            all.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
            all.resize(all.len().max(k), (NO_CANDIDATE, f32::NEG_INFINITY));
            let got = top_candidates(&logits, &valid, k);
            let bits =
                |v: &[(u32, f32)]| v.iter().map(|c| (c.0, c.1.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&all[..k]), "n {n}, k {k}");
        }
    }

    /// A row reduced to its top k (as a device reduces it) gives the distribution, and the draw,
    /// of the whole row: bitwise, for every cut.
    #[test]
    fn a_row_reduced_to_its_top_k_samples_as_the_whole_row() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for trial in 0..30 {
            let n = [20, 300, 5000][trial % 3];
            let (logits, valid) = awkward_row(&mut rng, n);
            let finite: Vec<f32> = logits
                .iter()
                .map(|&l| if l.is_infinite() { 1.0 } else { l })
                .collect();
            for (t, k, p) in [(0.7, 1, 1.0), (0.7, 5, 1.0), (1.3, 40, 0.9), (1.0, 64, 0.5)] {
                let params = SamplingParams {
                    temperature: t,
                    top_k: k,
                    top_p: p,
                    seed: trial as u64,
                };
                if k >= n {
                    continue; // no cut: rows are reduced only below the vocabulary's size
                }
                for row in [&logits, &finite] {
                    let whole = Distribution::from_logits(row, &params, &valid);
                    let cands = top_candidates(row, &valid, k);
                    let reduced = Distribution::from_candidates(&cands, &params, &valid);
                    assert_eq!(whole, reduced, "trial {trial}, k {k}");
                    let (mut a, mut b) = (Sampler::new(params), Sampler::new(params));
                    for _ in 0..20 {
                        assert_eq!(
                            a.sample(row, &valid).token,
                            b.sample_candidates(&cands, &valid).token
                        );
                    }
                }
                let d = Distribution::from_logits(&finite, &params, &valid);
                let mass: f32 = d.support().map(|(_, p)| p).sum();
                assert!((mass - 1.0).abs() < 1e-5, "{mass}");
                assert!(d.support().count() <= k && d.support().all(|(id, _)| valid[id as usize]));
                // Against an f64 reference made apart: the first k valid ids by (logit, id),
                // their softmax, and the kept set a prefix whose mass just reaches top-p.
                let mut order: Vec<usize> = (0..n)
                    .filter(|&i| valid[i] && !finite[i].is_nan())
                    .collect();
                order.sort_by(|&a, &b| finite[b].partial_cmp(&finite[a]).unwrap().then(a.cmp(&b)));
                order.truncate(k);
                let e: Vec<f64> = order
                    .iter()
                    .map(|&i| ((finite[i] - finite[order[0]]) as f64 / t as f64).exp())
                    .collect();
                let z: f64 = e.iter().sum();
                let kept = d.support().count();
                let cum = |m: usize| e[..m].iter().sum::<f64>() / z;
                assert!(
                    cum(kept) >= p as f64 - 1e-5,
                    "trial {trial}, k {k}: too few kept"
                );
                assert!(
                    kept == 1 || cum(kept - 1) < p as f64 + 1e-5,
                    "trial {trial}: too many"
                );
                let zk = cum(kept) * z;
                for (j, &i) in order[..kept].iter().enumerate() {
                    let want = e[j] / zk;
                    let got = d.prob(i as u32) as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * want,
                        "id {i}: {got} against {want}"
                    );
                }
            }
        }
    }

    /// The whole row's softmax (f32 exponentials summed in f64 lanes) against an f64 reference;
    /// ids at -inf (outside a restricted layer), NaN or invalid get exactly 0; ids at +inf share
    /// the mass.
    #[test]
    fn the_whole_rows_softmax_matches_f64_and_keeps_the_excluded_at_zero() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let n = 151_936;
        let mut logits: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 30.0 - 20.0).collect();
        let mut valid = vec![true; n];
        for i in (0..n).step_by(7) {
            logits[i] = f32::NEG_INFINITY;
        }
        logits[5] = f32::NAN;
        valid[n - 100..].fill(false);
        let t = 0.7f32;
        let d = Distribution::from_logits(&logits, &params(t, 0, 1.0), &valid).to_dense(n);
        let ok = |i: usize| valid[i] && logits[i].is_finite();
        let max = (0..n)
            .filter(|&i| ok(i))
            .map(|i| (logits[i] * (1.0 / t)) as f64)
            .fold(f64::MIN, f64::max);
        let z: f64 = (0..n)
            .filter(|&i| ok(i))
            .map(|i| ((logits[i] * (1.0 / t)) as f64 - max).exp())
            .sum();
        let mut worst = 0f64;
        for i in 0..n {
            if !ok(i) {
                assert_eq!(d[i], 0.0, "id {i}");
                continue;
            }
            let want = ((logits[i] * (1.0 / t)) as f64 - max).exp() / z;
            worst = worst.max((d[i] as f64 - want).abs() / want.max(1e-30));
        }
        assert!(worst < 1e-5, "worst relative error {worst}");
        assert!((d.iter().map(|&p| p as f64).sum::<f64>() - 1.0).abs() < 1e-5);
        logits[10] = f32::INFINITY;
        logits[20] = f32::INFINITY;
        let inf = Distribution::from_logits(&logits, &params(t, 0, 1.0), &valid);
        assert_eq!(
            inf.support().collect::<Vec<_>>(),
            vec![(10, 0.5), (20, 0.5)]
        );
        let none = Distribution::from_logits(&[f32::NAN; 4], &params(t, 0, 1.0), &[true; 4]);
        assert_eq!(none.support().count(), 0);
    }

    #[test]
    fn bad_params_are_rejected() {
        assert!(params(-1.0, 0, 1.0).validate().is_err());
        assert!(params(1.0, 0, 0.0).validate().is_err());
        assert!(params(f32::NAN, 0, 1.0).validate().is_err());
    }
}
