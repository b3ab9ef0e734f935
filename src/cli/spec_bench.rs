//! `cascade bench speculative`: runs a prompt set through target-only decoding and exact
//! speculative decoding at several draft lengths and thread counts, checks that every exact
//! output equals the target's token for token, and reports speed and acceptance per setting.

use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use cascade_engine::{
    Completion, DraftLen, Engine, EngineConfig, GenerateConfig, Message, Mode, NgramProposer,
    Prompt, Request, SamplingParams, SpecConfig,
};

use cascade_bench::forward;

use super::generate::{parse_draft, parse_draft_len, DraftArg, DraftLenArg};
use super::{print_json, CliError};

#[derive(Debug, Args)]
pub struct SpecBenchArgs {
    #[arg(long)]
    pub target: PathBuf,
    /// Draft model, or `ngram` for prompt lookup alone.
    #[arg(long, value_parser = parse_draft)]
    pub draft: DraftArg,
    /// JSON lines: {"prompt": "...", "chat": true|false, "kind": "code"|...}.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Draft lengths to run, comma separated (numbers or `auto`).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,auto", value_parser = parse_draft_len)]
    pub draft_len: Vec<DraftLenArg>,
    /// Thread counts to run, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "2")]
    pub threads: Vec<usize>,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Only prompts of this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only the first N prompts (after --kind).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Runs of each prompt (target-only and every setting in turn each time); a prompt's
    /// speed-up is the median of its runs' ratios, which damps a noisy host's outliers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeat: u32,
    /// The most tokens `auto` drafts per round.
    #[arg(long, default_value_t = 8)]
    pub draft_max: usize,
    /// Do not try prompt lookup before the draft model (the same as --lookup off).
    #[arg(long, conflicts_with = "lookup")]
    pub no_lookup: bool,
    /// Prompt lookup before the draft model, comma separated settings to run: `off`, or the
    /// shortest n-gram it matches (the context's last n tokens, n from --ngram-max down to this,
    /// must occur earlier). Default: what `generate` does (3 before a draft model, 1 for
    /// --draft ngram).
    #[arg(long, value_delimiter = ',', value_parser = parse_lookup)]
    pub lookup: Vec<LookupArg>,
    /// Prompt lookup's longest n-gram.
    #[arg(long, default_value_t = NgramProposer::default().max_n)]
    pub ngram_max: usize,
    /// Print one JSON object per setting (after each thread count's run).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub devices: super::DeviceArgs,
    #[command(flatten)]
    pub vocab: super::DraftVocabArgs,
    /// Draft output-layer sizes to compare, in turns per prompt like the other settings (`all`
    /// or 0: the whole vocabulary, `auto`, or a number of tokens); each loads its own engine.
    #[arg(long, value_delimiter = ',')]
    pub draft_vocabs: Vec<cascade_engine::DraftVocab>,
}

/// `--lookup`: no prompt lookup, or lookup from n-grams of at least this many tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupArg {
    Off,
    MinN(usize),
}

fn parse_lookup(s: &str) -> Result<LookupArg, String> {
    match s {
        "off" => Ok(LookupArg::Off),
        _ => match s.parse() {
            Ok(n) if n >= 1 => Ok(LookupArg::MinN(n)),
            _ => Err(format!(
                "'{s}' is neither 'off' nor an n-gram length of at least 1"
            )),
        },
    }
}

#[derive(Debug, Clone, Deserialize)]
struct PromptLine {
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    chat: bool,
    #[serde(default)]
    kind: String,
    /// A conversation (multi-turn chat) instead of `prompt`.
    #[serde(default)]
    messages: Vec<TurnLine>,
}

#[derive(Debug, Clone, Deserialize)]
struct TurnLine {
    role: String,
    content: String,
}

impl PromptLine {
    fn prompt(&self) -> Result<Prompt, CliError> {
        if !self.messages.is_empty() {
            let turns = self
                .messages
                .iter()
                .map(|t| match t.role.as_str() {
                    "system" => Ok(Message::system(t.content.clone())),
                    "user" => Ok(Message::user(t.content.clone())),
                    "assistant" => Ok(Message::assistant(t.content.clone())),
                    r => Err(CliError::Usage(format!(
                        "unknown role `{r}` in a prompt line"
                    ))),
                })
                .collect::<Result<_, _>>()?;
            return Ok(Prompt::Chat(turns));
        }
        Ok(if self.chat {
            Prompt::Chat(vec![Message::user(self.prompt.clone())])
        } else {
            Prompt::Text(self.prompt.clone())
        })
    }
}

