//! `cascade calibrate` on fixture models: every setting runs and is scored (answers, commands,
//! a hanging command bounded by the timeout), the JSON report carries the frontier and the
//! recommendation, the SVG is written, and bad input is a clear error.

mod common;

use cascade::engine::fixture::FixtureSpec;
use common::{assert_clean_error, cascade};

#[test]
fn calibrate_sweeps_scores_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let t = common::write_fixture(dir.path(), "t.gguf", &FixtureSpec::default());
    let d = common::write_fixture(
        dir.path(),
        "d.gguf",
        &FixtureSpec {
            seed: 5,
            ..Default::default()
        },
    );
    let eval = dir.path().join("eval.jsonl");
    std::fs::write(
        &eval,
        [
            r#"{"id": "any", "prompt": "the cat", "chat": false, "command": "true"}"#,
            r#"{"id": "never", "prompt": "the hat", "chat": false, "answer": "no such output"}"#,
            r#"{"id": "hangs", "prompt": "a", "command": ["sleep", "30"]}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let svg = dir.path().join("f.svg");
    let (ts, ds, es, ss) = (
        t.display().to_string(),
        d.display().to_string(),
        eval.display().to_string(),
        svg.display().to_string(),
    );
    let args = [
        "calibrate",
        "--target",
        &ts,
        "--draft",
        &ds,
        "--eval",
        &es,
        "--floor",
        "0.9",
        "--rules",
        "chow,token",
        "--alphas",
        "0.5,1",
        "--max-tokens",
        "8",
        "--timeout",
        "0.5",
        "--svg",
        &ss,
        "--json",
    ];
    let started = std::time::Instant::now();
    let out = cascade(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 7 settings × the hanging item: bounded by the timeout, not by the command.
    assert!(started.elapsed().as_secs() < 25);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["setting"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "target",
            "draft",
            "exact",
            "chow α=0.5",
            "chow α=1",
            "token α=0.5",
            "token α=1"
        ]
    );
    for r in results {
        // "any" passes, "never" fails, "hangs" times out.
        assert_eq!(r["passed"], 1, "{r}");
        assert_eq!(r["timeouts"], 1, "{r}");
        assert_eq!(r["items"], 3);
        assert!(r["cost"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(results[0]["cost"], 1.0);
    assert!(!v["recommended"].is_null());
    assert!(!v["frontier"].as_array().unwrap().is_empty());
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(plot.matches("<circle").count(), 7);
}

#[test]
fn calibrate_bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let t = common::write_fixture(dir.path(), "t.gguf", &FixtureSpec::default());
    let ts = t.display().to_string();
    let eval = dir.path().join("eval.jsonl");
    std::fs::write(
        &eval,
        "{\"prompt\": \"a\", \"answer\": \"b\"}\n{\"prompt\": \"a\", \"answr\": \"b\"}\n",
    )
    .unwrap();
    let es = eval.display().to_string();
    let run = |extra: &[&str]| {
        let mut args = vec!["calibrate", "--target", &ts, "--draft", &ts, "--eval", &es];
        args.extend_from_slice(extra);
        cascade(&args)
    };
    assert_clean_error(
        &run(&["--floor", "0.9"]),
        "eval.jsonl line 2: unknown field `answr`",
    );
    std::fs::write(&eval, "{\"prompt\": \"a\", \"answer\": \"b\"}\n").unwrap();
    assert_clean_error(
        &run(&["--floor", "0.9", "--alphas", "0.5,1.5"]),
        "1.5 is not in [0, 1]",
    );
    assert_clean_error(&run(&["--floor", "0"]), "--floor 0: must be > 0");
    let missing = dir.path().join("none.jsonl").display().to_string();
    let mut args = vec!["calibrate", "--target", &ts, "--draft", &ts, "--floor", "1"];
    args.extend_from_slice(&["--eval", &missing]);
    assert_clean_error(&cascade(&args), "cannot read");
}
