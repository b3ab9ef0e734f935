//! The fuzzers' seed corpora (`fuzz/seeds/<target>/`): every committed seed must be an input the
//! code accepts, so that the fuzzers start deep in the parsers rather than at their first
//! check. `CASCADE_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_seeds` writes them again: tiny
//! fixture models, and vocabularies, templates and metadata taken from the real model files
//! (trimmed so that a fuzzer can mutate them quickly).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cascade::engine::chat::{render, Message};
use cascade::engine::fixture::{self, FixtureSpec};
use cascade::engine::{DraftLen, Logits, Model};
use cascade::serve::{read_request, Kind, Limits, ModeDefaults, ModeName};
use cascade::weights::{
    DType, GgufHeader, GgufWriter, Layout, OpenOptions, Tokenizer, Value, WeightStore,
};
use serde_json::json;

#[path = "../fuzz/src/format.rs"]
mod format;

use format::{sections, write_folder, SECTION};
/// Tokens kept of a real vocabulary (the byte tokens and the first merges).
const KEEP: usize = 600;

fn seeds(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target)
}

fn list(target: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(seeds(target))
        .unwrap_or_else(|e| panic!("fuzz/seeds/{target}: {e}"))
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = seeds(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn writing() -> bool {
    std::env::var_os("CASCADE_WRITE_FUZZ_SEEDS").is_some()
}

fn small(spec: FixtureSpec) -> FixtureSpec {
    FixtureSpec {
        hidden: 32,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        ffn: 64,
        pad_vocab: 2,
        ..spec
    }
}

/// The real models' metadata (for their templates and tokenizers).
fn real_headers() -> Vec<(String, BTreeMap<String, Value>)> {
    let files = [
        "qwen2.5-coder-0.5b-instruct-q4.gguf",
        "smollm2-135m-instruct-q4_1.gguf",
    ];
    files
        .iter()
        .map(|f| {
            let p = common::real_model(f);
            let bytes = std::fs::read(&p).unwrap();
            let h = GgufHeader::parse(&p, &bytes).unwrap();
            (f.to_string(), h.metadata)
        })
        .collect()
}

fn template(m: &BTreeMap<String, Value>) -> String {
    m["tokenizer.chat_template"].as_str().unwrap().to_string()
}

/// A real GGUF vocabulary cut to its first [`KEEP`] tokens, the merges among them, and the
/// special tokens moved down after them (ids renumbered).
fn trimmed_tokenizer_meta(m: &BTreeMap<String, Value>) -> Vec<(String, Value)> {
    let tokens = m["tokenizer.ggml.tokens"].as_array().unwrap();
    let types = m["tokenizer.ggml.token_type"].as_array().unwrap();
    let mut kept: Vec<usize> = (0..KEEP).collect();
    let specials: Vec<usize> = (KEEP..tokens.len())
        .filter(|&i| types[i].as_i64() != Some(1))
        .take(16)
        .collect();
    kept.extend(&specials);
    let new_id = |old: u64| kept.iter().position(|&k| k as u64 == old);
    let strs: Vec<&str> = kept.iter().map(|&i| tokens[i].as_str().unwrap()).collect();
    let set: std::collections::HashSet<&str> = strs.iter().copied().collect();
    let merges: Vec<Value> = m["tokenizer.ggml.merges"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .filter(|s| {
            let (a, b) = s.split_once(' ').unwrap();
            set.contains(a) && set.contains(b) && set.contains(format!("{a}{b}").as_str())
        })
        .map(|s| Value::String(s.into()))
        .collect();
    let mut out = vec![
        (
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(strs.iter().map(|s| Value::String(s.to_string())).collect()),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(kept.iter().map(|&i| types[i].clone()).collect()),
        ),
        ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
    ];
    for (k, v) in m {
        let id_key = k.starts_with("tokenizer.ggml.") && k.ends_with("_token_id");
        if id_key {
            if let Some(n) = v.as_u64().and_then(new_id) {
                out.push((k.clone(), Value::U32(n as u32)));
            }
        } else if k.starts_with("tokenizer.") && !out.iter().any(|(o, _)| o == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

fn generate_gguf_seeds() {
    let headers = real_headers();
    let specs = [
        ("qwen2-q8_0", small(FixtureSpec::default()), 0),
        (
            "llama-tied-f16",
            small(FixtureSpec {
                arch: cascade::weights::Architecture::Llama,
                tied: true,
                dtype: DType::F16,
                embd_dtype: DType::F16,
                ..Default::default()
            }),
            1,
        ),
        (
            "qwen2-q4_0-q5_0",
            small(FixtureSpec {
                dtype: DType::Q4_0,
                embd_dtype: DType::Q5_0,
                ..Default::default()
            }),
            0,
        ),
    ];
    for (name, spec, real) in specs {
        let mut w = fixture::build(&spec);
        // The real model's template; and an interleaved Q4_K matrix (as `cascade repack`
        // writes) that the model does not use but the header parser checks.
        w.meta(
            "tokenizer.chat_template",
            Value::String(template(&headers[real].1)),
        );
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x
        };
        let data = cascade::kernels::quant::random_data(DType::Q4K, 8 * 256, 0.01, &mut next);
        w.tensor_in(
            "extra.interleaved",
            &[256, 8],
            DType::Q4K,
            Layout::Interleaved8,
            data,
        );
        write_seed("gguf_load", &format!("{name}.gguf"), &w.to_bytes());
    }
    for (file, m) in &headers {
        let mut w = GgufWriter::new();
        w.meta("general.architecture", m["general.architecture"].clone());
        for (k, v) in trimmed_tokenizer_meta(m) {
            w.meta(&k, v);
        }
        let stem = file.trim_end_matches(".gguf");
        write_seed("tokenizer_gguf", &format!("{stem}.gguf"), &w.to_bytes());
        write_seed(
            "chat_template",
            &format!("{stem}.jinja"),
            template(m).as_bytes(),
        );
    }
    write_seed(
        "chat_template",
        "fixture-chatml.jinja",
        fixture::CHATML_TEMPLATE.as_bytes(),
    );
}

/// The real `tokenizer.json` cut like [`trimmed_tokenizer_meta`], with a `tokenizer_config.json`
/// section carrying the real template.
fn generate_tokenizer_json_seed() {
    let path = common::real_model("qwen2.5-tokenizer.json");
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let vocab = j["model"]["vocab"].as_object().unwrap().clone();
    let kept: serde_json::Map<String, serde_json::Value> = vocab
        .into_iter()
        .filter(|(_, id)| id.as_u64().unwrap() < KEEP as u64)
        .collect();
    let merges: Vec<serde_json::Value> = j["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            let (a, b) = match m {
                serde_json::Value::String(s) => {
                    let (a, b) = s.split_once(' ').unwrap();
                    (a.to_string(), b.to_string())
                }
                p => (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()),
            };
            kept.contains_key(&a) && kept.contains_key(&b) && kept.contains_key(&format!("{a}{b}"))
        })
        .cloned()
        .collect();
    j["model"]["vocab"] = serde_json::Value::Object(kept);
    j["model"]["merges"] = serde_json::Value::Array(merges);
    let added = j["added_tokens"].as_array_mut().unwrap();
    added.truncate(8);
    for (i, a) in added.iter_mut().enumerate() {
        a["id"] = json!(KEEP + i);
    }
    let headers = real_headers();
    let config = json!({
        "eos_token": "<|im_end|>",
        "add_bos_token": false,
        "chat_template": template(&headers[0].1),
    });
    let mut bytes = serde_json::to_vec(&j).unwrap();
    bytes.extend_from_slice(SECTION);
    bytes.extend_from_slice(&serde_json::to_vec(&config).unwrap());
    write_seed("tokenizer_json", "qwen2.5-trimmed.json", &bytes);
}

/// Fixture models as Hugging Face folders, one file and sharded (an index).
fn generate_hf_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let spec = small(FixtureSpec {
        dtype: DType::F32,
        embd_dtype: DType::F32,
        hidden: 16,
        ..Default::default()
    });
    let spec = FixtureSpec { ffn: 32, ..spec };
    let gguf = common::write_fixture(dir.path(), "m.gguf", &spec);
    let folder = common::hf_folder_from_gguf(&gguf, &spec, &dir.path().join("hf"));
    let read = |n: &str| std::fs::read(folder.join(n)).unwrap();
    let weights = read("model.safetensors");
    let mut one = read("config.json");
    for part in [&weights, &read("tokenizer.json")] {
        one.extend_from_slice(SECTION);
        one.extend_from_slice(part);
    }
    write_seed("hf_folder", "qwen2-f32.folder", &one);
    let names = safetensors::SafeTensors::deserialize(&weights)
        .unwrap()
        .names()
        .into_iter()
        .map(|n| (n.to_string(), json!("model-00001-of-00001.safetensors")))
        .collect::<serde_json::Map<_, _>>();
    let index = json!({ "metadata": {}, "weight_map": names });
    one.extend_from_slice(SECTION);
    one.extend_from_slice(&serde_json::to_vec(&index).unwrap());
    write_seed("hf_folder", "qwen2-f32-sharded.folder", &one);
}

fn generate_request_seeds() {
    let chat = [
        json!({"model": "m", "messages": [{"role": "user", "content": "Reverse a string in Python"}], "max_tokens": 64}),
        json!({"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}], "stream": true, "stream_options": {"include_usage": true}, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 7, "stop": ["\n\n", "END"]}),
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 16, "cascade": {"mode": "cascade", "rule": "token", "alpha": 0.3, "draft_len": "auto"}}),
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "cascade": {"mode": "exact", "draft_len": 4}, "stop": "\n"}),
    ];
    for (i, b) in chat.iter().enumerate() {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&serde_json::to_vec(b).unwrap());
        write_seed("request_body", &format!("chat-{i}.json"), &bytes);
    }
    let completion = [
        json!({"model": "m", "prompt": "def fib(n):", "max_tokens": 32, "temperature": 0}),
        json!({"model": "m", "prompt": [1, 2, 3], "stream": true, "cascade": {"mode": "answer"}}),
        json!({"model": "m", "prompt": ["one prompt"], "top_k": 1}),
    ];
    for (i, b) in completion.iter().enumerate() {
        let mut bytes = vec![3u8];
        bytes.extend_from_slice(&serde_json::to_vec(b).unwrap());
        write_seed("request_body", &format!("completion-{i}.json"), &bytes);
    }
}

