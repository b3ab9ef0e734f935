//! `cascade repack` on a real model: the repacked file's logits are bitwise those of the source
//! (the interleaved layout only reorders bytes for the 8-row kernels), through the binary.

mod common;

use cascade::engine::{Logits, Model};
use cascade::weights::{Layout, OpenOptions, WeightStore};

const DRAFT: &str = "qwen2.5-coder-0.5b-instruct-q4.gguf";

fn logits(path: &std::path::Path, tokens: &[u32]) -> Vec<u32> {
    let m = Model::load(&WeightStore::new(), path, &OpenOptions::default()).unwrap();
    let mut cache = m.new_cache(32).unwrap();
    // A prefill, then five tokens on top of it (a verification's shape).
    let mut out = m.forward(&tokens[..4], &mut cache, Logits::All).unwrap();
    out.extend(m.forward(&tokens[4..], &mut cache, Logits::All).unwrap());
    out.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn a_repacked_real_model_gives_bitwise_the_same_logits() {
    let src = common::real_model(DRAFT);
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("draft.r8.gguf");
    let out = common::cascade(&[
        "repack",
        "--model",
        src.to_str().unwrap(),
        "--out",
        dst.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The draft's Q4_K / Q6_K matrices (its FFN down projections); the rest is Q4_0 / Q8_0.
    assert!(v["interleaved"].as_u64().unwrap() >= 1, "{v}");
    let files = WeightStore::new()
        .open_model(&dst, &OpenOptions::default())
        .unwrap();
    let il = files
        .tensors()
        .filter(|t| t.layout == Layout::Interleaved8)
        .count();
    assert_eq!(il as u64, v["interleaved"].as_u64().unwrap());
    let tokens = [785u32, 6722, 315, 9625, 374, 12095, 13, 576, 3283];
    assert_eq!(logits(&src, &tokens), logits(&dst, &tokens));
}

#[test]
fn repacking_a_missing_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.gguf");
    let out = common::cascade(&[
        "repack",
        "--model",
        "/nonexistent/m.gguf",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    common::assert_clean_error(&out, "/nonexistent/m.gguf");
    assert!(!out_path.exists());
}
