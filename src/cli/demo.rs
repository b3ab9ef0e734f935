//! `cascade demo`: fetch the default pair if missing, stream a chat answer written with exact
//! speculative decoding (the draft proposes, the target verifies), then answer the same prompt
//! with the target alone and print both speeds and whether the outputs are identical.

use std::io::Write;

use clap::Args;

use cascade_engine::{
    Completion, Engine, EngineConfig, GenerateConfig, Message, Mode, Prompt, Request,
    SamplingParams, SchedulerConfig,
};

use super::{spinner, CliError};
use crate::models::{ensure_default_pair, models_dir};

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[arg(
        long,
        default_value = "Write a Python function that checks whether a string is a palindrome."
    )]
    pub prompt: String,
    #[arg(long, default_value_t = 96)]
    pub max_tokens: usize,
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub devices: super::DeviceArgs,
    #[command(flatten)]
    pub vocab: super::DraftVocabArgs,
}

pub fn run(a: DemoArgs) -> Result<(), CliError> {
    let dir = models_dir();
    let (target, draft) = ensure_default_pair(&dir)?;
    let pb = spinner("mapping the draft and target models");
    let engine = Engine::load(&EngineConfig {
        target: target.clone(),
        draft: Some(draft),
        tokenizer: None,
        threads: a.threads,
        // One request at a time, and the second run of the prompt must not reuse the first's
        // KV blocks: the comparison is of decoding, not of the cache.
        scheduler: SchedulerConfig {
            prefix_cache: false,
            ..Default::default()
        },
        device: a.devices.device,
        draft_device: a.devices.draft_device,
        draft_vocab: a.vocab.draft_vocab,
        vocab_rank: a.vocab.vocab_rank.clone(),
        ..Default::default()
    });
    pb.finish_and_clear();
    let engine = engine?;
    eprintln!(
        "loaded {} and {} in {:.2}s ({} files mapped once, {:.0} MiB)",
        engine.target().files.path.display(),
        engine
            .draft()
            .map(|d| d.files.path.display().to_string())
            .unwrap_or_default(),
        engine.load_s,
        engine.store().mapped_files(),
        engine.store().mapped_bytes() as f64 / (1 << 20) as f64
    );
    eprintln!("> {}\n", a.prompt);
    let req = |mode| Request {
        prompt: Prompt::Chat(vec![Message::user(a.prompt.clone())]),
        mode,
        config: GenerateConfig {
            max_tokens: a.max_tokens,
            sampling: SamplingParams::greedy(),
            stop_at_eog: true,
        },
        grammar: None,
    };
    let spec = engine.generate(&req(Mode::exact()), |piece| {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(piece.as_bytes());
        let _ = o.flush();
    })?;
    println!();
    let pb = spinner("the same prompt with the target alone, for comparison");
    let alone = engine.generate(&req(Mode::Target), |_| {});
    pb.finish_and_clear();
    eprintln!("{}", summary(&spec, &alone?));
    Ok(())
}

/// The lines printed under the answer: both speeds, the ratio, and whether the outputs agree.
fn summary(spec: &Completion, alone: &Completion) -> String {
    let (s, t) = (&spec.stats, &alone.stats);
    let wall = |c: &Completion| c.stats.prefill_s + c.stats.decode_s;
    let same = if spec.tokens == alone.tokens {
        format!("identical ({} tokens)", spec.tokens.len())
    } else {
        let at = spec
            .tokens
            .iter()
            .zip(&alone.tokens)
            .position(|(a, b)| a != b)
            .unwrap_or(spec.tokens.len().min(alone.tokens.len()));
        format!("DIFFERENT from token {at} (this is a bug: please report it)")
    };
    format!(
        "\n[exact speculative: {:.1} tokens/s decoding, {:.2}s in all; acceptance {:.0}% of {} drafted]\n\
         [target alone:      {:.1} tokens/s decoding, {:.2}s in all]\n\
         [speed-up {:.2}x decoding, {:.2}x end to end; output {same}]",
        s.decode_tokens_per_s,
        wall(spec),
        100.0 * s.acceptance_rate,
        s.drafted,
        t.decode_tokens_per_s,
        wall(alone),
        s.decode_tokens_per_s / t.decode_tokens_per_s.max(1e-9),
        wall(alone) / wall(spec).max(1e-9),
    )
}