/// Totals of one setting over the prompt set.
#[derive(Debug, Clone, Default, Serialize)]
struct Totals {
    mode: String,
    draft_len: String,
    /// Prompt lookup: `off`, or `n>=N` (its shortest n-gram).
    lookup: String,
    threads: usize,
    prompts: usize,
    /// Outputs equal to target-only decoding, token for token.
    identical: usize,
    tokens: usize,
    decode_s: f64,
    prefill_s: f64,
    /// Tokens after each request's first, over the summed decode time.
    decode_tokens_per_s: f64,
    /// Median over prompts of each request's decode tokens/s.
    median_tokens_per_s: f64,
    /// Median over prompts of this setting's decode tokens/s over target-only's on the same
    /// prompt, run just before it (settings take turns per prompt, so a drift in the host's
    /// speed touches them alike).
    median_speedup: f64,
    target_passes: usize,
    drafted: usize,
    accepted: usize,
    acceptance_rate: f64,
    per_position_acceptance: Vec<f64>,
    draft_lengths: Vec<usize>,
    draft_s: f64,
    verify_s: f64,
    /// The draft's output layer: `all`, or the number of most frequent tokens it computes.
    draft_vocab: String,
    /// Median over prompts of target-only's prefill + decode seconds over this setting's.
    median_speedup_end_to_end: f64,
    /// Per prompt kind: (prompts, median decode speed-up, worst decode speed-up).
    by_kind: std::collections::BTreeMap<String, (usize, f64, f64)>,
    #[serde(skip)]
    kind_speedups: std::collections::BTreeMap<String, Vec<f64>>,
    #[serde(skip)]
    rates: Vec<f64>,
    #[serde(skip)]
    e2e: Vec<f64>,
    #[serde(skip)]
    speedups: Vec<f64>,
    #[serde(skip)]
    pos: Vec<(f64, usize)>,
}

impl Totals {
    fn add(&mut self, c: &Completion, identical: bool) {
        let s = &c.stats;
        self.prompts += 1;
        self.identical += identical as usize;
        self.tokens += s.generated_tokens;
        self.decode_s += s.decode_s;
        self.prefill_s += s.prefill_s;
        self.target_passes += s.target_passes;
        self.drafted += s.drafted;
        self.accepted += s.accepted;
        self.draft_s += s.draft_s;
        self.verify_s += s.verify_s;
        self.rates.push(s.decode_tokens_per_s);
        for (i, (&r, &n)) in s
            .per_position_acceptance
            .iter()
            .zip(&s.per_position_drafted)
            .enumerate()
        {
            if self.pos.len() <= i {
                self.pos.resize(i + 1, (0.0, 0));
            }
            self.pos[i].0 += r * n as f64;
            self.pos[i].1 += n;
        }
        for (k, &n) in s.draft_lengths.iter().enumerate() {
            if self.draft_lengths.len() <= k {
                self.draft_lengths.resize(k + 1, 0);
            }
            self.draft_lengths[k] += n;
        }
    }

    fn finish(&mut self) {
        let decoded = self.tokens.saturating_sub(self.prompts);
        self.decode_tokens_per_s = decoded as f64 / self.decode_s.max(1e-9);
        self.acceptance_rate = self.accepted as f64 / (self.drafted.max(1)) as f64;
        self.per_position_acceptance = self.pos.iter().map(|&(a, n)| a / n.max(1) as f64).collect();
        self.median_tokens_per_s = median(&self.rates);
        self.median_speedup = median(&self.speedups);
        self.median_speedup_end_to_end = median(&self.e2e);
        self.by_kind = self
            .kind_speedups
            .iter()
            .map(|(k, v)| {
                let worst = v.iter().copied().fold(f64::INFINITY, f64::min);
                (k.clone(), (v.len(), median(v), worst))
            })
            .collect();
    }
}

/// An engine for `bench speculative` with `threads` threads and the draft's output layer `vocab`.
fn engine_for(
    a: &SpecBenchArgs,
    draft: Option<std::path::PathBuf>,
    threads: usize,
    vocab: cascade_engine::DraftVocab,
) -> Result<Engine, CliError> {
    Ok(Engine::load(&EngineConfig {
        target: a.target.clone(),
        draft,
        threads: Some(threads),
        device: a.devices.device,
        draft_device: a.devices.draft_device,
        draft_vocab: vocab,
        vocab_rank: a.vocab.vocab_rank.clone(),
        ..Default::default()
    })?)
}

fn request(a: &SpecBenchArgs, p: &PromptLine, mode: Mode) -> Result<Request, CliError> {
    Ok(Request {
        prompt: p.prompt()?,
        mode,
        config: GenerateConfig {
            max_tokens: a.max_tokens,
            sampling: SamplingParams::greedy(),
            stop_at_eog: true,
        },
        grammar: None,
    })
}

