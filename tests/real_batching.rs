//! Continuous batching on the real Qwen pair: sixteen greedy requests (code, prose, chat, two
//! sharing a long system prompt), half target-only and half exact, submitted in staggered waves
//! into one batch, each give exactly the tokens of the same request run alone through the
//! target. The fixture-model version with more orders and settings is `tests/batching.rs`.

mod common;

use std::time::Duration;

use cascade::engine::{
    Engine, EngineConfig, Event, GenerateConfig, Message, Mode, Prompt, Request,
};

fn prompts() -> Vec<Prompt> {
    let system = "You are a careful senior engineer. Answer briefly, with code where it helps, \
                  and explain any trade-off in one sentence.";
    let chat = |sys: bool, user: &str| {
        let mut m = Vec::new();
        if sys {
            m.push(Message::system(system));
        }
        m.push(Message::user(user));
        Prompt::Chat(m)
    };
    let text = |s: &str| Prompt::Text(s.to_string());
    vec![
        chat(true, "Write a Rust function that reverses a string."),
        chat(true, "How do I read a file line by line in Python?"),
        chat(true, "What is a mutex?"),
        chat(true, "Sort a list of tuples by the second item in Python."),
        text("def is_prime(n: int) -> bool:\n"),
        text("The history of the printing press begins"),
        text("fn main() {\n    let v: Vec<u32> = (0..10).collect();"),
        chat(false, "Name three sorting algorithms."),
        chat(false, "Explain recursion to a child in two sentences."),
        text("SELECT name, COUNT(*) FROM orders"),
        chat(false, "Write a haiku about the sea."),
        text("import numpy as np\n\ndef softmax(x):"),
        chat(
            true,
            "Write a bash one-liner that counts lines in all .rs files.",
        ),
        text("Once upon a time, in a village by the river,"),
        chat(false, "What does HTTP 429 mean?"),
        text("class Stack:\n    def __init__(self):"),
    ]
}

#[test]
fn sixteen_batched_requests_give_their_tokens_alone() {
    let engine = Engine::load(&EngineConfig {
        target: common::real_model("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
        draft: Some(common::real_model("qwen2.5-coder-0.5b-instruct-q4.gguf")),
        threads: Some(2),
        ..Default::default()
    })
    .unwrap();
    // The default draft vocabulary (`DraftVocab::Auto`) restricts the draft's output layer to
    // the shipped ranking's 32768 most frequent tokens (plus any end-of-generation id outside
    // them): the exact half below runs with it.
    let draft = engine.draft().unwrap();
    let n = draft.output_tokens();
    assert!(
        (32768..32768 + 8).contains(&n) && n < draft.vocab_size(),
        "draft output layer {n} of {}",
        draft.vocab_size()
    );
    let config = GenerateConfig {
        max_tokens: 12,
        stop_at_eog: false,
        ..Default::default()
    };
    let req = |p: &Prompt, mode| Request {
        prompt: p.clone(),
        mode,
        config,
        grammar: None,
    };
    let ps = prompts();
    let alone: Vec<Vec<u32>> = ps
        .iter()
        .map(|p| {
            engine
                .generate(&req(p, Mode::Target), |_| {})
                .unwrap()
                .tokens
        })
        .collect();
    let mut handles = Vec::new();
    for (w, wave) in ps.chunks(4).enumerate() {
        for (j, p) in wave.iter().enumerate() {
            let mode = if (w * 4 + j) % 2 == 0 {
                Mode::Target
            } else {
                Mode::exact()
            };
            handles.push(engine.submit(req(p, mode)).unwrap());
        }
        // The next wave joins while this one decodes.
        let first = handles
            .last()
            .unwrap()
            .recv_timeout(Duration::from_secs(120));
        assert!(matches!(first, Ok(Event::Tokens { .. })), "{first:?}");
    }
    let mut cached = 0;
    for (i, h) in handles.into_iter().enumerate() {
        let c = loop {
            match h.recv().expect("a final event") {
                Event::Done(c) => break c,
                Event::Failed(e) => panic!("request {i}: {e}"),
                Event::Tokens { .. } => {}
            }
        };
        assert_eq!(c.tokens.len(), 12, "request {i}");
        assert_eq!(c.tokens, alone[i], "request {i} batched differs from alone");
        cached += c.cached_tokens;
    }
    // Five requests share the system prompt's blocks (and every prompt was computed alone first).
    assert!(cached > 0, "no prefix cache hits");
}
