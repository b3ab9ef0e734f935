//! `cascade generate`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde_json::json;

use cascade_engine::{
    Engine, EngineConfig, GenerateConfig, Message, Prompt, Request, Role, SamplingParams,
};

use super::{print_json, spinner, CliError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Decode with the target alone.
    Target,
    /// Decode with the draft alone.
    Draft,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Target model: a .gguf file or a Hugging Face folder.
    #[arg(long)]
    pub target: PathBuf,
    /// Draft model (same tokenizer as the target).
    #[arg(long)]
    pub draft: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Mode::Target)]
    pub mode: Mode,
    /// The prompt, used verbatim unless --chat.
    #[arg(
        long,
        conflicts_with = "prompt_file",
        required_unless_present = "prompt_file"
    )]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Wrap the prompt as a user message with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// How activations enter the matrix products: int8 (fast, as llama.cpp) or f32 (exact).
    #[arg(long, value_enum, default_value_t = super::PrecisionArg::Int8)]
    pub precision: super::PrecisionArg,
    /// Use this tokenizer.json instead of the model's own tokenizer.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: GenerateArgs) -> Result<(), CliError> {
    let text = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).map_err(|source| CliError::Read {
            path: f.clone(),
            source,
        })?,
        (None, None) => return Err(CliError::Usage("give --prompt or --prompt-file".into())),
    };
    let role = match a.mode {
        Mode::Target => Role::Target,
        Mode::Draft if a.draft.is_none() => {
            return Err(CliError::Usage("--mode draft needs --draft PATH".into()))
        }
        Mode::Draft => Role::Draft,
    };
    if a.threads == Some(0) {
        return Err(CliError::Usage("--threads must be at least 1".into()));
    }
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    };
    sampling.validate()?;
    let pb = (!a.json).then(|| spinner("loading models"));
    let engine = Engine::load(&EngineConfig {
        target: a.target.clone(),
        draft: a.draft.clone(),
        tokenizer: a.tokenizer.clone(),
        threads: a.threads,
        precision: a.precision.into(),
    });
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let engine = engine?;
    let prompt = if a.chat {
        Prompt::Chat(vec![Message::user(text)])
    } else {
        Prompt::Text(text)
    };
    let req = Request {
        prompt,
        role,
        config: GenerateConfig {
            max_tokens: a.max_tokens,
            sampling,
            stop_at_eog: true,
        },
    };
    let stream = !a.json;
    let out = engine.generate(&req, |piece| {
        if stream {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(piece.as_bytes());
            let _ = o.flush();
        }
    })?;
    if a.json {
        print_json(&json!({
            "text": out.text,
            "tokens": out.tokens,
            "prompt_tokens": out.prompt_tokens,
            "stop_reason": out.stop,
            "mode": format!("{:?}", a.mode).to_lowercase(),
            "stats": {
                "load_s": engine.load_s,
                "prefill_s": out.stats.prefill_s,
                "decode_s": out.stats.decode_s,
                "decode_tokens_per_s": out.stats.decode_tokens_per_s,
                "generated_tokens": out.stats.generated_tokens,
            }
        }))?;
    } else {
        println!();
        eprintln!(
            "[{} prompt tokens, {} generated, prefill {:.2}s, decode {:.2} tokens/s, stop: {:?}]",
            out.prompt_tokens,
            out.stats.generated_tokens,
            out.stats.prefill_s,
            out.stats.decode_tokens_per_s,
            out.stop
        );
    }
    Ok(())
}