#[test]
fn write_seeds_when_asked() {
    if !writing() {
        return;
    }
    generate_gguf_seeds();
    generate_tokenizer_json_seed();
    generate_hf_seeds();
    generate_request_seeds();
}

fn load_and_run(path: &Path) {
    let model = Model::load(&WeightStore::new(), path, &OpenOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ids = model.tokenizer.encode("Hello, world", false).unwrap();
    assert!(!ids.is_empty());
    let mut cache = model.new_cache(ids.len()).unwrap();
    let logits = model.forward(&ids, &mut cache, Logits::Last).unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));
}

#[test]
fn gguf_seeds_load_and_run() {
    let all = list("gguf_load");
    assert!(all.len() >= 3, "{all:?}");
    for p in all {
        load_and_run(&p);
    }
}

#[test]
fn hf_seeds_load_and_run() {
    let all = list("hf_folder");
    assert!(all.len() >= 2, "{all:?}");
    for p in all {
        let data = std::fs::read(&p).unwrap();
        let parts = sections(&data);
        let dir = tempfile::tempdir().unwrap();
        write_folder(&parts, dir.path()).unwrap();
        load_and_run(dir.path());
    }
}

/// A tokenizer seed must give a real tokenizer: merges apply (fewer tokens than bytes) and
/// special tokens written in the text come out as one token each.
fn check_tokenizer(tok: &Tokenizer, what: &Path) {
    let text = "Hello, world! the cat <|im_end|>";
    let ids = tok.encode(text, false).unwrap();
    assert!(ids.len() < text.len() - 8, "{}: {ids:?}", what.display());
    assert_eq!(tok.decode(&ids), text, "{}", what.display());
}

