//! `cascade calibrate`: quality against cost over an evaluation set.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use cascade_bench::calibrate::{self, frontier, recommend, svg, CalibrateConfig, Setting};
use cascade_engine::{
    DraftLen, Engine, EngineConfig, GenerateConfig, NgramProposer, Rule, SamplingParams, SpecConfig,
};

use super::generate::{parse_draft_len, DraftLenArg, RuleArg};
use super::{print_json, CliError};

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    #[arg(long)]
    pub target: PathBuf,
    #[arg(long)]
    pub draft: PathBuf,
    /// JSON lines: {"prompt", "chat"?, "answer" (+ "match": exact|contains) or "command"}.
    #[arg(long)]
    pub eval: PathBuf,
    /// Recommend the cheapest setting scoring at least this times target-only's score.
    #[arg(long)]
    pub floor: f64,
    /// Rules to sweep, comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "chow,diff,opt,token"
    )]
    pub rules: Vec<RuleArg>,
    /// Lenience values to sweep, comma separated, each in [0, 1].
    #[arg(long, value_delimiter = ',', default_value = "0.2,0.4,0.6,0.8")]
    pub alphas: Vec<f32>,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Draft length of the speculative settings (a number or auto).
    #[arg(long, default_value = "auto", value_parser = parse_draft_len)]
    pub draft_len: DraftLenArg,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds a scoring command may run before it is killed and counted as a failure.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Where to write the frontier plot.
    #[arg(long, default_value = "calibrate.svg")]
    pub svg: PathBuf,
    /// Also run answer mode (the draft writes the answer, the target scores it in one pass).
    #[arg(long)]
    pub answer: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: CalibrateArgs) -> Result<(), CliError> {
    if !(a.floor > 0.0 && a.floor.is_finite()) {
        return Err(CliError::Usage(format!("--floor {}: must be > 0", a.floor)));
    }
    if let Some(bad) = a.alphas.iter().find(|x| !(0.0..=1.0).contains(*x)) {
        return Err(CliError::Usage(format!("--alphas: {bad} is not in [0, 1]")));
    }
    if !(a.timeout > 0.0 && a.timeout.is_finite()) {
        return Err(CliError::Usage("--timeout must be > 0 seconds".into()));
    }
    if a.threads == Some(0) {
        return Err(CliError::Usage("--threads must be at least 1".into()));
    }
    let mut items = calibrate::load(&a.eval)?;
    if let Some(n) = a.limit {
        items.truncate(n.max(1));
    }
    let engine = Engine::load(&EngineConfig {
        target: a.target.clone(),
        draft: Some(a.draft.clone()),
        threads: a.threads,
        ..Default::default()
    })?;
    let rules: Vec<Rule> = a.rules.iter().map(|&r| r.into()).collect();
    let mut settings = Setting::sweep(&rules, &a.alphas);
    if a.answer {
        settings.insert(3, Setting::Answer);
    }
    let cfg = CalibrateConfig {
        generate: GenerateConfig {
            max_tokens: a.max_tokens,
            sampling: SamplingParams::greedy(),
            stop_at_eog: true,
        },
        spec: SpecConfig {
            draft_len: match a.draft_len {
                DraftLenArg::Fixed(k) => DraftLen::Fixed(k),
                DraftLenArg::Auto => DraftLen::Auto { max: 8 },
            },
            draft_model: true,
            lookup: Some(NgramProposer::beside_draft()),
            cascade: None,
            answer: false,
        },
        timeout: Duration::from_secs_f64(a.timeout),
    };
    let total = (settings.len() * items.len()) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>14} {bar:30} {pos}/{len} {elapsed} (eta {eta})",
    ) {
        bar.set_style(style);
    }
    // A bar on a terminal; in a log (CI, nohup) the bar draws nothing, so a line per setting.
    let log_lines = !std::io::stderr().is_terminal();
    let n_items = items.len();
    let started = std::time::Instant::now();
    let results = calibrate::run(&engine, &items, &settings, &cfg, |name, i| {
        bar.set_message(name.to_string());
        bar.inc(1);
        if log_lines && i == n_items {
            eprintln!(
                "calibrate: {name} done ({}/{} runs, {:.0} s)",
                bar.position(),
                total,
                started.elapsed().as_secs_f64()
            );
        }
    })?;
    bar.finish_and_clear();

    let front = frontier(&results);
    let pick = recommend(&results, a.floor);
    let title = format!(
        "{} items, {} and {}",
        items.len(),
        file_name(&a.target),
        file_name(&a.draft)
    );
    std::fs::write(&a.svg, svg::plot(&results, Some(a.floor), &title)).map_err(|source| {
        CliError::Read {
            path: a.svg.clone(),
            source,
        }
    })?;
    // The question: a setting at least 1.3x faster than exact mode that scores within
    // one item of target-only.
    let target = results.iter().find(|r| r.setting == "target");
    let exact = results.iter().find(|r| r.setting == "exact");
    let fast = match (target, exact) {
        (Some(t), Some(e)) => results
            .iter()
            .filter(|r| r.tokens_per_s >= 1.3 * e.tokens_per_s && r.passed + 1 >= t.passed)
            .max_by(|x, y| x.tokens_per_s.total_cmp(&y.tokens_per_s))
            .map(|r| r.setting.clone()),
        _ => None,
    };
    if a.json {
        return print_json(&json!({
            "results": results,
            "frontier": front.iter().map(|&i| &results[i].setting).collect::<Vec<_>>(),
            "recommended": pick.map(|i| &results[i].setting),
            "floor": a.floor,
            "svg": a.svg,
            "faster_than_exact_within_one": fast,
        }));
    }
    println!(
        "{:>14} {:>9} {:>9} {:>12} {:>7} {:>8}",
        "setting", "score", "tokens/s", "passes/tok", "cost", "frontier"
    );
    for (i, r) in results.iter().enumerate() {
        println!(
            "{:>14} {:>4}/{:<4} {:>9.2} {:>12.3} {:>7.3} {:>8}",
            r.setting,
            r.passed,
            r.items,
            r.tokens_per_s,
            r.target_passes_per_token,
            r.cost,
            if front.contains(&i) { "*" } else { "" }
        );
    }
    if let Some(r) = results.iter().find(|r| r.setting == "answer") {
        println!(
            "answer mode: {}/{} answers passed whole, {}/{} drafted answer tokens kept",
            r.answers_whole, r.items, r.answer_kept, r.answer_drafted
        );
    }
    match pick {
        Some(i) => println!(
            "recommended (score ≥ {} × target-only): {} (cost {:.3}, score {}/{})",
            a.floor, results[i].setting, results[i].cost, results[i].passed, results[i].items
        ),
        None => println!("no setting scores ≥ {} × target-only", a.floor),
    }
    match fast {
        Some(s) => println!("≥ 1.3x exact's tokens/s within one item of target-only: {s}"),
        None => println!("no setting is ≥ 1.3x exact's tokens/s within one item of target-only"),
    }
    println!("frontier plot: {}", a.svg.display());
    Ok(())
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
