//! The forward-pass workload behind `cascade bench forward`: time a forward of k new tokens on
//! top of a KV cache already holding N tokens (llama-bench's `pp`/`tg` analogue, and the cost of
//! verifying k drafted tokens).

use std::time::Instant;

use cascade_engine::{Logits, Model, Result};
use serde::Serialize;

/// One measured entry.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardResult {
    /// New tokens per forward.
    pub tokens: usize,
    /// Tokens already in the cache.
    pub context: usize,
    /// Median wall time of one forward, milliseconds.
    pub ms_median: f64,
    /// Fastest of the repeats, milliseconds.
    pub ms_min: f64,
    /// `tokens / median seconds`.
    pub tokens_per_s: f64,
    /// Timed repeats.
    pub repeat: usize,
    /// Median over the rounds of this entry's time over the one-token forward's in the same round
    /// (when one was measured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_one_token: Option<f64>,
}

/// What to time.
#[derive(Debug, Clone)]
pub struct ForwardBench {
    pub tokens: Vec<usize>,
    pub context: usize,
    pub repeat: usize,
    /// Logits for every new token (verification) or only the last (prefill, decode).
    pub logits: Logits,
    /// The new tokens are a prompt's (`Model::forward_prompt`), not generated ones. The context
    /// is always a prompt.
    pub as_prompt: bool,
    /// Each row reduced to its greedy choice (`Model::forward_greedy`: what greedy decoding and
    /// exact greedy verification take; on a device one id a row comes back) instead of whole.
    pub argmax: bool,
}

/// Deterministic valid token ids (content does not affect the cost of a forward pass).
fn filler(model: &Model, n: usize, salt: usize) -> Vec<u32> {
    let valid: Vec<u32> = (0..model.vocab_size() as u32)
        .filter(|&i| model.is_valid_token(i))
        .collect();
    (0..n)
        .map(|i| valid[(i * 7919 + salt * 104_729 + 13) % valid.len()])
        .collect()
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

/// Runs the benchmark: one untimed warm-up per entry, then `repeat` rounds in which every entry
/// is timed once, in turn (round-robin, so a drift in the machine's speed, common on shared
/// hosts, touches every entry alike), each forward after rolling the cache back to the context.
pub fn run(model: &Model, b: &ForwardBench) -> Result<Vec<ForwardResult>> {
    let max_new = b.tokens.iter().copied().max().unwrap_or(1);
    let mut cache = model.new_cache(b.context + max_new)?;
    if b.context > 0 {
        model.forward_prompt(&filler(model, b.context, 0), &mut cache, Logits::Last)?;
    }
    cache.commit();
    let inputs: Vec<Vec<u32>> = b.tokens.iter().map(|&k| filler(model, k, 1)).collect();
    let mut times = vec![Vec::with_capacity(b.repeat); b.tokens.len()];
    // One logits buffer, as a decode loop keeps (`Model::forward_into`).
    let (mut logits, mut ids) = (Vec::new(), Vec::new());
    for round in 0..=b.repeat {
        for (e, new) in inputs.iter().enumerate() {
            cache.rollback();
            let t0 = Instant::now();
            let prompt = if b.as_prompt {
                b.context + new.len()
            } else {
                0
            };
            if b.argmax {
                model.forward_greedy(new, &mut cache, b.logits, prompt, &mut ids)?;
            } else {
                model.forward_rows(new, &mut cache, b.logits, prompt, &mut logits)?;
            }
            let dt = t0.elapsed().as_secs_f64();
            std::hint::black_box((&logits, &ids));
            if round > 0 {
                times[e].push(dt);
            }
        }
    }
    // Each entry's time over the one-token forward's of the same round.
    let one = b.tokens.iter().position(|&k| k == 1);
    let ratios: Vec<Option<f64>> = (0..b.tokens.len())
        .map(|e| {
            one.map(|o| {
                let mut r: Vec<f64> = times[e].iter().zip(&times[o]).map(|(t, u)| t / u).collect();
                median(&mut r)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(b.tokens.len());
    for (e, &k) in b.tokens.iter().enumerate() {
        let t = &mut times[e];
        let ms_min = t.iter().copied().fold(f64::INFINITY, f64::min) * 1e3;
        let med = median(t);
        out.push(ForwardResult {
            tokens: k,
            context: b.context,
            ms_median: med * 1e3,
            ms_min,
            tokens_per_s: k as f64 / med,
            repeat: b.repeat,
            vs_one_token: ratios[e],
        });
    }
    Ok(out)
}
