//! `cascade generate`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde_json::json;

use cascade_engine::{
    Cascade, DraftLen, Engine, EngineConfig, GenerateConfig, Grammar, Message, Mode, NgramProposer,
    Prompt, Request, Rule, SamplingParams, SpecConfig, MAX_DRAFT_LEN,
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
    /// Speculative cascade: a deferral rule (--rule, --alpha) keeps draft tokens the target would
    /// not have chosen where the draft is good enough.
    Cascade,
    /// The draft writes the whole answer, the target scores it in one pass and generation goes on
    /// from the first token it rejects (exactly, or with --rule/--alpha).
    Answer,
}

/// `--rule`: the deferral rule of a cascade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuleArg {
    /// Defer unless max q ≥ 1 − α.
    Chow,
    /// Defer unless max q ≥ max p − α.
    Diff,
    /// Defer unless max q ≥ max p − α·TV(p, q).
    Opt,
    /// Accept token v when p(v) ≥ (1 − α)·max p.
    Token,
}

impl From<RuleArg> for Rule {
    fn from(r: RuleArg) -> Rule {
        match r {
            RuleArg::Chow => Rule::Chow,
            RuleArg::Diff => Rule::Diff,
            RuleArg::Opt => Rule::Opt,
            RuleArg::Token => Rule::Token,
        }
    }
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
    /// Deferral rule of --mode cascade (or answer).
    #[arg(long, value_enum)]
    pub rule: Option<RuleArg>,
    /// Lenience of the rule in [0, 1]; 0 is exact.
    #[arg(long)]
    pub alpha: Option<f32>,
    /// With a draft model, do not try prompt lookup first (each round otherwise drafts from an
    /// n-gram match in the prompt and the text so far when there is one, for free).
    #[arg(long)]
    pub no_lookup: bool,
    /// Prompt lookup's shortest n-gram: the context's last n tokens (n from --ngram-max down
    /// to this) must occur earlier for it to propose what followed them. Default: 3 before a
    /// draft model, 1 for --draft ngram.
    #[arg(long)]
    pub ngram_min: Option<usize>,
    /// Prompt lookup's longest n-gram.
    #[arg(long, default_value_t = NgramProposer::default().max_n)]
    pub ngram_max: usize,
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
    #[command(flatten)]
    pub repack: super::RepackArgs,
    #[command(flatten)]
    pub devices: super::DeviceArgs,
    #[command(flatten)]
    pub vocab: super::DraftVocabArgs,
    /// Use this tokenizer.json instead of the model's own tokenizer.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Constrain the output to JSON valid under this JSON Schema file.
    #[arg(long, conflicts_with = "grammar")]
    pub json_schema: Option<PathBuf>,
    /// Constrain the output to this grammar file (llguidance's Lark dialect).
    #[arg(long)]
    pub grammar: Option<PathBuf>,
}

/// The grammar `--json-schema` or `--grammar` names, read.
fn read_grammar(a: &GenerateArgs) -> Result<Option<Grammar>, CliError> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|source| CliError::Read {
            path: path.clone(),
            source,
        })
    };
    if let Some(p) = &a.json_schema {
        let schema = serde_json::from_str(&read(p)?)
            .map_err(|e| CliError::Usage(format!("{}: not a JSON Schema: {e}", p.display())))?;
        return Ok(Some(Grammar::JsonSchema(schema)));
    }
    a.grammar
        .as_ref()
        .map(|p| read(p).map(Grammar::Lark))
        .transpose()
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
    let grammar = read_grammar(&a)?;
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
        scheduler: Default::default(),
        repack: a.repack.policy(),
        device: a.devices.device,
        draft_device: a.devices.draft_device,
        draft_vocab: a.vocab.draft_vocab,
        vocab_rank: a.vocab.vocab_rank.clone(),
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
        grammar,
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
            "mode": mode.name(),
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
        if let Mode::Speculative(spec) = mode {
            if spec.answer {
                eprintln!(
                    "[answer: the target kept {} of the draft's {} tokens{}]",
                    s.answer_kept,
                    s.answer_drafted,
                    if s.answer_kept == s.answer_drafted {
                        " (passed whole)"
                    } else {
                        ""
                    }
                );
            }
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

/// The request's mode from `--mode`, `--draft`, `--draft-len`, `--draft-max`, `--rule`, `--alpha`.
fn resolve_mode(a: &GenerateArgs) -> Result<Mode, CliError> {
    let asked = a.mode.unwrap_or(match a.draft {
        Some(_) => ModeArg::Exact,
        None => ModeArg::Target,
    });
    let name = format!("{asked:?}").to_lowercase();
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
    if let Some(alpha) = a.alpha {
        if !(0.0..=1.0).contains(&alpha) {
            return Err(CliError::Usage(format!(
                "--alpha {alpha}: must be in [0, 1]"
            )));
        }
    }
    let cascade = match (a.rule, a.alpha) {
        (Some(r), Some(alpha)) => Some(Cascade {
            rule: r.into(),
            alpha,
        }),
        (None, None) => None,
        (Some(_), None) => return Err(CliError::Usage("--rule needs --alpha A".into())),
        (None, Some(_)) => return Err(CliError::Usage("--alpha needs --rule".into())),
    };
    match asked {
        ModeArg::Cascade if cascade.is_none() => {
            return Err(CliError::Usage(
                "--mode cascade needs --rule chow|diff|opt|token and --alpha A".into(),
            ))
        }
        ModeArg::Target | ModeArg::Draft | ModeArg::Exact if cascade.is_some() => {
            return Err(CliError::Usage(format!(
                "--rule and --alpha go with --mode cascade or answer, not {name}"
            )))
        }
        _ => {}
    }
    let model = matches!(a.draft, Some(DraftArg::Model(_)));
    Ok(match (asked, &a.draft) {
        (ModeArg::Target, _) => Mode::Target,
        (ModeArg::Draft | ModeArg::Cascade | ModeArg::Answer, _) if !model => {
            return Err(CliError::Usage(format!(
                "--mode {name} needs a draft model (--draft PATH)"
            )))
        }
        (ModeArg::Draft, _) => Mode::Draft,
        (ModeArg::Exact, None) => {
            return Err(CliError::Usage(
                "--mode exact needs --draft PATH (a model) or --draft ngram".into(),
            ))
        }
        (_, Some(DraftArg::Ngram)) if a.no_lookup => {
            return Err(CliError::Usage(
                "--draft ngram is prompt lookup: it cannot go with --no-lookup".into(),
            ))
        }
        (ModeArg::Exact | ModeArg::Cascade | ModeArg::Answer, _) => Mode::Speculative(SpecConfig {
            draft_len,
            draft_model: model,
            lookup: (!a.no_lookup).then_some(NgramProposer {
                min_n: a
                    .ngram_min
                    .unwrap_or(NgramProposer::for_request(model).min_n),
                max_n: a.ngram_max,
            }),
            cascade,
            answer: asked == ModeArg::Answer,
        }),
    })
}