#[test]
fn tokenizer_seeds_build_working_tokenizers() {
    let gg = list("tokenizer_gguf");
    assert!(gg.len() >= 2);
    for p in gg {
        let bytes = std::fs::read(&p).unwrap();
        let h = GgufHeader::parse(&p, &bytes).unwrap();
        let tok = Tokenizer::from_gguf(&h.metadata).unwrap();
        check_tokenizer(&tok, &p);
    }
    for p in list("tokenizer_json") {
        let data = std::fs::read(&p).unwrap();
        let parts = sections(&data);
        let tok =
            Tokenizer::from_json_bytes(parts[0], parts.get(1).copied(), None, "seed").unwrap();
        check_tokenizer(&tok, &p);
        assert!(tok.chat_template.is_some() && tok.eos.is_some());
    }
}

#[test]
fn template_seeds_render() {
    let all = list("chat_template");
    assert!(all.len() >= 3);
    for p in all {
        let t = std::fs::read_to_string(&p).unwrap();
        let m = [Message::user("hi there")];
        let s = render(&t, &m, "<s>", "</s>").unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(s.contains("hi there"), "{}: {s}", p.display());
    }
}

#[test]
fn request_seeds_parse() {
    let all = list("request_body");
    assert!(all.len() >= 5);
    let defaults = ModeDefaults {
        mode: ModeName::Exact,
        rule: None,
        alpha: None,
        draft_len: DraftLen::default(),
        lookup: true,
        draft_model: true,
    };
    let limits = Limits {
        context: 4096,
        default_max_tokens: 256,
    };
    for p in all {
        let data = std::fs::read(&p).unwrap();
        let kind = if data[0] % 2 == 0 {
            Kind::Chat
        } else {
            Kind::Completion
        };
        read_request(kind, &data[1..], &defaults, limits)
            .unwrap_or_else(|e| panic!("{}: {e:?}", p.display()));
    }
}

