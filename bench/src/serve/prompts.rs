//! Prompt files for `cascade bench serve`.
//!
//! - `.txt`: one prompt per line (blank lines skipped).
//! - anything else: JSON lines, each `{"prompt": "..."}` or `{"messages": [{"role": ..,
//!   "content": ..}, ..]}`. Other keys are ignored, so the project's other prompt sets
//!   (`bench/prompts/speculative.jsonl` with `chat` and `kind`, `bench/eval/*.jsonl` with `id`
//!   and a scorer) can be used as they are.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::BenchError;

/// One prompt: plain text (a user message for chat, the prompt for completions) or a whole
/// conversation (chat only).
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Messages(Vec<Value>),
}

#[derive(Deserialize)]
struct Line {
    prompt: Option<String>,
    messages: Option<Vec<Value>>,
}

/// Reads a prompt file: `.txt` as lines, anything else as JSON lines.
pub fn load(path: &Path) -> Result<Vec<Prompt>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let txt = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("txt"));
    let prompts = if txt {
        parse_txt(&text)
    } else {
        parse_jsonl(&text, path)?
    };
    if prompts.is_empty() {
        return Err(BenchError::EmptyPrompts {
            path: path.to_path_buf(),
        });
    }
    Ok(prompts)
}

pub fn parse_txt(text: &str) -> Vec<Prompt> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Prompt::Text(l.to_string()))
        .collect()
}

pub fn parse_jsonl(text: &str, path: &Path) -> Result<Vec<Prompt>, BenchError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let err = |reason: String| BenchError::PromptLine {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let line: Line = serde_json::from_str(raw).map_err(|e| err(e.to_string()))?;
        out.push(match (line.prompt, line.messages) {
            (Some(p), None) => Prompt::Text(p),
            (None, Some(m)) => {
                check_messages(&m).map_err(err)?;
                Prompt::Messages(m)
            }
            (Some(_), Some(_)) => return Err(err("both `prompt` and `messages`".into())),
            (None, None) => return Err(err("neither `prompt` nor `messages`".into())),
        });
    }
    Ok(out)
}

fn check_messages(m: &[Value]) -> Result<(), String> {
    if m.is_empty() {
        return Err("`messages` is empty".into());
    }
    for (i, msg) in m.iter().enumerate() {
        if !msg.get("role").is_some_and(Value::is_string) {
            return Err(format!("message {i} has no string `role`"));
        }
        if msg.get("content").is_none() {
            return Err(format!("message {i} has no `content`"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jsonl_prompts_and_messages() {
        let text = r#"{"prompt": "Hi", "chat": true, "kind": "code"}

{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]}
"#;
        let got = parse_jsonl(text, Path::new("p.jsonl")).unwrap();
        assert_eq!(got[0], Prompt::Text("Hi".into()));
        assert_eq!(
            got[1],
            Prompt::Messages(vec![
                json!({"role": "system", "content": "Be brief."}),
                json!({"role": "user", "content": "2+2?"})
            ])
        );
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn bad_lines_name_their_line() {
        for (text, want) in [
            ("{\"prompt\": \"a\"}\n{oops", "line 2"),
            ("{\"other\": 1}", "neither"),
            ("{\"prompt\": \"a\", \"messages\": []}", "both"),
            ("{\"messages\": []}", "empty"),
            ("{\"messages\": [{\"content\": \"x\"}]}", "role"),
            ("{\"prompt\": 3}", "line 1"),
        ] {
            let e = parse_jsonl(text, Path::new("p.jsonl")).unwrap_err();
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn txt_is_one_prompt_per_line() {
        assert_eq!(
            parse_txt("one\n\n  \ntwo words\n"),
            vec![Prompt::Text("one".into()), Prompt::Text("two words".into())]
        );
    }

    #[test]
    fn the_project_prompt_sets_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for f in [
            "prompts/speculative.jsonl",
            "prompts/chat-16.jsonl",
            "eval/coding.jsonl",
        ] {
            let p = load(&root.join(f)).unwrap();
            assert!(!p.is_empty(), "{f}");
        }
        assert_eq!(load(&root.join("prompts/chat-16.jsonl")).unwrap().len(), 16);
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("e.txt");
        std::fs::write(&empty, "\n\n").unwrap();
        assert!(matches!(load(&empty), Err(BenchError::EmptyPrompts { .. })));
    }
}
