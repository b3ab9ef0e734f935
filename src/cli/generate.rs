//! `cascade generate`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde_json::json;

use cascade_engine::{
    DraftLen, Engine, EngineConfig, GenerateConfig, Message, Mode, NgramProposer, Prompt, Request,
    SamplingParams, SpecConfig, MAX_DRAFT_LEN,
};

use super::{print_json, spinner, CliError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Decode with the target alone.
    Target,
    /// Decode with the draft alone.
    Draft,
    /// Lossless speculative decoding: the draft proposes, the target verifies; the output is the
    /// target's own (the default when --draft is given).
    Exact,
}

/// `--draft`: a model file or folder, or `ngram` for prompt lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DraftArg {
    Model(PathBuf),
    Ngram,
}

pub(crate) fn parse_draft(s: &str) -> Result<DraftArg, String> {
    match s {
        "" => Err("needs a model path or 'ngram'".into()),
        "ngram" => Ok(DraftArg::Ngram),
        path => Ok(DraftArg::Model(PathBuf::from(path))),
    }
}

/// `--draft-len`: a number of tokens per round, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DraftLenArg {
    Fixed(usize),
    Auto,
}

pub(crate) fn parse_draft_len(s: &str) -> Result<DraftLenArg, String> {
    if s == "auto" {
        return Ok(DraftLenArg::Auto);
    }
    let k: usize = s
        .parse()
        .map_err(|_| format!("'{s}' is neither a number of tokens nor 'auto'"))?;
    if k == 0 || k > MAX_DRAFT_LEN {
        return Err(format!("{k} tokens: must be between 1 and {MAX_DRAFT_LEN}"));
    }
    Ok(DraftLenArg::Fixed(k))
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Target model: a .gguf file or a Hugging Face folder.
    #[arg(long)]
    pub target: PathBuf,
    /// Draft model (same tokenizer as the target), or `ngram` for prompt lookup (no model).
    #[arg(long, value_parser = parse_draft)]
    pub draft: Option<DraftArg>,
    /// How to decode (default: exact when --draft is given, else target).
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Tokens drafted per round: a number, or `auto` to adapt it per sequence from the observed
    /// acceptance and the measured cost of draft and target passes.
    #[arg(long, default_value = "auto", value_parser = parse_draft_len)]
    pub draft_len: DraftLenArg,
    /// The most tokens `--draft-len auto` drafts per round.
    #[arg(long, default_value_t = 8)]
    pub draft_max: usize,
    /// With a draft model, do not try prompt lookup first (each round otherwise drafts from an
    /// n-gram match in the prompt and the text so far when there is one, for free).
    #[arg(long)]
    pub no_lookup: bool,
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
    let mode = resolve_mode(&a)?;
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
        draft: match &a.draft {
            Some(DraftArg::Model(p)) => Some(p.clone()),
            _ => None,
        },
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
        mode,
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
        let mut stats = serde_json::to_value(&out.stats).map_err(std::io::Error::other)?;
        stats["load_s"] = json!(engine.load_s);
        print_json(&json!({
            "text": out.text,
            "tokens": out.tokens,
            "prompt_tokens": out.prompt_tokens,
            "stop_reason": out.stop,
            "mode": mode_name(&mode),
            "draft": match &a.draft {
                Some(DraftArg::Model(p)) => json!(p),
                Some(DraftArg::Ngram) => json!("ngram"),
                None => json!(null),
            },
            "stats": stats,
        }))?;
    } else {
        println!();
        let s = &out.stats;
        eprintln!(
            "[{} prompt tokens, {} generated, prefill {:.2}s, decode {:.2} tokens/s, stop: {:?}]",
            out.prompt_tokens, s.generated_tokens, s.prefill_s, s.decode_tokens_per_s, out.stop
        );
        if let Mode::Exact(_) = mode {
            eprintln!(
                "[{} target passes, {} drafted, {} accepted ({:.1}%), {:.2} accepted per pass, \
                 draft {:.2}s, verify {:.2}s]",
                s.target_passes,
                s.drafted,
                s.accepted,
                100.0 * s.acceptance_rate,
                s.mean_accepted_per_pass,
                s.draft_s,
                s.verify_s
            );
        }
    }
    Ok(())
}

fn mode_name(m: &Mode) -> &'static str {
    match m {
        Mode::Target => "target",
        Mode::Draft => "draft",
        Mode::Exact(_) => "exact",
    }
}

/// The request's mode from `--mode`, `--draft`, `--draft-len` and `--draft-max`.
fn resolve_mode(a: &GenerateArgs) -> Result<Mode, CliError> {
    let asked = a.mode.unwrap_or(match a.draft {
        Some(_) => ModeArg::Exact,
        None => ModeArg::Target,
    });
    let draft_len = match a.draft_len {
        DraftLenArg::Fixed(k) => DraftLen::Fixed(k),
        DraftLenArg::Auto if a.draft_max == 0 || a.draft_max > MAX_DRAFT_LEN => {
            return Err(CliError::Usage(format!(
                "--draft-max {}: must be between 1 and {MAX_DRAFT_LEN}",
                a.draft_max
            )))
        }
        DraftLenArg::Auto => DraftLen::Auto { max: a.draft_max },
    };
    Ok(match (asked, &a.draft) {
        (ModeArg::Target, _) => Mode::Target,
        (ModeArg::Draft, Some(DraftArg::Model(_))) => Mode::Draft,
        (ModeArg::Draft, Some(DraftArg::Ngram)) => {
            return Err(CliError::Usage(
                "--mode draft needs a draft model (--draft PATH), not ngram".into(),
            ))
        }
        (ModeArg::Draft | ModeArg::Exact, None) => {
            return Err(CliError::Usage(format!(
                "--mode {} needs --draft PATH (a model) or --draft ngram",
                if asked == ModeArg::Draft {
                    "draft"
                } else {
                    "exact"
                }
            )))
        }
        (ModeArg::Exact, Some(DraftArg::Ngram)) if a.no_lookup => {
            return Err(CliError::Usage(
                "--draft ngram is prompt lookup: it cannot go with --no-lookup".into(),
            ))
        }
        (ModeArg::Exact, Some(d)) => Mode::Exact(SpecConfig {
            draft_len,
            draft_model: matches!(d, DraftArg::Model(_)),
            lookup: (!a.no_lookup).then(NgramProposer::default),
        }),
    })
}
