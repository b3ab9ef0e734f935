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
    /// Median time relative to the one-token forward of the same run (when one was measured).
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

/// Runs the benchmark: one untimed warm-up per entry, then `repeat` timed forwards, each after
/// rolling the cache back to the context.
pub fn run(model: &Model, b: &ForwardBench) -> Result<Vec<ForwardResult>> {
    let max_new = b.tokens.iter().copied().max().unwrap_or(1);
    let mut cache = model.new_cache(b.context + max_new);
    if b.context > 0 {
        model.forward(&filler(model, b.context, 0), &mut cache, Logits::Last)?;
    }
    cache.commit();
    let mut out: Vec<ForwardResult> = Vec::new();
    for &k in &b.tokens {
        let new = filler(model, k, 1);
        let mut times = Vec::with_capacity(b.repeat);
        for i in 0..=b.repeat {
            cache.rollback();
            let t0 = Instant::now();
            let logits = model.forward(&new, &mut cache, b.logits)?;
            let dt = t0.elapsed().as_secs_f64();
            std::hint::black_box(logits);
            if i > 0 {
                times.push(dt);
            }
        }
        let ms_min = times.iter().copied().fold(f64::INFINITY, f64::min) * 1e3;
        let med = median(&mut times);
        out.push(ForwardResult {
            tokens: k,
            context: b.context,
            ms_median: med * 1e3,
            ms_min,
            tokens_per_s: k as f64 / med,
            repeat: b.repeat,
            vs_one_token: None,
        });
    }
    if let Some(one) = out.iter().find(|r| r.tokens == 1).map(|r| r.ms_median) {
        for r in &mut out {
            r.vs_one_token = Some(r.ms_median / one);
        }
    }
    Ok(out)
}
