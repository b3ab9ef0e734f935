//! Token ids of the real models' tokenizers against llama.cpp (GGUF) and the Hugging Face
//! `tokenizers` library (tokenizer.json), recorded by scripts/reference/reference.py.

mod common;

use common::ids;

use cascade::weights::{OpenOptions, Tokenizer, WeightStore};

fn reference() -> serde_json::Value {
    serde_json::from_str(include_str!("data/reference/tokenize.json")).unwrap()
}

fn check(tok: &Tokenizer, key: &str) {
    let r = reference();
    let cases = r["cases"].as_array().unwrap();
    let want = r["models"][key].as_array().unwrap();
    let mut failures = Vec::new();
    for (case, want) in cases.iter().zip(want) {
        let text = case.as_str().unwrap();
        let got = tok.encode(text, false).unwrap();
        if got != ids(want) {
            failures.push(format!("{text:?}: ours {got:?}, reference {:?}", ids(want)));
        }
        // Decoding gives the text back (the tokenizers are byte-level and lossless).
        assert_eq!(tok.decode(&got), text, "round trip of {text:?}");
    }
    assert!(
        failures.is_empty(),
        "{key}: {} of {} differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn gguf_tokenizer(file: &str) -> Tokenizer {
    WeightStore::new()
        .open_model(&common::real_model(file), &OpenOptions::default())
        .unwrap()
        .tokenizer
}

#[test]
fn qwen_target_gguf_matches_llama_cpp() {
    check(
        &gguf_tokenizer("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
        "qwen-target",
    );
}

#[test]
fn qwen_draft_gguf_matches_llama_cpp() {
    check(
        &gguf_tokenizer("qwen2.5-coder-0.5b-instruct-q4.gguf"),
        "qwen-draft",
    );
}

#[test]
fn smollm_gguf_matches_llama_cpp() {
    check(&gguf_tokenizer("smollm2-135m-instruct-q4_1.gguf"), "smollm");
}

#[test]
fn qwen_tokenizer_json_matches_hugging_face_and_gguf() {
    let base = gguf_tokenizer("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf");
    let json =
        Tokenizer::from_json_file(&common::real_model("qwen2.5-tokenizer.json"), Some(&base))
            .unwrap();
    check(&json, "qwen-tokenizer-json");
    check(&json, "qwen-target");
}

#[test]
fn draft_and_target_share_one_tokenizer() {
    let t = gguf_tokenizer("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf");
    let d = gguf_tokenizer("qwen2.5-coder-0.5b-instruct-q4.gguf");
    assert_eq!(t.first_difference(&d), None);
    let s = gguf_tokenizer("smollm2-135m-instruct-q4_1.gguf");
    let diff = t.first_difference(&s).expect("Qwen and SmolLM2 differ");
    assert!(diff.starts_with("token "), "{diff}");
}
