//! Embed the engine and stream a completion.
//!
//!     cargo run --release --example generate -- ~/.cache/cascade/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf "Write a haiku about Rust."

use std::io::Write;

use cascade::engine::{
    Engine, EngineConfig, GenerateConfig, Message, Mode, Prompt, Request, SamplingParams,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().ok_or("usage: generate MODEL.gguf [PROMPT]")?;
    let prompt = args
        .next()
        .unwrap_or_else(|| "Write a haiku about Rust.".into());

    let engine = Engine::load(&EngineConfig {
        target: model.into(),
        ..Default::default()
    })?;
    let request = Request {
        prompt: Prompt::Chat(vec![Message::user(prompt)]),
        mode: Mode::Target,
        config: GenerateConfig {
            max_tokens: 64,
            sampling: SamplingParams {
                temperature: 0.7,
                top_k: 40,
                top_p: 0.95,
                seed: 1,
            },
            stop_at_eog: true,
        },
        grammar: None,
    };
    let out = engine.generate(&request, |piece| {
        print!("{piece}");
        let _ = std::io::stdout().flush();
    })?;
    println!(
        "\n[{} tokens, {:.1} tokens/s]",
        out.tokens.len(),
        out.stats.decode_tokens_per_s
    );
    Ok(())
}