/// Inputs the fuzzers found crashing (`fuzz/regressions/<target>/`), kept as tests: each must now
/// be refused with an error.
fn regressions(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(d) => d.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

#[test]
fn crashes_the_fuzzers_found_are_refused_with_errors() {
    let tj = regressions("tokenizer_json");
    assert!(!tj.is_empty());
    for p in tj {
        let data = std::fs::read(&p).unwrap();
        let parts = sections(&data);
        let r = Tokenizer::from_json_bytes(parts[0], parts.get(1).copied(), None, "regression");
        let e = r
            .err()
            .unwrap_or_else(|| panic!("{} was accepted", p.display()));
        assert!(e.to_string().contains("not JSON"), "{}: {e}", p.display());
    }
    let templates = regressions("chat_template");
    assert!(!templates.is_empty());
    for p in templates {
        let t = std::fs::read_to_string(&p).unwrap();
        let r = render(&t, &[Message::user("hi"), Message::assistant("yo")], "", "");
        assert!(r.is_err(), "{} rendered", p.display());
    }
    let gguf = regressions("gguf_load");
    assert!(!gguf.is_empty());
    for p in gguf {
        let r = Model::load(&WeightStore::new(), &p, &OpenOptions::default());
        assert!(r.is_err(), "{} was accepted", p.display());
    }
    let hf = regressions("hf_folder");
    assert!(!hf.is_empty());
    for p in hf {
        let data = std::fs::read(&p).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_folder(&sections(&data), dir.path()).unwrap();
        let r = Model::load(&WeightStore::new(), dir.path(), &OpenOptions::default());
        assert!(r.is_err(), "{} was accepted", p.display());
    }
}

#[test]
fn gguf_header_seeds_parse() {
    let all = list("gguf_header");
    assert!(all.len() >= 4);
    for p in all {
        let bytes = std::fs::read(&p).unwrap();
        GgufHeader::parse(&p, &bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}