/// Each prompt runs target-only (on the first engine), then every setting in turn; returns
/// target-only's totals and outputs.
fn run_prompts(
    a: &SpecBenchArgs,
    engines: &[Engine],
    prompts: &[PromptLine],
    settings: &mut [(usize, SpecConfig, Totals)],
    threads: usize,
    reference: &Option<Vec<Vec<u32>>>,
) -> Result<(Totals, Vec<Vec<u32>>), CliError> {
    let mut base = Totals {
        mode: "target".into(),
        draft_len: "-".into(),
        lookup: "-".into(),
        draft_vocab: "-".into(),
        threads,
        ..Default::default()
    };
    let wall = |c: &Completion| c.stats.prefill_s + c.stats.decode_s;
    let mut plain = Vec::new();
    let bar = progress(prompts.len(), format!("{threads} threads"));
    for (i, p) in prompts.iter().enumerate() {
        let mut ratios = vec![(Vec::new(), Vec::new()); settings.len()];
        // Per setting: its first run's completion, and whether every run was identical.
        let mut firsts: Vec<Option<(Completion, bool)>> = vec![None; settings.len()];
        for run in 0..a.repeat {
            let c = engines[0].generate(&request(a, p, Mode::Target)?, |_| {})?;
            let (base_rate, base_wall) = (c.stats.decode_tokens_per_s, wall(&c));
            if run == 0 {
                // Target-only output must not depend on the thread count either.
                let same = reference.as_ref().is_none_or(|r| r[i] == c.tokens);
                base.add(&c, same);
                plain.push(c.tokens);
            }
            for (((e, spec, t), (x, e2e)), first) in
                settings.iter_mut().zip(&mut ratios).zip(&mut firsts)
            {
                let c = engines[*e].generate(&request(a, p, Mode::Speculative(*spec))?, |_| {})?;
                let same = c.tokens == plain[i];
                if !same {
                    bar.println(format!(
                        "prompt {i}: exact output differs from the target's (draft length {}, lookup {}, vocabulary {})",
                        t.draft_len, t.lookup, t.draft_vocab
                    ));
                }
                if base_rate > 0.0 {
                    x.push(c.stats.decode_tokens_per_s / base_rate);
                }
                e2e.push(base_wall / wall(&c).max(1e-9));
                match first {
                    Some((_, all)) => *all &= same,
                    None => *first = Some((c, same)),
                }
            }
        }
        for ((_, _, t), first) in settings.iter_mut().zip(firsts) {
            if let Some((c, same)) = first {
                t.add(&c, same);
            }
        }
        for ((_, _, t), (x, e2e)) in settings.iter_mut().zip(&ratios) {
            if !x.is_empty() {
                let m = median(x);
                t.speedups.push(m);
                t.kind_speedups.entry(p.kind.clone()).or_default().push(m);
            }
            t.e2e.push(median(e2e));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    base.finish();
    base.median_speedup = 1.0;
    base.median_speedup_end_to_end = 1.0;
    Ok((base, plain))
}

/// [`forward::median`] of a copy, 0 for none.
fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    forward::median(&mut v.to_vec())
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn progress(n: usize, msg: String) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(n as u64);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} {elapsed}")
    {
        bar.set_style(style);
    }
    bar.set_message(msg);
    bar
}

