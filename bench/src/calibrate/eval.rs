//! Evaluation files for `cascade calibrate`: one JSON object per line, a prompt and a way to
//! score the model's output.
//!
//! ```json
//! {"id": "fib", "prompt": "Write fib(n) ...", "chat": true, "command": "python3 check.py fib"}
//! {"prompt": "The capital of France is", "chat": false, "answer": "Paris", "match": "contains"}
//! ```
//!
//! `command` (a shell string, or an argument list) reads the output on stdin and exits 0 when it
//! passes; it runs in the current directory with a time limit, and a command that overruns it is
//! killed and counted as a failure. `answer` is compared exactly (after trimming whitespace) or,
//! with `"match": "contains"`, as a substring.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::BenchError;

/// How an answer is compared with the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchKind {
    Exact,
    Contains,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
enum CommandSpec {
    Shell(String),
    Argv(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: Option<String>,
    prompt: String,
    #[serde(default = "yes")]
    chat: bool,
    answer: Option<String>,
    #[serde(rename = "match")]
    match_kind: Option<MatchKind>,
    command: Option<CommandSpec>,
}

fn yes() -> bool {
    true
}

/// How one item is scored.
#[derive(Debug, Clone, PartialEq)]
pub enum Scorer {
    Answer {
        text: String,
        kind: MatchKind,
    },
    /// Program and arguments; the output goes to its stdin.
    Command(Vec<String>),
}

/// One evaluation item.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalItem {
    pub id: String,
    pub prompt: String,
    /// Wrap the prompt with the model's chat template.
    pub chat: bool,
    pub scorer: Scorer,
}

/// The result of scoring one output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    /// The scoring command overran its time limit (a failure).
    Timeout,
}

/// Reads an evaluation file; a malformed line is an error naming the file and line.
pub fn load(path: &Path) -> Result<Vec<EvalItem>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |line: usize, reason: String| BenchError::EvalLine {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut items = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(raw).map_err(|e| bad(n, e.to_string()))?;
        if l.prompt.is_empty() {
            return Err(bad(n, "the prompt is empty".into()));
        }
        let scorer = match (l.answer, l.command) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    n,
                    "give either \"answer\" or \"command\", not both".into(),
                ))
            }
            (None, None) => {
                return Err(bad(
                    n,
                    "needs \"answer\" or \"command\" to score the output".into(),
                ))
            }
            (Some(text), None) => Scorer::Answer {
                text,
                kind: l.match_kind.unwrap_or(MatchKind::Exact),
            },
            (None, Some(c)) => {
                if l.match_kind.is_some() {
                    return Err(bad(n, "\"match\" goes with \"answer\"".into()));
                }
                let argv = match c {
                    CommandSpec::Shell(s) if s.trim().is_empty() => {
                        return Err(bad(n, "the command is empty".into()))
                    }
                    CommandSpec::Shell(s) => vec!["sh".into(), "-c".into(), s],
                    CommandSpec::Argv(v) if v.is_empty() => {
                        return Err(bad(n, "the command is empty".into()))
                    }
                    CommandSpec::Argv(v) => v,
                };
                Scorer::Command(argv)
            }
        };
        items.push(EvalItem {
            id: l.id.unwrap_or_else(|| format!("line {n}")),
            prompt: l.prompt,
            chat: l.chat,
            scorer,
        });
    }
    if items.is_empty() {
        return Err(BenchError::EmptyEval {
            path: path.to_path_buf(),
        });
    }
    Ok(items)
}

impl EvalItem {
    /// Scores `output`; a command gets `timeout` (then it is killed).
    pub fn score(&self, output: &str, timeout: Duration) -> Outcome {
        match &self.scorer {
            Scorer::Answer { text, kind } => {
                let ok = match kind {
                    MatchKind::Exact => output.trim() == text.trim(),
                    MatchKind::Contains => output.contains(text.as_str()),
                };
                if ok {
                    Outcome::Pass
                } else {
                    Outcome::Fail
                }
            }
            Scorer::Command(argv) => run_command(argv, output, timeout),
        }
    }
}

fn run_command(argv: &[String], input: &str, timeout: Duration) -> Outcome {
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return Outcome::Fail;
    };
    // Feed stdin from another thread: a command that never reads must not block us.
    if let Some(mut stdin) = child.stdin.take() {
        let data = input.to_owned();
        std::thread::spawn(move || {
            let _ = stdin.write_all(data.as_bytes());
        });
    }
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return if status.success() {
                    Outcome::Pass
                } else {
                    Outcome::Fail
                }
            }
            Ok(None) if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Outcome::Timeout;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => return Outcome::Fail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("eval.jsonl");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn parses_answers_and_commands() {
        let (_d, p) = write(concat!(
            r#"{"id": "a", "prompt": "2+2=", "chat": false, "answer": "4"}"#,
            "\n\n",
            r#"{"prompt": "capital?", "answer": "Paris", "match": "contains"}"#,
            "\n",
            r#"{"prompt": "x", "command": ["grep", "-q", "ok"]}"#,
            "\n",
            r#"{"prompt": "y", "command": "grep -q ok"}"#,
        ));
        let items = load(&p).unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(items[1].id, "line 3");
        assert!(items[1].chat);
        assert_eq!(
            items[0].score(" 4\n", Duration::from_secs(5)),
            Outcome::Pass
        );
        assert_eq!(items[0].score("44", Duration::from_secs(5)), Outcome::Fail);
        assert_eq!(
            items[1].score("It is Paris.", Duration::from_secs(5)),
            Outcome::Pass
        );
        for it in &items[2..] {
            assert_eq!(it.score("all ok", Duration::from_secs(5)), Outcome::Pass);
            assert_eq!(it.score("nope", Duration::from_secs(5)), Outcome::Fail);
        }
    }

    #[test]
    fn malformed_lines_are_named() {
        for (text, needle) in [
            (
                "{\"prompt\": \"a\", \"answer\": \"b\"}\n{not json",
                "line 2",
            ),
            ("{\"prompt\": \"a\"}", "needs \"answer\" or \"command\""),
            (
                "{\"prompt\": \"a\", \"answer\": \"b\", \"command\": \"true\"}",
                "not both",
            ),
            (
                "{\"prompt\": \"\", \"answer\": \"b\"}",
                "the prompt is empty",
            ),
            (
                "{\"prompt\": \"a\", \"answer\": \"b\", \"score\": 1}",
                "unknown field",
            ),
            (
                "{\"prompt\": \"a\", \"command\": []}",
                "the command is empty",
            ),
        ] {
            let (_d, p) = write(text);
            let e = load(&p).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
            assert!(e.contains("eval.jsonl line"), "{e}");
        }
        let (_d, p) = write("\n\n");
        assert!(matches!(load(&p), Err(BenchError::EmptyEval { .. })));
    }

    #[test]
    fn a_hanging_command_times_out_as_a_failure() {
        let item = EvalItem {
            id: "hang".into(),
            prompt: "x".into(),
            chat: false,
            scorer: Scorer::Command(vec!["sleep".into(), "30".into()]),
        };
        let t = Instant::now();
        assert_eq!(
            item.score("x", Duration::from_millis(200)),
            Outcome::Timeout
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        let missing = EvalItem {
            scorer: Scorer::Command(vec!["/nonexistent/scorer".into()]),
            ..item
        };
        assert_eq!(missing.score("x", Duration::from_secs(1)), Outcome::Fail);
    }
}
