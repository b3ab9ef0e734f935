//! Autoregressive generation with one model: prefill, then one token per forward pass.

use std::time::Instant;

use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::model::{Logits, Model};
use crate::sampler::{Sampler, SamplingParams};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateConfig {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop at the model's end-of-generation tokens.
    pub stop_at_eog: bool,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            max_tokens: 128,
            sampling: SamplingParams::greedy(),
            stop_at_eog: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-generation token was produced (it is part of `tokens`).
    EndOfGeneration,
    MaxTokens,
    /// The model's context is full.
    ContextFull,
    /// The caller's callback asked to stop.
    Cancelled,
}

/// What a request cost. Speculative fields stay zero (or empty) for single-model decoding,
/// except `target_passes` and `verify_s`, which then count its plain decode steps.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_s: f64,
    /// Everything after the prefill: drafting, verification, sampling.
    pub decode_s: f64,
    /// Tokens emitted after the prefill's token, per second of `decode_s`.
    pub decode_tokens_per_s: f64,
    /// Forward passes of the decoding model after the prefill.
    pub target_passes: usize,
    /// Tokens proposed by the draft (model or prompt lookup).
    pub drafted: usize,
    /// Drafted tokens the verifier kept.
    pub accepted: usize,
    /// `accepted / drafted`.
    pub acceptance_rate: f64,
    /// `accepted / target_passes`: drafted tokens kept per target pass (each pass also adds one
    /// token of the target's own).
    pub mean_accepted_per_pass: f64,
    /// Entry i: of the rounds that drafted at least i + 1 tokens, the fraction whose token at
    /// position i was accepted (vLLM's per-position acceptance).
    pub per_position_acceptance: Vec<f64>,
    /// Entry i: rounds that drafted at least i + 1 tokens (the denominators above).
    pub per_position_drafted: Vec<usize>,
    /// Seconds spent proposing (draft forwards, catch-ups, lookup).
    pub draft_s: f64,
    /// Seconds spent in target passes after the prefill and their verification.
    pub verify_s: f64,
    /// Entry k: rounds that drafted k tokens (0 = a plain decode step).
    pub draft_lengths: Vec<usize>,
    /// Tokens the target ran through its forward passes (prompt, drafted tokens verified, the
    /// rejected ones included).
    pub target_tokens: usize,
    /// Tokens the draft model ran through its forward passes.
    pub draft_tokens: usize,
    /// Forward passes of the draft model after its prefill (draft-only decoding).
    pub draft_passes: usize,
    /// Wall time in the target's passes (prefill and verification).
    pub target_s: f64,
    /// Drafted positions where a cascade rule kept the draft's token without deferring to the
    /// target (greedy), or judged the draft good enough (sampled).
    pub kept_by_rule: usize,
    /// Answer mode: tokens of the draft's answer, and how many the target kept.
    pub answer_drafted: usize,
    pub answer_kept: usize,
    /// Answer mode: seconds from the request's submission until its answer was written (its
    /// draft steps share the batch's steps with other sequences).
    pub answer_draft_s: f64,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub stats: GenerateStats,
}

/// Checks a prompt against the model and returns the cache capacity the request needs.
pub fn plan_capacity(model: &Model, prompt: &[u32], max_tokens: usize) -> Result<usize> {
    if prompt.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    let context = model.config.context_length;
    if prompt.len() >= context {
        return Err(EngineError::PromptTooLong {
            prompt: prompt.len(),
            context,
        });
    }
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= model.vocab_size()) {
        return Err(EngineError::InvalidToken {
            id,
            vocab: model.vocab_size(),
        });
    }
    Ok((prompt.len() + max_tokens).min(context))
}

/// Generates up to `cfg.max_tokens` tokens after `prompt`. `on_token` sees each token as it is
/// produced and returns false to stop.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    cfg: &GenerateConfig,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    cfg.sampling.validate()?;
    let capacity = plan_capacity(model, prompt, cfg.max_tokens)?;
    let mut cache = model.new_cache(capacity)?;
    let mut sampler = Sampler::new(cfg.sampling);
    let mut stats = GenerateStats {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    let mut tokens = Vec::new();
    if cfg.max_tokens == 0 {
        return Ok(Generation {
            tokens,
            stop: StopReason::MaxTokens,
            stats,
        });
    }
    let t0 = Instant::now();
    let mut logits = model.forward_prompt(prompt, &mut cache, Logits::Last)?;
    stats.prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut steps = 0usize;
    let stop = loop {
        let tok = sampler.sample(&logits, model.valid_mask()).token;
        tokens.push(tok);
        if !on_token(tok) {
            break StopReason::Cancelled;
        }
        if cfg.stop_at_eog && model.tokenizer.is_eog(tok) {
            break StopReason::EndOfGeneration;
        }
        if tokens.len() >= cfg.max_tokens {
            break StopReason::MaxTokens;
        }
        if cache.len() >= cache.capacity() {
            break StopReason::ContextFull;
        }
        model.forward_into(&[tok], &mut cache, Logits::Last, &mut logits)?;
        steps += 1;
    };
    stats.decode_s = t1.elapsed().as_secs_f64();
    stats.generated_tokens = tokens.len();
    stats.decode_tokens_per_s = if stats.decode_s > 0.0 {
        steps as f64 / stats.decode_s
    } else {
        0.0
    };
    stats.target_passes = steps;
    stats.verify_s = stats.decode_s;
    stats.target_tokens = prompt.len() + steps;
    stats.target_s = stats.prefill_s + stats.decode_s;
    Ok(Generation {
        tokens,
        stop,
        stats,
    })
}