fn read_prompts(a: &SpecBenchArgs) -> Result<Vec<PromptLine>, CliError> {
    let text = std::fs::read_to_string(&a.prompts).map_err(|source| CliError::Read {
        path: a.prompts.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let p: PromptLine = serde_json::from_str(line)
            .map_err(|e| CliError::Usage(format!("{} line {}: {e}", a.prompts.display(), i + 1)))?;
        if p.prompt.is_empty() && p.messages.is_empty() {
            return Err(CliError::Usage(format!(
                "{} line {}: needs a prompt or messages",
                a.prompts.display(),
                i + 1
            )));
        }
        if a.kind.as_ref().is_none_or(|k| *k == p.kind) {
            out.push(p);
        }
    }
    if let Some(n) = a.limit {
        out.truncate(n);
    }
    if out.is_empty() {
        return Err(CliError::Usage(format!(
            "{}: no prompts{}",
            a.prompts.display(),
            a.kind
                .as_ref()
                .map(|k| format!(" of kind '{k}'"))
                .unwrap_or_default()
        )));
    }
    Ok(out)
}

pub fn run(a: SpecBenchArgs) -> Result<(), CliError> {
    if a.threads.contains(&0) || a.threads.is_empty() {
        return Err(CliError::Usage("--threads must be at least 1".into()));
    }
    let prompts = read_prompts(&a)?;
    let lens: Vec<DraftLen> = a
        .draft_len
        .iter()
        .map(|l| match *l {
            DraftLenArg::Fixed(k) => DraftLen::Fixed(k),
            DraftLenArg::Auto => DraftLen::Auto { max: a.draft_max },
        })
        .collect();
    let (draft_model, draft_path) = match &a.draft {
        DraftArg::Model(p) => (true, Some(p.clone())),
        DraftArg::Ngram => (false, None),
    };
    // Prompt lookup settings: `--draft ngram` is lookup alone, so it always has one.
    let lookups: Vec<Option<NgramProposer>> = if a.no_lookup && draft_model {
        vec![None]
    } else if a.lookup.is_empty() {
        vec![Some(NgramProposer {
            max_n: a.ngram_max,
            ..NgramProposer::for_request(draft_model)
        })]
    } else {
        a.lookup
            .iter()
            .map(|l| match *l {
                LookupArg::Off if draft_model => Ok(None),
                LookupArg::Off => Err(CliError::Usage(
                    "--draft ngram is prompt lookup: --lookup off leaves nothing to draft".into(),
                )),
                LookupArg::MinN(n) => Ok(Some(NgramProposer {
                    min_n: n,
                    max_n: a.ngram_max,
                })),
            })
            .collect::<Result<_, _>>()?
    };
    let label = |l: &Option<NgramProposer>| match l {
        None => "off".to_string(),
        Some(p) => format!("n>={}", p.min_n),
    };
    let vocabs = if a.draft_vocabs.is_empty() {
        vec![a.vocab.draft_vocab]
    } else {
        a.draft_vocabs.clone()
    };
    let mut all = Vec::new();
    let mut reference: Option<Vec<Vec<u32>>> = None;
    for &threads in &a.threads {
        let engines = vocabs
            .iter()
            .map(|&v| engine_for(&a, draft_path.clone(), threads, v))
            .collect::<Result<Vec<_>, _>>()?;
        let mut settings: Vec<(usize, SpecConfig, Totals)> = Vec::new();
        for (e, v) in vocabs.iter().enumerate() {
            for lookup in &lookups {
                for &len in &lens {
                    let spec = SpecConfig {
                        draft_len: len,
                        draft_model,
                        lookup: *lookup,
                        ..Default::default()
                    };
                    let t = Totals {
                        mode: "exact".into(),
                        draft_len: match len {
                            DraftLen::Fixed(k) => k.to_string(),
                            DraftLen::Auto { max } => format!("auto (max {max})"),
                        },
                        lookup: label(lookup),
                        draft_vocab: v.to_string(),
                        threads,
                        ..Default::default()
                    };
                    settings.push((e, spec, t));
                }
            }
        }
        let (base, plain) =
            run_prompts(&a, &engines, &prompts, &mut settings, threads, &reference)?;
        reference.get_or_insert(plain);
        let mut block = vec![base];
        block.extend(settings.into_iter().map(|(_, _, mut t)| {
            t.finish();
            t
        }));
        if a.json {
            for t in &block {
                print_json(&serde_json::to_value(t).map_err(std::io::Error::other)?)?;
            }
        }
        all.extend(block);
    }
    // With --json each setting's line was printed after its thread count's run.
    if !a.json {
        println!(
            "{:>6} {:>14} {:>6} {:>6} {:>7} {:>10} {:>9} {:>9} {:>8} {:>8} {:>8} {:>10} {:>8}  per-position acceptance / rounds by draft length",
            "mode", "draft_len", "lookup", "vocab", "threads", "identical", "tok/s", "median", "vs_tgt", "med_x", "med_e2e", "passes/tok", "accept"
        );
        let mut base_rate = 0.0;
        for t in &all {
            if t.mode == "target" {
                base_rate = t.decode_tokens_per_s;
            }
            println!(
                "{:>6} {:>14} {:>6} {:>6} {:>7} {:>6}/{:<3} {:>9.2} {:>9.2} {:>7.2}x {:>7.2}x {:>7.2}x {:>10.3} {:>8.3}  {:?} / {:?}",
                t.mode,
                t.draft_len,
                t.lookup,
                t.draft_vocab,
                t.threads,
                t.identical,
                t.prompts,
                t.decode_tokens_per_s,
                t.median_tokens_per_s,
                t.decode_tokens_per_s / base_rate.max(1e-9),
                t.median_speedup,
                t.median_speedup_end_to_end,
                t.target_passes as f64 / t.tokens.max(1) as f64,
                t.acceptance_rate,
                t.per_position_acceptance
                    .iter()
                    .map(|x| (x * 100.0).round() / 100.0)
                    .collect::<Vec<_>>(),
                t.draft_lengths
            );
        }
    }
    let differing: usize = all.iter().map(|t| t.prompts - t.identical).sum();
    if differing > 0 {
        return Err(CliError::Usage(format!(
            "{differing} outputs differ from target-only decoding"
        )));
    }
    Ok(())
}
