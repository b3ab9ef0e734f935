//! Bad input through the `cascade` binary: each gives exit code 1 and a clear `error:` line that
//! names the problem, never a panic or a hang.

mod common;

use std::path::{Path, PathBuf};

use cascade::engine::fixture::{self, FixtureSpec};
use cascade::weights::Value;
use common::{assert_clean_error, cascade};

fn fixture(dir: &Path) -> PathBuf {
    common::write_fixture(dir, "m.gguf", &FixtureSpec::default())
}

fn gen_args(model: &Path) -> Vec<String> {
    vec![
        "generate".into(),
        "--target".into(),
        model.display().to_string(),
        "--max-tokens".into(),
        "4".into(),
    ]
}

fn run_gen(model: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = gen_args(model);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cascade(&refs)
}

#[test]
fn a_fixture_generates() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture(dir.path());
    let out = run_gen(&m, &["--prompt", "the cat", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The tokens are the model's own greedy choices: a plain argmax loop over `Model::forward`
    // in this process (no scheduler, no sampler) must pick the same ones.
    let model = cascade::engine::Model::load(
        &cascade::weights::WeightStore::new(),
        &m,
        &Default::default(),
    )
    .unwrap();
    let mut seq = model.tokenizer.encode("the cat", true).unwrap();
    let mut cache = model.new_cache(seq.len() + 4).unwrap();
    let mut want = Vec::new();
    let mut logits = model
        .forward(&seq, &mut cache, cascade::engine::Logits::Last)
        .unwrap();
    while want.len() < 4 {
        let t = common::argmax(&logits, model.valid_mask());
        want.push(t);
        if model.tokenizer.is_eog(t) {
            break;
        }
        seq.push(t);
        logits = model
            .forward(&[t], &mut cache, cascade::engine::Logits::Last)
            .unwrap();
    }
    assert_eq!(common::ids(&v["tokens"]), want);
    assert_eq!(v["text"].as_str().unwrap(), model.tokenizer.decode(&want));
    for key in ["load_s", "prefill_s", "decode_s", "decode_tokens_per_s"] {
        assert!(v["stats"][key].is_number(), "stats.{key}");
    }
    assert!(v["prompt_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn missing_file_is_named() {
    let out = run_gen(Path::new("/nonexistent/model.gguf"), &["--prompt", "x"]);
    assert_clean_error(&out, "model file not found: /nonexistent/model.gguf");
}

#[test]
fn truncated_gguf_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture(dir.path());
    let bytes = std::fs::read(&m).unwrap();
    // Cut inside the header: the metadata cannot be read.
    std::fs::write(&m, &bytes[..200]).unwrap();
    assert_clean_error(&run_gen(&m, &["--prompt", "x"]), "truncated");
    // Cut inside the tensor data: the last tensors run past the end.
    std::fs::write(&m, &bytes[..bytes.len() - 100]).unwrap();
    assert_clean_error(
        &run_gen(&m, &["--prompt", "x"]),
        "but the data section ends at",
    );
    // An empty file.
    std::fs::write(&m, b"").unwrap();
    assert_clean_error(&run_gen(&m, &["--prompt", "x"]), "truncated");
}

#[test]
fn corrupted_gguf_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture(dir.path());
    let mut bytes = std::fs::read(&m).unwrap();
    bytes[..4].copy_from_slice(b"GGML");
    std::fs::write(&m, &bytes).unwrap();
    assert_clean_error(&run_gen(&m, &["--prompt", "x"]), "is not a GGUF file");
    // An absurd metadata count.
    let mut bytes = std::fs::read(fixture(dir.path())).unwrap();
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&m, &bytes).unwrap();
    assert_clean_error(
        &run_gen(&m, &["--prompt", "x"]),
        "corrupt or truncated header",
    );
}

#[test]
fn tensor_offset_past_the_end_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture(dir.path());
    let mut bytes = std::fs::read(&m).unwrap();
    // The tensor info of output.weight: name, n_dims u32, 2 dims u64, type u32, offset u64.
    let name = b"output.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let offset_at = at + 4 + 16 + 4;
    bytes[offset_at..offset_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&m, &bytes).unwrap();
    assert_clean_error(
        &run_gen(&m, &["--prompt", "x"]),
        "tensor 'output.weight' spans bytes",
    );
}

#[test]
fn unsupported_tensor_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture(dir.path());
    let mut bytes = std::fs::read(&m).unwrap();
    let name = b"output.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let type_at = at + 4 + 16;
    bytes[type_at..type_at + 4].copy_from_slice(&16u32.to_le_bytes());
    std::fs::write(&m, &bytes).unwrap();
    assert_clean_error(
        &run_gen(&m, &["--prompt", "x"]),
        "tensor 'output.weight' has unsupported type an IQ type (ggml type 16)",
    );
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = fixture::build(&FixtureSpec::default());
    w.meta("general.architecture", Value::String("mamba".into()));
    let m = dir.path().join("m.gguf");
    w.write(&m).unwrap();
    assert_clean_error(
        &run_gen(&m, &["--prompt", "x"]),
        "unsupported architecture 'mamba'",
    );
}

#[test]
fn prompt_longer_than_the_context_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let spec = FixtureSpec {
        context_length: 64,
        ..Default::default()
    };
    let m = common::write_fixture(dir.path(), "m.gguf", &spec);
    let long = "word ".repeat(100);
    assert_clean_error(
        &run_gen(&m, &["--prompt", &long]),
        "but the model's context holds 64",
    );
}

