//! `cascade perplexity`.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use cascade_engine::{Engine, EngineConfig, Role};

use super::{print_json, CliError};

#[derive(Debug, Args)]
pub struct PerplexityArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// The text to score.
    #[arg(long)]
    pub file: PathBuf,
    /// Window length in tokens; the second half of each window is scored.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    #[arg(long)]
    pub threads: Option<usize>,
    /// How activations enter the matrix products: int8 (fast, as llama.cpp) or f32 (exact).
    #[arg(long, value_enum, default_value_t = super::PrecisionArg::Int8)]
    pub precision: super::PrecisionArg,
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: PerplexityArgs) -> Result<(), CliError> {
    let text = std::fs::read_to_string(&a.file).map_err(|source| CliError::Read {
        path: a.file.clone(),
        source,
    })?;
    if a.threads == Some(0) {
        return Err(CliError::Usage("--threads must be at least 1".into()));
    }
    let engine = Engine::load(&EngineConfig {
        target: a.model.clone(),
        draft: None,
        tokenizer: a.tokenizer.clone(),
        threads: a.threads,
        precision: a.precision.into(),
        scheduler: Default::default(),
        repack: Default::default(),
        ..Default::default()
    })?;
    let t0 = std::time::Instant::now();
    let quiet = a.json;
    let r = engine.perplexity(Role::Target, &text, a.ctx, |done, total, ppl| {
        if !quiet {
            eprintln!("[{done}/{total}] ppl {ppl:.4}");
        }
    })?;
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        print_json(&json!({
            "ppl": r.ppl,
            "tokens_scored": r.tokens_scored,
            "windows": r.windows,
            "ctx": r.ctx,
            "seconds": secs,
        }))?;
    } else {
        println!(
            "ppl = {:.4} over {} tokens ({} windows of {})",
            r.ppl, r.tokens_scored, r.windows, r.ctx
        );
    }
    Ok(())
}
