//! `cascade repack`.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use cascade_engine::repack::repack_gguf;

use super::{print_json, spinner, CliError};

#[derive(Debug, Args)]
pub struct RepackArgs {
    /// The GGUF file to read.
    #[arg(long)]
    pub model: PathBuf,
    /// Where to write the repacked file (replaced if it exists; never the source).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: RepackArgs) -> Result<(), CliError> {
    let t0 = Instant::now();
    let pb = spinner(&format!("repacking {}", a.model.display()));
    let s = repack_gguf(&a.model, &a.out);
    pb.finish_and_clear();
    let s = s?;
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        return print_json(&json!({
            "model": a.model,
            "out": a.out,
            "interleaved": s.interleaved,
            "copied": s.copied,
            "interleaved_bytes": s.interleaved_bytes,
            "seconds": secs,
        }));
    }
    println!(
        "{}: {} matrices interleaved ({:.1} MB), {} tensors copied, in {secs:.1} s",
        a.out.display(),
        s.interleaved,
        s.interleaved_bytes as f64 / 1e6,
        s.copied
    );
    Ok(())
}
