//! `cascade bench`: forward-pass timings, the machine's floors, speculative decoding over a
//! prompt set, and load on a server.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use cascade_bench::forward::{self, ForwardBench};
use cascade_bench::hardware;
use cascade_engine::{Logits, Model};
use cascade_weights::{OpenOptions, WeightStore};

use super::{print_json, CliError, PrecisionArg};

// Declared here rather than in cli/mod.rs: `cascade bench serve` is a subcommand of this one.
#[path = "bench_serve.rs"]
mod bench_serve;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time a forward of each number of new tokens on top of a KV cache holding N tokens.
    Forward(ForwardArgs),
    /// Measure the machine's read bandwidth and 8-bit integer peak.
    Floors(FloorsArgs),
    /// Target-only vs exact speculative decoding over a prompt set: identical outputs, speed,
    /// acceptance.
    Speculative(super::spec_bench::SpecBenchArgs),
    /// Load on an OpenAI-compatible server (a running one, or `cascade serve` started here):
    /// throughput, TTFT, TPOT, ITL, E2EL, acceptance and cost per concurrency level.
    Serve(bench_serve::BenchServeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogitsArg {
    /// Logits for every new token (the cost of verifying drafted tokens).
    All,
    /// Logits for the last new token only (prefill before sampling, llama-bench's pp).
    Last,
}

#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// A .gguf file or a Hugging Face folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Numbers of new tokens per forward, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,5,8,16")]
    pub tokens: Vec<usize>,
    /// Tokens already in the KV cache.
    #[arg(long, default_value_t = 128)]
    pub context: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed forwards per entry (after one warm-up).
    #[arg(long, default_value_t = 10)]
    pub repeat: usize,
    #[arg(long, value_enum, default_value_t = LogitsArg::All)]
    pub logits: LogitsArg,
    /// Time the new tokens as a prompt's (prefill: on a GPU with tensor cores they take the
    /// tensor-core products) instead of generated ones (decode, verification).
    #[arg(long)]
    pub as_prompt: bool,
    /// Reduce each row to its greedy choice (what greedy decoding and exact verification take;
    /// on a GPU one id a row is copied back) instead of returning the whole rows.
    #[arg(long)]
    pub argmax: bool,
    #[arg(long, value_enum, default_value_t = PrecisionArg::Int8)]
    pub precision: PrecisionArg,
    #[command(flatten)]
    pub repack: super::RepackArgs,
    /// Where the model runs: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = super::parse_device)]
    pub device: cascade_engine::DeviceSpec,
    /// Restrict the output layer to the N most frequent tokens of the shipped ranking (the
    /// draft's step under `--draft-vocab N`).
    #[arg(long, value_name = "N")]
    pub output_vocab: Option<usize>,
    /// Print a JSON list of the entries.
    #[arg(long)]
    pub json: bool,
    /// Also measure the floors and report the fraction of them reached.
    #[arg(long)]
    pub floors: bool,
}

