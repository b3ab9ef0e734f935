//! Perplexity against llama.cpp's llama-perplexity on the same file, text and convention
//! (tests/data/reference/ppl.json, recorded by scripts/reference/reference.py).

mod common;

use cascade::engine::{Engine, EngineConfig, Role};

#[test]
fn smollm_perplexity_is_within_2_percent_of_llama_cpp() {
    let r: serde_json::Value =
        serde_json::from_str(include_str!("data/reference/ppl.json")).unwrap();
    let m = &r["models"]["smollm"];
    let engine = Engine::load(&EngineConfig {
        target: common::real_model(m["file"].as_str().unwrap()),
        threads: Some(2),
        ..Default::default()
    })
    .unwrap();
    let text = include_str!("data/ppl.txt");
    let ctx = 512;
    let want = &m["runs"][ctx.to_string()];
    let got = engine
        .perplexity(Role::Target, text, ctx, |_, _, _| {})
        .unwrap();
    let ref_ppl = want["ppl"].as_f64().unwrap();
    assert_eq!(
        got.tokens_scored as u64,
        want["scored_tokens"].as_u64().unwrap()
    );
    let rel = (got.ppl - ref_ppl).abs() / ref_ppl;
    eprintln!(
        "smollm ctx {ctx}: ours {:.4}, llama.cpp {ref_ppl:.4} ({:+.2}%)",
        got.ppl,
        100.0 * (got.ppl / ref_ppl - 1.0)
    );
    assert!(rel < 0.02, "ours {} vs llama.cpp {ref_ppl}", got.ppl);
}
