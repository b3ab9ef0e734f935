//! `cascade demo`: fetch the default pair if missing, then stream a chat answer from the target.

use std::io::Write;

use clap::Args;

use cascade_engine::{Engine, EngineConfig, GenerateConfig, Message, Mode, Prompt, Request};

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
        precision: Default::default(),
        scheduler: Default::default(),
        repack: Default::default(),
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
    let req = Request {
        prompt: Prompt::Chat(vec![Message::user(a.prompt.clone())]),
        mode: Mode::Target,
        config: GenerateConfig {
            max_tokens: a.max_tokens,
            ..Default::default()
        },
    };
    let out = engine.generate(&req, |piece| {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(piece.as_bytes());
        let _ = o.flush();
    })?;
    println!();
    eprintln!(
        "\n[target: {} prompt tokens, {} generated, prefill {:.2}s, decode {:.2} tokens/s]",
        out.prompt_tokens,
        out.stats.generated_tokens,
        out.stats.prefill_s,
        out.stats.decode_tokens_per_s
    );
    Ok(())
}
