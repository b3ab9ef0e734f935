//! `cascade serve`: the OpenAI-compatible HTTP server.

use std::path::PathBuf;

use clap::Args;

use cascade_engine::{DraftLen, EngineConfig, SchedulerConfig};

use super::generate::{parse_draft, parse_draft_len, DraftArg, DraftLenArg, ModeArg, RuleArg};
use super::CliError;
use crate::serve::{self, ModeDefaults, ModeName, ServeConfig};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Target model: a .gguf file or a Hugging Face folder.
    #[arg(long)]
    pub target: PathBuf,
    /// Draft model (same tokenizer as the target), or `ngram` for prompt lookup alone.
    #[arg(long, value_parser = parse_draft)]
    pub draft: Option<DraftArg>,
    /// Default mode of requests (default: exact with --draft, else target); a request's
    /// `"cascade": {"mode": ...}` overrides it.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Default deferral rule of requests in cascade or answer mode.
    #[arg(long, value_enum, requires = "alpha")]
    pub rule: Option<RuleArg>,
    /// Default lenience of the rule, in [0, 1].
    #[arg(long, requires = "rule")]
    pub alpha: Option<f32>,
    /// Default tokens drafted per round: a number, or `auto`.
    #[arg(long, default_value = "auto", value_parser = parse_draft_len)]
    pub draft_len: DraftLenArg,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed in the `listening on` line).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequences running at once.
    #[arg(long, default_value_t = SchedulerConfig::default().max_batch)]
    pub max_batch: usize,
    /// Requests waiting at most; past it requests get 429.
    #[arg(long, default_value_t = SchedulerConfig::default().max_queue)]
    pub max_queue: usize,
    /// KV cache memory of both models together, in MiB.
    #[arg(long, default_value_t = SchedulerConfig::default().kv_budget_mb)]
    pub kv_budget_mb: usize,
    /// Rows of one target forward at most (chunked prefill).
    #[arg(long, default_value_t = SchedulerConfig::default().step_tokens)]
    pub step_tokens: usize,
    /// Do not reuse the KV blocks of prompt prefixes.
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Requests to /v1/* must send `Authorization: Bearer KEY` (default: the CASCADE_API_KEY
    /// environment variable, if set).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Worker threads of the engine (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// The model name requests must give (default: the target's file name without extension).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Largest request body accepted; past it requests get 413.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// How activations enter the matrix products: int8 (fast) or f32 (exact).
    #[arg(long, value_enum, default_value_t = super::PrecisionArg::Int8)]
    pub precision: super::PrecisionArg,
    #[command(flatten)]
    pub repack: super::RepackArgs,
    #[command(flatten)]
    pub devices: super::DeviceArgs,
    #[command(flatten)]
    pub vocab: super::DraftVocabArgs,
}

pub fn run(a: ServeArgs) -> Result<(), CliError> {
    let cfg = config(&a)?;
    Ok(serve::run(cfg)?)
}

fn config(a: &ServeArgs) -> Result<ServeConfig, CliError> {
    if a.threads == Some(0) {
        return Err(CliError::Usage("--threads must be at least 1".into()));
    }
    let scheduler = SchedulerConfig {
        max_batch: a.max_batch,
        max_queue: a.max_queue,
        kv_budget_mb: a.kv_budget_mb,
        step_tokens: a.step_tokens,
        prefix_cache: !a.no_prefix_cache,
        ..SchedulerConfig::default()
    };
    scheduler.validate()?;
    let draft_model = matches!(a.draft, Some(DraftArg::Model(_)));
    let defaults = ModeDefaults {
        mode: match a.mode {
            Some(m) => mode_name(m),
            None if a.draft.is_some() => ModeName::Exact,
            None => ModeName::Target,
        },
        rule: a.rule.map(Into::into),
        alpha: a.alpha,
        draft_len: match a.draft_len {
            DraftLenArg::Fixed(k) => DraftLen::Fixed(k),
            DraftLenArg::Auto => DraftLen::default(),
        },
        lookup: true,
        draft_model,
    };
    if let Some(alpha) = a.alpha {
        if !(0.0..=1.0).contains(&alpha) {
            return Err(CliError::Usage(format!(
                "--alpha {alpha}: must be in [0, 1]"
            )));
        }
    }
    // The defaults must make a valid request on their own.
    if let Err(e) = serve::resolve_mode(&defaults, &Default::default()) {
        let m = format!("{:?}", defaults.mode).to_lowercase();
        return Err(CliError::Usage(match e.param.as_deref() {
            Some("cascade.mode") if !draft_model => {
                format!("--mode {m} needs a draft model (--draft PATH)")
            }
            Some("cascade.rule" | "cascade.alpha") => {
                format!("--mode {m} needs --rule chow|diff|opt|token and --alpha A")
            }
            _ => e.message,
        }));
    }
    Ok(ServeConfig {
        engine: EngineConfig {
            target: a.target.clone(),
            draft: match &a.draft {
                Some(DraftArg::Model(p)) => Some(p.clone()),
                _ => None,
            },
            tokenizer: None,
            threads: a.threads,
            precision: a.precision.into(),
            scheduler,
            repack: a.repack.policy(),
            device: a.devices.device,
            draft_device: a.devices.draft_device,
            draft_vocab: a.vocab.draft_vocab,
            vocab_rank: a.vocab.vocab_rank.clone(),
        },
        host: a.host.clone(),
        port: a.port,
        api_key: a
            .api_key
            .clone()
            .or_else(|| std::env::var("CASCADE_API_KEY").ok())
            .filter(|k| !k.is_empty()),
        model_name: a.served_model_name.clone().unwrap_or_else(|| {
            a.target
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "cascade".into())
        }),
        max_body_bytes: a.max_body_bytes,
        defaults,
    })
}

fn mode_name(m: ModeArg) -> ModeName {
    match m {
        ModeArg::Target => ModeName::Target,
        ModeArg::Draft => ModeName::Draft,
        ModeArg::Exact => ModeName::Exact,
        ModeArg::Cascade => ModeName::Cascade,
        ModeArg::Answer => ModeName::Answer,
    }
}
