//! Speculative decoding through the `cascade` binary and the library API on fixture models:
//! `--mode exact` gives the target's own greedy output with either proposer, `--json` carries the
//! statistics, and bad flags are clear errors.

mod common;

use std::path::{Path, PathBuf};

use cascade::engine::{
    DraftLen, Engine, EngineConfig, GenerateConfig, Mode, NgramProposer, Prompt, Request,
    SpecConfig,
};
use common::{assert_clean_error, cascade};

fn pair(dir: &Path) -> (PathBuf, PathBuf) {
    common::fixture_pair(dir)
}

fn gen_json(target: &Path, extra: &[&str]) -> serde_json::Value {
    let t = target.display().to_string();
    let mut args = vec![
        "generate",
        "--target",
        &t,
        "--prompt",
        "the cat sat on the mat and the cat",
        "--max-tokens",
        "30",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = cascade(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn exact_mode_reproduces_the_target_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (t, d) = pair(dir.path());
    let ds = d.display().to_string();
    let plain = gen_json(&t, &["--mode", "target"]);
    for extra in [
        vec!["--draft", ds.as_str()],
        vec!["--draft", ds.as_str(), "--draft-len", "3", "--threads", "1"],
        vec!["--draft", ds.as_str(), "--no-lookup", "--draft-len", "auto"],
        vec!["--draft", "ngram", "--draft-len", "5"],
    ] {
        let out = gen_json(&t, &extra);
        assert_eq!(out["mode"], "exact", "{extra:?}");
        assert_eq!(out["tokens"], plain["tokens"], "{extra:?}");
        assert_eq!(out["text"], plain["text"]);
        let s = &out["stats"];
        for key in [
            "target_passes",
            "drafted",
            "accepted",
            "acceptance_rate",
            "mean_accepted_per_pass",
            "per_position_acceptance",
            "draft_s",
            "verify_s",
            "decode_tokens_per_s",
            "draft_lengths",
        ] {
            assert!(!s[key].is_null(), "stats.{key} missing: {s}");
        }
        let n = out["tokens"].as_array().unwrap().len() as u64;
        let passes = s["target_passes"].as_u64().unwrap();
        let accepted = s["accepted"].as_u64().unwrap();
        assert_eq!(passes + accepted, n - 1, "{s}");
    }
}

#[test]
fn library_api_streams_an_exact_completion() {
    let dir = tempfile::tempdir().unwrap();
    let (t, d) = pair(dir.path());
    let engine = Engine::load(&EngineConfig {
        target: t,
        draft: Some(d),
        threads: Some(2),
        ..Default::default()
    })
    .unwrap();
    let config = GenerateConfig {
        max_tokens: 24,
        stop_at_eog: false,
        ..Default::default()
    };
    let req = |mode| Request {
        prompt: Prompt::Text("in the hat the cat".into()),
        mode,
        config,
        grammar: None,
    };
    let plain = engine.generate(&req(Mode::Target), |_| {}).unwrap();
    let mut streamed = String::new();
    let exact = engine
        .generate(&req(Mode::exact()), |piece| streamed.push_str(piece))
        .unwrap();
    assert_eq!(exact.tokens, plain.tokens);
    assert_eq!(streamed, plain.text);
    // `auto` drafts only where the measured costs say it pays (on these tiny models it may not);
    // a fixed length drafts every round.
    let fixed = Mode::Speculative(SpecConfig {
        draft_len: DraftLen::Fixed(3),
        ..Default::default()
    });
    let drafted = engine.generate(&req(fixed), |_| {}).unwrap();
    assert_eq!(drafted.tokens, plain.tokens);
    assert!(drafted.stats.drafted > 0);
    // Lookup only, no draft model needed.
    let lookup = Mode::Speculative(SpecConfig {
        draft_len: DraftLen::Fixed(4),
        draft_model: false,
        lookup: Some(NgramProposer::default()),
        ..Default::default()
    });
    assert_eq!(
        engine.generate(&req(lookup), |_| {}).unwrap().tokens,
        plain.tokens
    );
}

/// Clap's own errors exit with 2; the message still names the flag.
fn assert_usage_error(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(stderr.contains("error"), "no error line: {stderr}");
    assert!(stderr.contains(needle), "expected '{needle}' in: {stderr}");
}

#[test]
fn bad_speculative_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (t, d) = pair(dir.path());
    let (ts, ds) = (t.display().to_string(), d.display().to_string());
    let gen = |extra: &[&str]| {
        let mut args = vec!["generate", "--target", &ts, "--prompt", "x"];
        args.extend_from_slice(extra);
        cascade(&args)
    };
    assert_usage_error(
        &gen(&["--draft", &ds, "--draft-len", "0"]),
        "must be between 1 and 32",
    );
    assert_usage_error(
        &gen(&["--draft", &ds, "--draft-len", "100000"]),
        "must be between 1 and 32",
    );
    assert_usage_error(
        &gen(&["--draft", &ds, "--draft-len", "lots"]),
        "neither a number of tokens nor 'auto'",
    );
    assert_usage_error(&gen(&["--draft"]), "a value is required for '--draft");
    assert_usage_error(&gen(&["--draft", ""]), "needs a model path or 'ngram'");
    assert_clean_error(
        &gen(&["--mode", "exact"]),
        "--mode exact needs --draft PATH (a model) or --draft ngram",
    );
    assert_clean_error(
        &gen(&["--draft", &ds, "--draft-max", "0"]),
        "--draft-max 0: must be between 1 and 32",
    );
    assert_clean_error(
        &gen(&["--draft", &ds, "--ngram-min", "4", "--ngram-max", "3"]),
        "need 1 ≤ min (4) ≤ max (3)",
    );
    assert_clean_error(
        &gen(&["--draft", "ngram", "--ngram-min", "0"]),
        "need 1 ≤ min (0) ≤ max (3)",
    );
    assert_clean_error(
        &gen(&["--draft", "ngram", "--mode", "draft"]),
        "needs a draft model",
    );
    assert_clean_error(
        &gen(&["--draft", "/nonexistent/draft.gguf"]),
        "model file not found: /nonexistent/draft.gguf",
    );
    // Cascades.
    let cascade = ["--draft", ds.as_str(), "--mode", "cascade"];
    assert_clean_error(
        &gen(&[&cascade[..], &["--rule", "chow", "--alpha", "1.5"]].concat()),
        "--alpha 1.5: must be in [0, 1]",
    );
    assert_clean_error(
        &gen(&[&cascade[..], &["--rule", "chow", "--alpha=-0.1"]].concat()),
        "must be in [0, 1]",
    );
    assert_clean_error(
        &gen(&[&cascade[..], &["--rule", "diff"]].concat()),
        "--rule needs --alpha",
    );
    assert_clean_error(&gen(&cascade), "--mode cascade needs --rule");
    assert_usage_error(
        &gen(&[&cascade[..], &["--rule", "best", "--alpha", "0.1"]].concat()),
        "invalid value 'best'",
    );
    assert_clean_error(
        &gen(&[
            "--draft", "ngram", "--mode", "cascade", "--rule", "opt", "--alpha", "0.2",
        ]),
        "--mode cascade needs a draft model",
    );
    assert_clean_error(
        &gen(&["--draft", &ds, "--rule", "opt", "--alpha", "0.2"]),
        "--rule and --alpha go with --mode cascade or answer, not exact",
    );
    assert_clean_error(
        &gen(&["--mode", "answer"]),
        "--mode answer needs a draft model",
    );
}

#[test]
fn cascade_at_alpha_zero_and_answer_mode_reproduce_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let (t, d) = pair(dir.path());
    let ds = d.display().to_string();
    let plain = gen_json(&t, &["--mode", "target"]);
    for extra in [
        vec!["--mode", "cascade", "--rule", "opt", "--alpha", "0"],
        vec!["--mode", "answer"],
        vec!["--mode", "answer", "--rule", "token", "--alpha", "0"],
    ] {
        let out = gen_json(&t, &[&["--draft", ds.as_str()][..], &extra].concat());
        assert_eq!(out["tokens"], plain["tokens"], "{extra:?}");
        assert_eq!(out["mode"], extra[1]);
        let s = &out["stats"];
        for key in [
            "target_tokens",
            "draft_tokens",
            "target_s",
            "draft_s",
            "kept_by_rule",
        ] {
            assert!(!s[key].is_null(), "stats.{key} missing: {s}");
        }
        if extra[1] == "answer" {
            assert!(s["answer_drafted"].as_u64().unwrap() > 0, "{s}");
        }
    }
    // A lenient cascade keeps every token the draft model proposes (lookup proposals, which
    // have no draft distribution to judge, are verified exactly, so lookup is off here).
    let lenient = gen_json(
        &t,
        &[
            "--no-lookup",
            "--draft",
            &ds,
            "--mode",
            "cascade",
            "--rule",
            "chow",
            "--alpha",
            "1",
            "--draft-len",
            "4",
        ],
    );
    let s = &lenient["stats"];
    assert!(s["kept_by_rule"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["accepted"], s["drafted"]);
    // Draft-only decoding is charged to the draft.
    let draft = gen_json(&t, &["--draft", &ds, "--mode", "draft"]);
    let s = &draft["stats"];
    assert_eq!(s["target_tokens"], 0);
    assert!(s["draft_tokens"].as_u64().unwrap() > 0, "{s}");
}

#[test]
fn bench_speculative_runs_every_setting_per_prompt_and_checks_losslessness() {
    let dir = tempfile::tempdir().unwrap();
    let (t, d) = pair(dir.path());
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"the cat sat on the mat and the cat\", \"kind\": \"prose\"}\n\
         {\"prompt\": \"a b a b a b\", \"kind\": \"prose\"}\n",
    )
    .unwrap();
    let (ts, ds, ps) = (
        t.display().to_string(),
        d.display().to_string(),
        prompts.display().to_string(),
    );
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "speculative",
            "--target",
            &ts,
            "--prompts",
            &ps,
            "--max-tokens",
            "12",
        ];
        args.extend_from_slice(extra);
        cascade(&args)
    };
    let out = bench(&[
        "--draft",
        &ds,
        "--draft-len",
        "2,auto",
        "--lookup",
        "off,1",
        "--threads",
        "1,2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Per thread count: target-only, then lookup {off, n>=1} x draft length {2, auto}.
    assert_eq!(rows.len(), 2 * 5, "{rows:?}");
    let labels: Vec<(String, String)> = rows[..5]
        .iter()
        .map(|r| {
            (
                r["lookup"].as_str().unwrap().to_string(),
                r["draft_len"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(labels[0], ("-".to_string(), "-".to_string()));
    assert_eq!(labels[1], ("off".to_string(), "2".to_string()));
    assert_eq!(labels[4], ("n>=1".to_string(), "auto (max 8)".to_string()));
    for r in &rows {
        assert_eq!(r["prompts"], 2, "{r}");
        assert_eq!(r["identical"], 2, "{r}");
        assert!(r["median_speedup"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert_usage_error(
        &bench(&["--draft", &ds, "--lookup", "sometimes"]),
        "'sometimes' is neither 'off' nor an n-gram length of at least 1",
    );
    assert_clean_error(
        &bench(&["--draft", "ngram", "--lookup", "off"]),
        "--lookup off leaves nothing to draft",
    );
}

/// `cascade vocab-rank` writes a ranking; `--draft-vocab N --vocab-rank FILE` restricts the
/// draft's output layer to N tokens and the output is still the target's own; without a ranking
/// for the tokenizer it is a clear error.
#[test]
fn a_restricted_draft_vocabulary_keeps_exact_output() {
    let dir = tempfile::tempdir().unwrap();
    let (t, d) = pair(dir.path());
    let (ts, ds) = (t.display().to_string(), d.display().to_string());
    let text = dir.path().join("corpus.txt");
    std::fs::write(
        &text,
        "the cat sat on the mat and the cat ran. the hat, the mat.",
    )
    .unwrap();
    let rank = dir.path().join("r.rank");
    let (cs, rs) = (text.display().to_string(), rank.display().to_string());
    let out = cascade(&["vocab-rank", "--model", &ts, "--corpus", &cs, "--out", &rs]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plain = gen_json(&t, &["--mode", "target"]);
    for n in ["40", "120"] {
        let args = [
            "--draft",
            &ds,
            "--draft-len",
            "3",
            "--no-lookup",
            "--draft-vocab",
            n,
            "--vocab-rank",
            &rs,
        ];
        let out = gen_json(&t, &args);
        assert_eq!(out["tokens"], plain["tokens"], "--draft-vocab {n}");
        assert!(out["stats"]["drafted"].as_u64().unwrap() > 0);
    }
    let out = cascade(&[
        "generate",
        "--target",
        &ts,
        "--draft",
        &ds,
        "--prompt",
        "the cat",
        "--draft-vocab",
        "40",
    ]);
    common::assert_clean_error(
        &out,
        "no shipped frequency ranking for the draft's tokenizer",
    );
}
