//! `cascade inspect`.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use cascade_weights::{DType, Layout, ModelFormat, OpenOptions, WeightStore};

use super::{print_json, CliError};

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A .gguf file or a Hugging Face folder.
    pub path: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InspectArgs) -> Result<(), CliError> {
    let store = WeightStore::new();
    let m = store.open_model(&a.path, &OpenOptions::default())?;
    let c = &m.config;
    let mut types: Vec<(DType, usize, usize)> = Vec::new();
    for t in m.tensors() {
        match types.iter_mut().find(|(d, _, _)| *d == t.dtype) {
            Some((_, n, b)) => {
                *n += 1;
                *b += t.bytes().len();
            }
            None => types.push((t.dtype, 1, t.bytes().len())),
        }
    }
    types.sort_by_key(|(d, _, _)| d.ggml_id());
    let interleaved = m
        .tensors()
        .filter(|t| t.layout == Layout::Interleaved8)
        .count();
    let n_params: usize = m.tensors().map(|t| t.n_elements()).sum();
    let format = match m.format {
        ModelFormat::Gguf { version } => format!("GGUF v{version}"),
        ModelFormat::Safetensors => "safetensors".to_string(),
    };
    let tok = &m.tokenizer;
    let valid = (0..tok.n_vocab() as u32)
        .filter(|&i| tok.is_valid(i))
        .count();
    if a.json {
        print_json(&json!({
            "path": a.path,
            "format": format,
            "architecture": c.arch.name(),
            "parameters": n_params,
            "weight_bytes": m.weight_bytes(),
            "layers": c.n_layers,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "heads": c.n_heads,
            "kv_heads": c.n_kv_heads,
            "head_dim": c.head_dim,
            "vocab_rows": c.vocab_size,
            "context_length": c.context_length,
            "rope_theta": c.rope_theta,
            "tied_embeddings": c.tied_embeddings,
            "interleaved_matrices": interleaved,
            "tensor_types": types.iter().map(|(d, n, b)| json!({"type": d.name(), "count": n, "bytes": b})).collect::<Vec<_>>(),
            "tokenizer": {"source": tok.source, "tokens": tok.n_vocab(), "valid_tokens": valid, "bos": tok.bos, "eos": tok.eos, "add_bos": tok.add_bos, "end_of_generation": tok.eog_ids()},
            "chat_template": tok.chat_template.is_some(),
        }))?;
        return Ok(());
    }
    println!("{}  ({format})", a.path.display());
    println!("architecture     {}", c.arch.name());
    println!(
        "parameters       {:.3} B  ({:.1} MiB of weights)",
        n_params as f64 / 1e9,
        m.weight_bytes() as f64 / (1 << 20) as f64
    );
    println!("layers           {}", c.n_layers);
    println!(
        "hidden / ffn     {} / {}",
        c.hidden_size, c.intermediate_size
    );
    println!(
        "heads / kv heads {} / {} (head dim {})",
        c.n_heads, c.n_kv_heads, c.head_dim
    );
    println!("vocab rows       {}", c.vocab_size);
    println!("context          {}", c.context_length);
    println!("rope theta       {}", c.rope_theta);
    println!("tied embeddings  {}", c.tied_embeddings);
    println!("tensor types:");
    for (d, n, b) in &types {
        println!(
            "  {:<6} {:>4} tensors  {:>10.1} MiB",
            d.name(),
            n,
            *b as f64 / (1 << 20) as f64
        );
    }
    if interleaved > 0 {
        println!("interleaved      {interleaved} matrices (written by `cascade repack`)");
    }
    println!(
        "tokenizer        {}: {} tokens ({} valid), bos {:?}, eos {:?}, add_bos {}",
        tok.source,
        tok.n_vocab(),
        valid,
        tok.bos,
        tok.eos,
        tok.add_bos
    );
    println!("end of turn      {:?}", tok.eog_ids());
    println!(
        "chat template    {}",
        if tok.chat_template.is_some() {
            "present"
        } else {
            "absent"
        }
    );
    Ok(())
}
