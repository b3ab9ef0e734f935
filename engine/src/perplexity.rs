//! Perplexity with llama.cpp's convention: the text tokenized whole, cut into non-overlapping
//! windows of `ctx` tokens, and in each window the logits of positions `ctx/2 .. ctx-1` scored
//! against the token that follows them.

use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::model::{Logits, Model};

#[derive(Debug, Clone, Serialize)]
pub struct PerplexityResult {
    pub ppl: f64,
    pub tokens_scored: usize,
    pub windows: usize,
    pub ctx: usize,
}

/// Perplexity of `ids` (the whole text tokenized, with BOS when the model adds one). `on_window` sees each window's
/// running estimate.
pub fn perplexity(
    model: &Model,
    ids: &[u32],
    ctx: usize,
    mut on_window: impl FnMut(usize, usize, f64),
) -> Result<PerplexityResult> {
    if ctx < 4 {
        return Err(EngineError::InvalidParam {
            name: "ctx",
            reason: format!("{ctx} is too small (at least 4)"),
        });
    }
    if ctx > model.config.context_length {
        return Err(EngineError::InvalidParam {
            name: "ctx",
            reason: format!(
                "{ctx} exceeds the model's context of {}",
                model.config.context_length
            ),
        });
    }
    let windows = ids.len() / ctx;
    if windows == 0 {
        return Err(EngineError::InvalidParam {
            name: "ctx",
            reason: format!(
                "the text has {} tokens, fewer than one window of {ctx}",
                ids.len()
            ),
        });
    }
    let bos = model.tokenizer.bos.filter(|_| model.tokenizer.add_bos);
    let first = ctx / 2;
    let vocab = model.vocab_size();
    let mut nll = 0f64;
    let mut count = 0usize;
    for w in 0..windows {
        let mut window = ids[w * ctx..(w + 1) * ctx].to_vec();
        if let Some(b) = bos {
            window[0] = b;
        }
        let mut cache = model.new_cache(ctx)?;
        let logits = model.forward_prompt(&window, &mut cache, Logits::From(first))?;
        for j in first..ctx - 1 {
            let row = &logits[(j - first) * vocab..(j - first + 1) * vocab];
            let target = window[j + 1] as usize;
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = row
                .iter()
                .map(|&l| (l as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            nll += lse - row[target] as f64;
            count += 1;
        }
        on_window(w + 1, windows, (nll / count as f64).exp());
    }
    Ok(PerplexityResult {
        ppl: (nll / count as f64).exp(),
        tokens_scored: count,
        windows,
        ctx,
    })
}
