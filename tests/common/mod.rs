//! Helpers shared by the integration tests: fixture models on disk and the `cascade` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cascade::engine::fixture::{self, FixtureSpec};
use cascade::weights::{canonical_name, GgufHeader, OpenOptions, WeightStore};

/// Writes a fixture GGUF into `dir` and returns its path.
pub fn write_fixture(dir: &Path, name: &str, spec: &FixtureSpec) -> PathBuf {
    let path = dir.join(name);
    fixture::write(spec, &path).expect("write fixture");
    path
}

/// A fixture target and a smaller draft sharing its tokenizer (the draft's vocabulary padded
/// differently), written into `dir`.
pub fn fixture_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let target = write_fixture(dir, "t.gguf", &FixtureSpec::default());
    let draft = write_fixture(dir, "d.gguf", &draft_spec(FixtureSpec::default()));
    (target, draft)
}

/// The fixture pair's draft: narrower than `base`, its vocabulary padded further, other weights.
pub fn draft_spec(base: FixtureSpec) -> FixtureSpec {
    FixtureSpec {
        hidden: 32,
        n_heads: 2,
        n_kv_heads: 1,
        ffn: 64,
        pad_vocab: 24,
        seed: 9,
        ..base
    }
}

/// The Hugging Face name of a canonical (GGUF) tensor name.
fn hf_name(gguf: &str) -> String {
    let candidates = [
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
        "lm_head.weight".to_string(),
    ];
    if let Some(c) = candidates
        .iter()
        .find(|c| canonical_name(c).as_deref() == Some(gguf))
    {
        return c.clone();
    }
    let layer: usize = gguf
        .split('.')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("layer tensor");
    for suffix in [
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.q_proj.bias",
        "self_attn.k_proj.bias",
        "self_attn.v_proj.bias",
        "self_attn.o_proj.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
    ] {
        let hf = format!("model.layers.{layer}.{suffix}");
        if canonical_name(&hf).as_deref() == Some(gguf) {
            return hf;
        }
    }
    panic!("no HF name for {gguf}");
}

/// Converts an F32 Qwen2 fixture GGUF into a Hugging Face folder (config.json, model.safetensors,
/// tokenizer.json) holding the same weights.
pub fn hf_folder_from_gguf(gguf: &Path, spec: &FixtureSpec, dir: &Path) -> PathBuf {
    use safetensors::tensor::{Dtype, TensorView};
    std::fs::create_dir_all(dir).unwrap();
    let bytes = std::fs::read(gguf).unwrap();
    let header = GgufHeader::parse(gguf, &bytes).unwrap();
    let mut views = Vec::new();
    for t in &header.tensors {
        assert_eq!(t.dtype.name(), "F32", "HF conversion takes F32 fixtures");
        let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        let data = &bytes[t.offset as usize..(t.offset + t.n_bytes) as usize];
        views.push((
            hf_name(&t.name),
            TensorView::new(Dtype::F32, shape, data).unwrap(),
        ));
    }
    let st = safetensors::tensor::serialize(views, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), st).unwrap();
    let store = WeightStore::new();
    let model = store.open_model(gguf, &OpenOptions::default()).unwrap();
    let c = &model.config;
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "rms_norm_eps": c.rms_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.context_length,
        "vocab_size": c.vocab_size,
        "tie_word_embeddings": spec.tied,
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    model
        .tokenizer
        .save_json(&dir.join("tokenizer.json"))
        .unwrap();
    let tok_cfg = serde_json::json!({
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "add_bos_token": false,
        "chat_template": fixture::CHATML_TEMPLATE,
    });
    std::fs::write(dir.join("tokenizer_config.json"), tok_cfg.to_string()).unwrap();
    dir.to_path_buf()
}

/// Runs the `cascade` binary.
pub fn cascade(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(args)
        .output()
        .expect("run cascade")
}

/// Asserts the command failed cleanly: exit code 1, an `error:` line containing `needle`, no panic.
pub fn assert_clean_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(stderr.contains("error:"), "no error line: {stderr}");
    assert!(stderr.contains(needle), "expected '{needle}' in: {stderr}");
}

/// Where the real models are (scripts/fetch-models puts them there).
pub fn models_dir() -> PathBuf {
    cascade::models::models_dir()
}

/// The path of a real model file, or a panic telling how to fetch it.
pub fn real_model(file: &str) -> PathBuf {
    let p = models_dir().join(file);
    assert!(
        p.exists(),
        "{} is missing: run `scripts/fetch-models all` first (or set CASCADE_MODELS)",
        p.display()
    );
    p
}

/// A JSON array of token ids from a reference file.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The greedy choice written out here, apart from the engine's sampler: the highest logit among
/// valid tokens, the lowest id on ties.
pub fn argmax(logits: &[f32], valid: &[bool]) -> u32 {
    let mut best = usize::MAX;
    for i in 0..logits.len() {
        if valid[i] && (best == usize::MAX || logits[i] > logits[best]) {
            best = i;
        }
    }
    best as u32
}

/// A greedy request for `prompt`'s tokens that runs to `max_tokens` (no stop at end of
/// generation).
pub fn request(
    prompt: &[u32],
    max_tokens: usize,
    mode: cascade::engine::Mode,
) -> cascade::engine::Request {
    cascade::engine::Request {
        prompt: cascade::engine::Prompt::Tokens(prompt.to_vec()),
        mode,
        config: cascade::engine::GenerateConfig {
            max_tokens,
            stop_at_eog: false,
            ..Default::default()
        },
        grammar: None,
    }
}

/// Waits (at most 30 s) until the engine's scheduler state satisfies `f`.
pub fn wait_for(
    e: &cascade::engine::Engine,
    what: &str,
    f: impl Fn(&cascade::engine::SchedulerStats) -> bool,
) {
    let t = std::time::Instant::now();
    while !f(&e.stats()) {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "timed out waiting for {what}: {:?}",
            e.stats()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
