//! `cascade tokenize`.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use cascade_weights::{OpenOptions, WeightStore};

use super::{print_json, CliError};

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// A .gguf file or a Hugging Face folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Use this tokenizer.json instead of the model's own tokenizer.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    /// Prepend BOS when the model asks for it.
    #[arg(long)]
    pub add_bos: bool,
    /// The text (use `--` before text that starts with a dash).
    pub text: String,
}

pub fn run(a: TokenizeArgs) -> Result<(), CliError> {
    let store = WeightStore::new();
    let model = store.open_model(
        &a.model,
        &OpenOptions {
            tokenizer_json: a.tokenizer.clone(),
        },
    )?;
    let ids = model.tokenizer.encode(&a.text, a.add_bos)?;
    if a.json {
        print_json(&json!({ "ids": ids }))?;
    } else {
        let s: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("{}", s.join(" "));
    }
    Ok(())
}
