//! The fuzz inputs' file format, shared with `tests/fuzz_seeds.rs` (which includes this file by
//! path): several files in one input, separated by a marker line.

use std::path::Path;

/// The line that separates the files of a multi-file input (a Hugging Face folder).
pub const SECTION: &[u8] = b"\n--cascade-fuzz-file--\n";

/// `data` split at each [`SECTION`] line.
pub fn sections(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = find_section(rest) {
        out.push(&rest[..i]);
        rest = &rest[i + SECTION.len()..];
    }
    out.push(rest);
    out
}

/// Where the first [`SECTION`] starts. Only line starts are compared whole: libFuzzer traces
/// every `memcmp`, and one per position would dominate the multi-file targets' time.
fn find_section(hay: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(off) = hay[from..].iter().position(|&b| b == SECTION[0]) {
        let i = from + off;
        if hay[i..].starts_with(SECTION) {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// Writes a Hugging Face folder input into `dir`: `config.json`, the safetensors file,
/// `tokenizer.json`, and with a fourth part `model.safetensors.index.json` (the safetensors
/// file then being its one shard, `model-00001-of-00001.safetensors`).
pub fn write_folder(parts: &[&[u8]], dir: &Path) -> std::io::Result<()> {
    let names: &[&str] = if parts.len() > 3 {
        &[
            "config.json",
            "model-00001-of-00001.safetensors",
            "tokenizer.json",
            "model.safetensors.index.json",
        ]
    } else {
        &["config.json", "model.safetensors", "tokenizer.json"]
    };
    for (name, bytes) in names.iter().zip(parts) {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}
