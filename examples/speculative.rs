//! Embed the engine and stream a lossless speculative completion: the draft proposes, the target
//! verifies, and the text is exactly what the target alone would write.
//!
//!     M=~/.cache/cascade/models
//!     cargo run --release --example speculative -- $M/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
//!         $M/qwen2.5-coder-0.5b-instruct-q4.gguf "Write a Python function that merges two dicts."

use std::io::Write;

use cascade::engine::{Engine, EngineConfig, GenerateConfig, Message, Mode, Prompt, Request};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: speculative TARGET.gguf DRAFT.gguf [PROMPT]";
    let target = args.next().ok_or(usage)?;
    let draft = args.next().ok_or(usage)?;
    let prompt = args
        .next()
        .unwrap_or_else(|| "Write a binary search in Rust.".into());

    let engine = Engine::load(&EngineConfig {
        target: target.into(),
        draft: Some(draft.into()),
        ..Default::default()
    })?;
    let request = Request {
        prompt: Prompt::Chat(vec![Message::user(prompt)]),
        // Prompt lookup first, then the draft model; draft length adapted per sequence.
        mode: Mode::exact(),
        config: GenerateConfig {
            max_tokens: 128,
            ..Default::default()
        },
        grammar: None,
    };
    let out = engine.generate(&request, |piece| {
        print!("{piece}");
        let _ = std::io::stdout().flush();
    })?;
    let s = &out.stats;
    println!(
        "\n[{} tokens, {:.1} tokens/s, {} target passes, {}/{} drafted tokens accepted]",
        out.tokens.len(),
        s.decode_tokens_per_s,
        s.target_passes,
        s.accepted,
        s.drafted
    );
    Ok(())
}
