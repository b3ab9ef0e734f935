//! `cascade vocab-rank`: counts a tokenizer's tokens over text files and writes the frequency
//! ranking that `--draft-vocab N` restricts the draft's output layer with (FR-Spec).

use std::path::{Path, PathBuf};

use clap::Args;

use cascade_engine::speculative::vocab::VocabRank;
use cascade_weights::{OpenOptions, WeightStore};

use super::CliError;

#[derive(Debug, Args)]
pub struct VocabRankArgs {
    /// A model (GGUF or Hugging Face folder) whose tokenizer is ranked.
    #[arg(long)]
    pub model: PathBuf,
    /// Text files or folders (searched recursively for source and documentation files).
    #[arg(long, required = true, num_args = 1..)]
    pub corpus: Vec<PathBuf>,
    /// Read at most this many MiB of text (files in sorted path order).
    #[arg(long, default_value_t = 64)]
    pub max_mb: usize,
    /// Keep this many ids, the most frequent (a subset is never larger).
    #[arg(long, default_value_t = 65536)]
    pub keep: usize,
    /// Where to write the ranking.
    #[arg(long)]
    pub out: PathBuf,
}

/// Extensions read from folders: code and prose every machine has.
const EXTENSIONS: &[&str] = &[
    "py", "txt", "rst", "md", "jsonl", "json", "rs", "c", "h", "js", "ts", "html", "toml", "sh",
];

fn collect(p: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if p.is_file() {
        out.push(p.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for e in entries {
        if e.is_dir() && !e.is_symlink() {
            collect(&e, out)?;
        } else if e
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| EXTENSIONS.contains(&x))
        {
            out.push(e);
        }
    }
    Ok(())
}

pub fn run(a: VocabRankArgs) -> Result<(), CliError> {
    let files = WeightStore::new().open_model(&a.model, &OpenOptions::default())?;
    let mut paths = Vec::new();
    for c in &a.corpus {
        collect(c, &mut paths).map_err(|e| CliError::Usage(format!("{}: {e}", c.display())))?;
    }
    let (mut texts, mut bytes) = (Vec::new(), 0usize);
    for p in &paths {
        if bytes >= a.max_mb << 20 {
            break;
        }
        // Files that are not UTF-8 (data, encodings tests) are skipped.
        if let Ok(t) = std::fs::read_to_string(p) {
            bytes += t.len();
            texts.push(t);
        }
    }
    let mut rank = VocabRank::count(&files.tokenizer, texts.iter().map(String::as_str))?;
    rank.ids.truncate(a.keep);
    rank.save(&a.out)?;
    eprintln!(
        "{} files, {:.1} MiB of text: {} tokens ranked into {}",
        texts.len(),
        bytes as f64 / (1 << 20) as f64,
        rank.ids.len(),
        a.out.display()
    );
    Ok(())
}
