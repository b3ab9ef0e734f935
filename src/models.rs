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

/// The project's fetch script (shipped in the source tree).
pub fn fetch_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join("fetch-models")
}

/// Makes sure the default pair is in `dir`, running the fetch script (which shows progress on
/// stderr and checks sha256 sums) when a file is missing.
pub fn ensure_default_pair(dir: &Path) -> Result<(PathBuf, PathBuf), CliError> {
    let target = dir.join(TARGET_FILE);
    let draft = dir.join(DRAFT_FILE);
    if !(target.exists() && draft.exists()) {
        let script = fetch_script();
        eprintln!(
            "models missing in {}; fetching with {}",
            dir.display(),
            script.display()
        );
        let status = Command::new("python3")
            .arg(&script)
            .arg("--dest")
            .arg(dir)
            .status()
            .map_err(|e| CliError::Fetch(format!("cannot run {}: {e}", script.display())))?;
        if !status.success() {
            return Err(CliError::Fetch(format!(
                "{} failed ({status})",
                script.display()
            )));
        }
    }
    Ok((target, draft))
}
