//! `cascade bench serve`: load on an OpenAI-compatible server (a running one at `--url`, or
//! `cascade serve` started here on `--target`), per concurrency level: throughput, TTFT / TPOT /
//! ITL / E2EL, acceptance (vLLM's counters), cost per million output tokens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgGroup, Args, ValueEnum};
use serde::Serialize;
use serde_json::{json, Value};

use cascade_bench::serve::server::{self, LocalServer};
use cascade_bench::serve::svg::{self as serve_svg, Series, XAxis};
use cascade_bench::serve::{self, prompts, Endpoint, Level, Report, ServeBench, Summary};
use cascade_bench::BenchError;

use crate::cli::{spinner, CliError};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("server").required(true).args(["url", "target"])))]
pub struct BenchServeArgs {
    /// Base URL of a running OpenAI-compatible server, e.g. http://127.0.0.1:8080 (with or
    /// without /v1).
    #[arg(long)]
    pub url: Option<String>,
    /// Start `cascade serve` on this target model for the run instead.
    #[arg(long)]
    pub target: Option<PathBuf>,
    /// Draft model of the started server.
    #[arg(long)]
    pub draft: Option<PathBuf>,
    /// Decoding mode of the started server.
    #[arg(long, value_enum)]
    pub mode: Option<ServeMode>,
    /// Worker threads of the started server.
    #[arg(long)]
    pub threads: Option<usize>,
    /// One more argument for the started server (repeat: --server-arg=--max-batch=16).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Seconds to wait for the started server's /health.
    #[arg(long, default_value_t = 300)]
    pub server_timeout_s: u64,
    /// Prompts: .jsonl ({"prompt": ..} or {"messages": [..]} per line) or .txt (one per line).
    #[arg(long)]
    pub prompts: PathBuf,
    /// Concurrency levels (most requests in flight), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub concurrency: Vec<usize>,
    /// Requests per level.
    #[arg(long, default_value_t = 64)]
    pub requests: usize,
    /// max_tokens of every request.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Model name sent (default: the first id of /v1/models).
    #[arg(long)]
    pub model: Option<String>,
    /// Bearer token (also passed to a started server).
    #[arg(long)]
    pub api_key: Option<String>,
    #[arg(long, value_enum, default_value_t = EndpointArg::Chat)]
    pub endpoint: EndpointArg,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Price of the machine in dollars per hour: adds dollars per million output tokens.
    #[arg(long)]
    pub price_per_hour: Option<f64>,
    /// Print one JSON object (settings and levels) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Write output tokens/s against median latency to this SVG file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// The latency on the SVG's x axis.
    #[arg(long, value_enum, default_value_t = SvgX::Tpot)]
    pub svg_x: SvgX,
    /// Earlier `--json` outputs to draw beside this run in the SVG (repeat).
    #[arg(long = "svg-with")]
    pub svg_with: Vec<PathBuf>,
    /// This run's name in the SVG's legend and the JSON.
    #[arg(long)]
    pub label: Option<String>,
    /// Requests sent before the first level, not counted.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Poisson arrivals at this many requests/s (capped by the concurrency), or inf.
    #[arg(long, default_value = "inf", value_parser = parse_rate)]
    pub request_rate: Rate,
    /// A request still running after this many seconds counts as failed.
    #[arg(long, default_value_t = 600.0)]
    pub timeout_s: f64,
    /// Seed of the arrival times.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServeMode {
    Target,
    Exact,
    Cascade,
    Answer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EndpointArg {
    Chat,
    Completions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SvgX {
    Tpot,
    E2el,
}

/// `--request-rate`: requests per second, None for inf.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(pub Option<f64>);

fn parse_rate(s: &str) -> Result<Rate, String> {
    if s.eq_ignore_ascii_case("inf") {
        return Ok(Rate(None));
    }
    match s.parse::<f64>() {
        Ok(r) if r.is_infinite() && r > 0.0 => Ok(Rate(None)),
        Ok(r) if r > 0.0 => Ok(Rate(Some(r))),
        _ => Err(format!("'{s}' is neither a positive number nor inf")),
    }
}

pub fn run(a: BenchServeArgs) -> Result<(), CliError> {
    let timeout = Duration::try_from_secs_f64(a.timeout_s)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| {
            CliError::Usage("--timeout-s must be a positive number of seconds".into())
        })?;
    if a.price_per_hour.is_some_and(|p| p.is_nan() || p < 0.0) {
        return Err(CliError::Usage(
            "--price-per-hour must not be negative".into(),
        ));
    }
    let server_only =
        a.draft.is_some() || a.mode.is_some() || a.threads.is_some() || !a.server_args.is_empty();
    if a.target.is_none() && server_only {
        return Err(CliError::Usage(
            "--draft, --mode, --threads and --server-arg configure a server started with --target"
                .into(),
        ));
    }
    if a.threads == Some(0) {
        return Err(CliError::Usage("--threads must be at least 1".into()));
    }
    let prompts = prompts::load(&a.prompts)?;
    let local = match &a.target {
        Some(t) => Some(start_server(&a, t)?),
        None => None,
    };
    let url = match (&local, &a.url) {
        (Some(s), _) => s.url(),
        (None, Some(u)) => u.clone(),
        (None, None) => return Err(CliError::Usage("--url or --target is needed".into())),
    };
    let cfg = ServeBench {
        url,
        model: a.model.clone(),
        model_fallback: a.target.as_deref().map(file_stem),
        api_key: a.api_key.clone(),
        endpoint: match a.endpoint {
            EndpointArg::Chat => Endpoint::Chat,
            EndpointArg::Completions => Endpoint::Completions,
        },
        prompts,
        concurrency: a.concurrency.clone(),
        requests: a.requests,
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        warmup: a.warmup,
        request_rate: a.request_rate.0,
        timeout,
        price_per_hour: a.price_per_hour,
        seed: a.seed,
    };
    let report = serve::run_with(&cfg, &mut progress);
    if let Some(s) = local {
        s.stop();
    }
    let report = report?;
    let label = a
        .label
        .clone()
        .unwrap_or_else(|| default_label(&a, &report));
    if let Some(path) = &a.svg {
        write_svg(&a, path, &report, &label)?;
    }
    if a.json {
        return print_json_report(&a, &report, &label);
    }
    print_tables(&report, &label);
    Ok(())
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// `cascade serve` on a free port, healthy.
fn start_server(a: &BenchServeArgs, target: &Path) -> Result<LocalServer, CliError> {
    let exe = std::env::current_exe()?;
    let port = server::free_port()?;
    let mut args: Vec<String> = vec!["serve".into(), "--target".into(), path_arg(target)];
    if let Some(d) = &a.draft {
        args.extend(["--draft".into(), path_arg(d)]);
    }
    if let Some(m) = a.mode {
        args.extend(["--mode".into(), mode_name(m).into()]);
    }
    args.extend(["--host".into(), "127.0.0.1".into()]);
    args.extend(["--port".into(), port.to_string()]);
    if let Some(t) = a.threads {
        args.extend(["--threads".into(), t.to_string()]);
    }
    if let Some(k) = &a.api_key {
        args.extend(["--api-key".into(), k.clone()]);
    }
    args.extend(a.server_args.iter().cloned());
    let sp = spinner(&format!("starting cascade serve on port {port}"));
    let timeout = Duration::from_secs(a.server_timeout_s);
    let server = LocalServer::start(&exe, &args, port, timeout);
    sp.finish_and_clear();
    server.map_err(CliError::from)
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn mode_name(m: ServeMode) -> &'static str {
    match m {
        ServeMode::Target => "target",
        ServeMode::Exact => "exact",
        ServeMode::Cascade => "cascade",
        ServeMode::Answer => "answer",
    }
}

fn default_label(a: &BenchServeArgs, r: &Report) -> String {
    match &a.target {
        Some(t) => {
            let mode = a.mode.map_or("default", mode_name);
            format!("cascade serve {} ({mode})", file_stem(t))
        }
        None => format!("{} @ {}", r.settings.model, r.settings.url),
    }
}

fn progress(l: &Level) {
    eprintln!(
        "concurrency {}: {} completed, {} failed, {:.1} output tokens/s",
        l.concurrency, l.completed, l.failed, l.output_throughput
    );
}

/// The JSON output: the report's settings (in their order) with the run's label, the prompt
/// file and a started server's settings, then the levels.
#[derive(Serialize)]
struct JsonReport<'a> {
    settings: JsonSettings<'a>,
    levels: &'a [Level],
}

#[derive(Serialize)]
struct JsonSettings<'a> {
    #[serde(flatten)]
    settings: &'a serve::Settings,
    label: &'a str,
    prompts_file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<Value>,
}

