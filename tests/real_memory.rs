//! With both Qwen models loaded and a generation running, anonymous memory stays under 10% of the
//! two files' bytes: the weights stay in the file mapping. (Its own test binary, so no other
//! test's allocations are counted.)

mod common;

use cascade::engine::{Engine, EngineConfig, GenerateConfig, Mode, Prompt, Request};

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/self/status"))
}

#[test]
fn anonymous_memory_stays_small_next_to_the_weights() {
    let target = common::real_model("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf");
    let draft = common::real_model("qwen2.5-coder-0.5b-instruct-q4.gguf");
    let file_bytes =
        std::fs::metadata(&target).unwrap().len() + std::fs::metadata(&draft).unwrap().len();
    let engine = Engine::load(&EngineConfig {
        target,
        draft: Some(draft),
        threads: Some(2),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(engine.store().mapped_files(), 2);
    let mut peak_anon = 0u64;
    let mut peak_file = 0u64;
    for mode in [Mode::Target, Mode::Draft, Mode::exact()] {
        let req = Request {
            prompt: Prompt::Text("fn main() {\n    let v: Vec<u32> = (0..10).collect();".into()),
            mode,
            config: GenerateConfig {
                max_tokens: 12,
                stop_at_eog: false,
                ..Default::default()
            },
            grammar: None,
        };
        engine
            .generate(&req, |_| {
                peak_anon = peak_anon.max(status_kib("RssAnon:"));
                peak_file = peak_file.max(status_kib("RssFile:"));
            })
            .unwrap();
    }
    let anon = peak_anon * 1024;
    eprintln!(
        "peak RssAnon {:.1} MiB, RssFile {:.1} MiB, model files {:.1} MiB: anonymous = {:.2}% of the files",
        anon as f64 / 1048576.0,
        (peak_file * 1024) as f64 / 1048576.0,
        file_bytes as f64 / 1048576.0,
        100.0 * anon as f64 / file_bytes as f64
    );
    assert!(
        anon * 10 < file_bytes,
        "RssAnon {anon} bytes is not under 10% of {file_bytes}"
    );
}