#[test]
fn empty_prompt_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture(dir.path());
    assert_clean_error(&run_gen(&m, &["--prompt", ""]), "the prompt is empty");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    assert_clean_error(
        &run_gen(&m, &["--prompt-file", empty.to_str().unwrap()]),
        "the prompt is empty",
    );
}

#[test]
fn bad_flags_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture(dir.path());
    assert_clean_error(
        &run_gen(&m, &["--prompt", "x", "--temperature=-1"]),
        "invalid temperature",
    );
    assert_clean_error(
        &run_gen(&m, &["--prompt", "x", "--top-p", "0"]),
        "invalid top-p",
    );
    assert_clean_error(
        &run_gen(&m, &["--prompt", "x", "--threads", "0"]),
        "--threads must be at least 1",
    );
    assert_clean_error(
        &run_gen(&m, &["--prompt", "x", "--mode", "draft"]),
        "--mode draft needs a draft model (--draft PATH)",
    );
    assert_clean_error(
        &run_gen(&m, &["--prompt-file", "/nonexistent/prompt.txt"]),
        "cannot read /nonexistent/prompt.txt",
    );
    assert_clean_error(
        &run_gen(
            &m,
            &[
                "--prompt",
                "x",
                "--tokenizer",
                "/nonexistent/tokenizer.json",
            ],
        ),
        "model file not found: /nonexistent/tokenizer.json",
    );
}

#[test]
fn a_draft_with_another_tokenizer_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture(dir.path());
    let mut w = fixture::build(&FixtureSpec::default());
    w.meta(
        "tokenizer.ggml.merges",
        Value::Array(vec![
            Value::String("Ġ t".into()),
            Value::String("e r".into()),
        ]),
    );
    let other = dir.path().join("other.gguf");
    w.write(&other).unwrap();
    assert_clean_error(
        &run_gen(&m, &["--prompt", "x", "--draft", other.to_str().unwrap()]),
        "draft and target tokenizers differ: merge 1 is 'h e' in one and 'e r' in the other",
    );
}

#[test]
fn perplexity_and_tokenize_errors() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture(dir.path());
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "a short text").unwrap();
    let ms = m.to_str().unwrap();
    let ts = text.to_str().unwrap();
    assert_clean_error(
        &cascade(&["perplexity", "--model", ms, "--file", ts, "--ctx", "64"]),
        "fewer than one window of 64",
    );
    assert_clean_error(
        &cascade(&["perplexity", "--model", ms, "--file", ts, "--ctx", "100000"]),
        "exceeds the model's context",
    );
    assert_clean_error(
        &cascade(&["tokenize", "--model", "/nope.gguf", "x"]),
        "model file not found",
    );
    let ok = cascade(&["tokenize", "--model", ms, "--json", "--", "-the cat"]);
    assert!(ok.status.success());
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert!(!v["ids"].as_array().unwrap().is_empty());
}

/// `--device cuda` on a machine without a GPU is a clean error naming the reason; `auto` (the
/// default) runs on the CPU and says so. On a machine with a GPU, the explicit device is used.
#[test]
fn a_gpu_that_is_not_there_is_a_clear_error_and_auto_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture(dir.path());
    let has_gpu = cascade::gpu::probe().is_ok_and(|g| !g.is_empty());
    let explicit = run_gen(&m, &["--prompt", "the cat", "--device", "cuda:7"]);
    if has_gpu {
        assert_clean_error(&explicit, "cuda:7");
    } else {
        assert_clean_error(&explicit, "the target cannot run on cuda:7: no CUDA driver");
        let cuda = run_gen(&m, &["--prompt", "the cat", "--device", "cuda"]);
        assert_clean_error(&cuda, "the target cannot run on cuda:0");
    }
    let auto = run_gen(&m, &["--prompt", "the cat", "--json", "--device", "auto"]);
    let stderr = String::from_utf8_lossy(&auto.stderr);
    assert!(auto.status.success(), "{stderr}");
    if !has_gpu {
        assert!(stderr.contains("target: on the CPU (auto:"), "{stderr}");
    }
    let bad = run_gen(&m, &["--prompt", "x", "--device", "tpu"]);
    assert_eq!(bad.status.code(), Some(2), "clap's usage error");
}

#[test]
fn a_prompt_longer_than_its_limit_is_refused_by_name() {
    use cascade::engine::{Engine, EngineConfig, EngineError, Mode, Prompt, Request};
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::load(&EngineConfig {
        target: fixture(dir.path()),
        ..Default::default()
    })
    .unwrap();
    let limit = cascade::engine::engine::prompt_byte_limit(engine.target().config.context_length);
    let req = |text: String| Request {
        prompt: Prompt::Text(text),
        mode: Mode::Target,
        config: Default::default(),
        grammar: None,
    };
    let e = engine
        .generate(&req("a".repeat(limit + 1)), |_| {})
        .unwrap_err();
    assert!(
        matches!(e, EngineError::Limit { limit: l, .. } if l == limit as u64),
        "{e}"
    );
    assert!(e.to_string().contains("prompt's text"), "{e}");
    // At the limit it is tokenized and then refused for the context, as any long prompt.
    let e = engine
        .generate(&req("a ".repeat(limit / 2)), |_| {})
        .unwrap_err();
    assert!(matches!(e, EngineError::PromptTooLong { .. }), "{e}");
}