fn print_json_report(a: &BenchServeArgs, r: &Report, label: &str) -> Result<(), CliError> {
    let server = a.target.as_ref().map(|t| {
        json!({
            "target": t.display().to_string(),
            "draft": a.draft.as_ref().map(|d| d.display().to_string()),
            "mode": a.mode.map(mode_name),
            "threads": a.threads,
            "args": a.server_args,
        })
    });
    let out = JsonReport {
        settings: JsonSettings {
            settings: &r.settings,
            label,
            prompts_file: a.prompts.display().to_string(),
            server,
        },
        levels: &r.levels,
    };
    println!(
        "{}",
        serde_json::to_string(&out).map_err(std::io::Error::other)?
    );
    Ok(())
}

fn write_svg(a: &BenchServeArgs, path: &Path, r: &Report, label: &str) -> Result<(), CliError> {
    let earlier = a
        .svg_with
        .iter()
        .map(|p| read_report(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut series = vec![Series {
        name: label.to_string(),
        levels: &r.levels,
    }];
    series.extend(earlier.iter().map(|(name, rep)| Series {
        name: name.clone(),
        levels: &rep.levels,
    }));
    let axis = match a.svg_x {
        SvgX::Tpot => XAxis::Tpot,
        SvgX::E2el => XAxis::E2el,
    };
    let title = format!(
        "output throughput vs latency, {} requests per level, max {} tokens",
        r.settings.requests, r.settings.max_tokens
    );
    let svg = serve_svg::plot(&series, axis, &title);
    std::fs::write(path, svg).map_err(|source| BenchError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// An earlier `--json` output: its label (or file name) and report.
fn read_report(p: &Path) -> Result<(String, Report), CliError> {
    let text = std::fs::read_to_string(p).map_err(|source| CliError::Read {
        path: p.to_path_buf(),
        source,
    })?;
    let bad = |e: serde_json::Error| CliError::Usage(format!("{}: {e}", p.display()));
    let v: Value = serde_json::from_str(&text).map_err(bad)?;
    let label = v["settings"]["label"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| file_stem(p));
    Ok((label, serde_json::from_value(v).map_err(bad)?))
}

fn print_tables(r: &Report, label: &str) {
    let s = &r.settings;
    let rate = s
        .request_rate
        .map_or("inf".to_string(), |x| format!("{x}/s"));
    println!(
        "{label}: model {}, {} endpoint, {} requests per level, max {} tokens, temperature {}, request rate {rate}, {} prompts",
        s.model,
        s.endpoint.name(),
        s.requests, s.max_tokens, s.temperature, s.prompts
    );
    println!(
        "{:>5} {:>5} {:>5} {:>8} {:>7} {:>9} {:>9} {:>7} {:>7} {:>7} {:>8}",
        "conc",
        "ok",
        "fail",
        "dur_s",
        "req/s",
        "out_tok/s",
        "tot_tok/s",
        "cached",
        "accept",
        "acc_len",
        "$/Mtok"
    );
    for l in &r.levels {
        let acc = l.acceptance;
        // The share of prompt tokens the server's prefix cache served.
        let cached = match (l.cached_input_tokens, l.input_tokens) {
            (Some(c), Some(i)) if i > 0 => Some(c as f64 / i as f64),
            _ => None,
        };
        println!(
            "{:>5} {:>5} {:>5} {:>8.2} {:>7.2} {:>9.1} {:>9} {:>7} {:>7} {:>7} {:>8}",
            l.concurrency,
            l.completed,
            l.failed,
            l.duration_s,
            l.request_throughput,
            l.output_throughput,
            opt(l.total_token_throughput, 1),
            opt(cached, 3),
            opt(acc.map(|a| a.acceptance_rate), 3),
            opt(acc.map(|a| a.mean_accepted_length), 2),
            opt(l.usd_per_million_output_tokens, 3),
        );
    }
    println!();
    print_latencies(&r.levels);
    print_notes(&r.levels);
}

fn print_latencies(levels: &[Level]) {
    let mut head = format!("{:>5}", "ms");
    for m in ["TTFT", "TPOT", "ITL", "E2EL"] {
        head.push_str(&format!(
            " {:>8} {:>8} {:>8}",
            format!("{m} med"),
            "mean",
            "p99"
        ));
    }
    println!("{head}");
    for l in levels {
        let mut row = format!("{:>5}", l.concurrency);
        for s in [l.ttft_ms, l.tpot_ms, l.itl_ms, l.e2el_ms] {
            let f = |g: fn(&Summary) -> f64| opt(s.as_ref().map(g), 1);
            row.push_str(&format!(
                " {:>8} {:>8} {:>8}",
                f(|s| s.median),
                f(|s| s.mean),
                f(|s| s.p99)
            ));
        }
        println!("{row}");
    }
}

fn print_notes(levels: &[Level]) {
    for l in levels {
        if l.failed > 0 {
            let causes: Vec<String> = l
                .failures
                .iter()
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect();
            println!(
                "concurrency {}: {} failed ({}); e.g. {}",
                l.concurrency,
                l.failed,
                causes.join(", "),
                l.errors.join("; ")
            );
        }
        if l.tokens_from_chunks > 0 {
            println!(
                "concurrency {}: {} of {} requests sent no usage: their output tokens are counted as content chunks",
                l.concurrency, l.tokens_from_chunks, l.completed
            );
        }
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.decimals$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        a: BenchServeArgs,
    }

    fn parse(args: &str) -> Result<BenchServeArgs, clap::Error> {
        use clap::Parser;
        let argv = std::iter::once("bench-serve").chain(args.split_whitespace());
        Wrap::try_parse_from(argv).map(|w| w.a)
    }

    /// The flag names are a contract that users script against.
    #[test]
    fn contract_flags_parse() {
        let a = parse(
            "--url http://h:1 --prompts p.jsonl --concurrency 1,2,4 --requests 9 --max-tokens 7 \
             --model m --api-key k --endpoint completions --temperature 0.5 \
             --price-per-hour 2.5 --json --svg o.svg --warmup 3 --request-rate 4 --timeout-s 9",
        )
        .unwrap();
        assert_eq!(a.concurrency, vec![1, 2, 4]);
        assert_eq!((a.requests, a.max_tokens, a.warmup), (9, 7, 3));
        assert_eq!(a.endpoint, EndpointArg::Completions);
        assert_eq!(a.request_rate, Rate(Some(4.0)));
        assert!(a.json && a.svg.is_some() && a.price_per_hour == Some(2.5));
        let a = parse(
            "--target t.gguf --draft d.gguf --mode exact --threads 2 --prompts p.txt \
             --server-arg --max-batch --server-arg=16",
        )
        .unwrap();
        assert_eq!(a.server_args, vec!["--max-batch", "16"]);
        assert_eq!((a.mode, a.threads), (Some(ServeMode::Exact), Some(2)));
        assert_eq!(a.concurrency, vec![1, 2, 4, 8, 16]);
        assert!(parse("--prompts p.txt").is_err());
        assert!(parse("--url u --target t --prompts p.txt").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("inf").unwrap(), Rate(None));
        assert_eq!(parse_rate("2.5").unwrap(), Rate(Some(2.5)));
        assert!(parse_rate("0").is_err() && parse_rate("x").is_err());
    }
}