#[derive(Debug, Args)]
pub struct FloorsArgs {
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

fn pool(threads: Option<usize>) -> Result<rayon::ThreadPool, CliError> {
    if threads == Some(0) {
        return Err(CliError::Usage("--threads must be at least 1".into()));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start threads: {e}")))
}

pub fn run(a: BenchArgs) -> Result<(), CliError> {
    match a.what {
        BenchCommand::Forward(f) => run_forward(f),
        BenchCommand::Speculative(s) => super::spec_bench::run(s),
        BenchCommand::Serve(s) => bench_serve::run(s),
        BenchCommand::Floors(f) => {
            let floors = pool(f.threads)?.install(hardware::floors);
            if f.json {
                print_json(&serde_json::to_value(&floors).map_err(std::io::Error::other)?)
            } else {
                println!(
                    "read bandwidth {:.1} GB/s, int8 peak {:.0} G multiply-adds/s ({} threads, {})",
                    floors.read_gb_per_s, floors.int8_gmacs_per_s, floors.threads, floors.isa
                );
                Ok(())
            }
        }
    }
}

fn run_forward(a: ForwardArgs) -> Result<(), CliError> {
    if a.tokens.is_empty() || a.tokens.contains(&0) {
        return Err(CliError::Usage(
            "--tokens needs positive numbers, e.g. 1,5,8".into(),
        ));
    }
    if a.repeat == 0 {
        return Err(CliError::Usage("--repeat must be at least 1".into()));
    }
    let pool = pool(a.threads)?;
    let store = WeightStore::new();
    let path = cascade_engine::fast_path(&a.model, &a.repack.policy());
    let mut model = Model::load(&store, &path, &OpenOptions::default())?;
    model.set_precision(a.precision.into());
    if let Some(n) = a.output_vocab {
        use cascade_engine::speculative::vocab::{fingerprint, VocabRank};
        let rank = VocabRank::shipped(fingerprint(&model.tokenizer)).ok_or_else(|| {
            CliError::Usage("no shipped frequency ranking for this model's tokenizer".into())
        })?;
        let ids = rank.subset(&model.tokenizer, n)?;
        model.restrict_output(&ids)?;
    }
    let none = cascade_engine::DeviceSpec::Cpu;
    let sched = Default::default();
    cascade_engine::placement::place_models(&mut model, a.device, None, none, &sched)?;
    let max_new = a.tokens.iter().copied().max().unwrap_or(1);
    if a.context + max_new > model.config.context_length {
        return Err(CliError::Usage(format!(
            "context {} plus {max_new} new tokens exceeds the model's context length {}",
            a.context, model.config.context_length
        )));
    }
    let cfg = ForwardBench {
        tokens: a.tokens.clone(),
        context: a.context,
        repeat: a.repeat,
        logits: match a.logits {
            LogitsArg::All => Logits::All,
            LogitsArg::Last => Logits::Last,
        },
        as_prompt: a.as_prompt,
        argmax: a.argmax,
    };
    let results = pool.install(|| forward::run(&model, &cfg))?;
    let floors = if a.floors {
        Some(pool.install(hardware::floors))
    } else {
        None
    };
    // Bytes of the matrices a decode step reads (every weight except the embedding table, of
    // which it reads one row), and multiply-adds per token.
    let step_bytes = model.step_weight_bytes();
    let macs_per_token = model.matmul_params() as f64;
    if a.json {
        let mut list = Vec::new();
        for r in &results {
            let mut v = serde_json::to_value(r).map_err(std::io::Error::other)?;
            if let Some(f) = &floors {
                let s = r.ms_median / 1e3;
                v["bandwidth_fraction"] = json!(step_bytes as f64 / s / 1e9 / f.read_gb_per_s);
                v["int8_fraction"] =
                    json!(macs_per_token * r.tokens as f64 / s / 1e9 / f.int8_gmacs_per_s);
            }
            list.push(v);
        }
        return print_json(&serde_json::Value::Array(list));
    }
    println!(
        "{}  ({} threads, {}, context {}, logits {:?}, {:?})",
        a.model.display(),
        pool.current_num_threads(),
        cascade_kernels::Isa::best().name(),
        a.context,
        a.logits,
        a.precision,
    );
    println!(
        "{:>7} {:>10} {:>10} {:>12} {:>8}",
        "tokens", "ms_median", "ms_min", "tokens_per_s", "vs_1"
    );
    for r in &results {
        println!(
            "{:>7} {:>10.2} {:>10.2} {:>12.2} {:>8}",
            r.tokens,
            r.ms_median,
            r.ms_min,
            r.tokens_per_s,
            r.vs_one_token
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_default()
        );
    }
    if let Some(f) = floors {
        println!(
            "floors: read {:.1} GB/s, int8 {:.0} G multiply-adds/s; weights read per step {:.1} MB, {:.2} G multiply-adds per token",
            f.read_gb_per_s,
            f.int8_gmacs_per_s,
            step_bytes as f64 / 1e6,
            macs_per_token / 1e9
        );
        for r in &results {
            let s = r.ms_median / 1e3;
            println!(
                "{:>7} tokens: {:.0}% of the bandwidth floor, {:.0}% of the int8 peak",
                r.tokens,
                100.0 * step_bytes as f64 / s / 1e9 / f.read_gb_per_s,
                100.0 * macs_per_token * r.tokens as f64 / s / 1e9 / f.int8_gmacs_per_s
            );
        }
    }
    Ok(())
}
