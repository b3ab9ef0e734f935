//! The `cascade` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use cascade_engine::Precision;

mod bench;
mod calibrate;
mod demo;
mod generate;
mod inspect;
mod perplexity;
mod repack;
mod serve;
mod spec_bench;
mod tokenize;
mod vocab_rank;

pub use generate::GenerateArgs;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Engine(#[from] cascade_engine::EngineError),
    #[error(transparent)]
    Weights(#[from] cascade_weights::WeightsError),
    #[error(transparent)]
    Bench(#[from] cascade_bench::BenchError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("fetching models: {0}")]
    Fetch(String),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),
}

#[derive(Debug, Parser)]
#[command(
    name = "cascade",
    version,
    about = "Speculative inference: a small draft proposes, a large target verifies."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate text from a prompt.
    Generate(GenerateArgs),
    /// Print the token ids of a text.
    Tokenize(tokenize::TokenizeArgs),
    /// Perplexity of a text file (llama.cpp's convention).
    Perplexity(perplexity::PerplexityArgs),
    /// Describe a model file or folder.
    Inspect(inspect::InspectArgs),
    /// Fetch the default model pair if missing and run a generation on it.
    Demo(demo::DemoArgs),
    /// Benchmarks: forward-pass timings and the machine's floors.
    Bench(bench::BenchArgs),
    /// Quality against cost over an evaluation set: target, draft, exact and cascade rules × α.
    Calibrate(calibrate::CalibrateArgs),
    /// Rewrite a GGUF file with its Q4_K/Q6_K matrices interleaved for the 8-row CPU kernels
    /// (bitwise the same results, faster products).
    Repack(repack::RepackArgs),
    /// An OpenAI-compatible HTTP server (chat and completions, streamed or not; /metrics).
    Serve(serve::ServeArgs),
    /// Rank a tokenizer's tokens by frequency over text files, for --draft-vocab (FR-Spec).
    VocabRank(vocab_rank::VocabRankArgs),
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    init_tracing();
    match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Calibrate(a) => calibrate::run(a),
        Command::Repack(a) => repack::run(a),
        Command::Serve(a) => serve::run(a),
        Command::VocabRank(a) => vocab_rank::run(a),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CASCADE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,cascade_gpu::placement=info,cascade_engine::scheduler=info",
        )
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A spinner on stderr while something loads (hidden when stderr is not a terminal).
pub(crate) fn spinner(msg: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

pub(crate) fn print_json(v: &serde_json::Value) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v).map_err(std::io::Error::other)?;
    writeln!(out)?;
    Ok(())
}

/// `--no-repack`, `--repack-dir`: how GGUF models are mapped.
#[derive(Debug, Clone, clap::Args)]
pub struct RepackArgs {
    /// Map the model files as they are (by default a GGUF whose Q4_K/Q6_K matrices the CPU
    /// kernels read faster interleaved is repacked once into a cache folder and its copy mapped).
    #[arg(long)]
    pub no_repack: bool,
    /// The cache folder of repacked copies (default: `.cascade-repacked` beside the model, or
    /// $CASCADE_REPACK_DIR).
    #[arg(long, conflicts_with = "no_repack")]
    pub repack_dir: Option<PathBuf>,
}

impl RepackArgs {
    pub fn policy(&self) -> cascade_engine::RepackPolicy {
        match (&self.repack_dir, self.no_repack) {
            (_, true) => cascade_engine::RepackPolicy::Off,
            (Some(d), false) => cascade_engine::RepackPolicy::In(d.clone()),
            (None, false) => cascade_engine::RepackPolicy::Auto,
        }
    }
}

/// `--device`, `--draft-device`: where the models run.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// Where the target runs: auto (a GPU when one is present and the model fits, else the
    /// CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: cascade_engine::DeviceSpec,
    /// Where the draft runs (same values).
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub draft_device: cascade_engine::DeviceSpec,
}

/// `--draft-vocab`, `--vocab-rank`: a cheaper draft step.
#[derive(Debug, Clone, clap::Args)]
pub struct DraftVocabArgs {
    /// The draft's output layer computes only the N most frequent tokens (FR-Spec: a cheaper
    /// draft step; the output stays exact, since the target verifies every token). `auto`:
    /// 32768 when a ranking exists for the draft's tokenizer (one ships for Qwen2.5), else all;
    /// `all` (or 0): the whole vocabulary.
    #[arg(long, value_name = "N|auto|all", default_value = "auto")]
    pub draft_vocab: cascade_engine::DraftVocab,
    /// The frequency ranking for --draft-vocab (default: the one shipped for the tokenizer;
    /// build one with `cascade vocab-rank`).
    #[arg(long)]
    pub vocab_rank: Option<PathBuf>,
}

pub(crate) fn parse_device(s: &str) -> Result<cascade_engine::DeviceSpec, String> {
    s.parse()
}

/// `--precision`: how activations enter the matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// 8-bit activations, integer dot products.
    Int8,
    /// f32 activations.
    F32,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Precision {
        match p {
            PrecisionArg::Int8 => Precision::Int8,
            PrecisionArg::F32 => Precision::F32,
        }
    }
}
