//! Where the default model pair lives on disk, and fetching it when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::CliError;

pub const TARGET_FILE: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";
pub const DRAFT_FILE: &str = "qwen2.5-coder-0.5b-instruct-q4.gguf";

/// `$CASCADE_MODELS`, else `$XDG_CACHE_HOME/cascade/models`, else `~/.cache/cascade/models`.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CASCADE_MODELS") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("cascade").join("models")
}

/// The project's fetch script, compiled into the binary (no path of the build machine is kept
/// in it: the binary fetches the same way wherever it is copied).
pub const FETCH_SCRIPT: &str = include_str!("../scripts/fetch-models");

/// Makes sure the default pair is in `dir`, running the fetch script (which shows progress on
/// stderr and checks sha256 sums) when a file is missing.
pub fn ensure_default_pair(dir: &Path) -> Result<(PathBuf, PathBuf), CliError> {
    let target = dir.join(TARGET_FILE);
    let draft = dir.join(DRAFT_FILE);
    if !(target.exists() && draft.exists()) {
        eprintln!(
            "models missing in {}; fetching them (scripts/fetch-models, built in)",
            dir.display()
        );
        let status = run_fetch_script(dir)
            .map_err(|e| CliError::Fetch(format!("cannot run python3: {e}")))?;
        if !status.success() {
            return Err(CliError::Fetch(format!(
                "scripts/fetch-models failed ({status})"
            )));
        }
    }
    Ok((target, draft))
}

/// Runs the built-in fetch script with `python3 -` (the script on standard input).
fn run_fetch_script(dir: &Path) -> std::io::Result<std::process::ExitStatus> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .arg("-")
        .arg("--dest")
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(FETCH_SCRIPT.as_bytes())?;
    }
    child.wait()
}
