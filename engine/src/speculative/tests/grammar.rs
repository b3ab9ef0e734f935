//! Speculation under a grammar, through the scheduler: greedy constrained output with a draft
//! (every proposer, fixed and adaptive lengths, a draft that is the target itself) is token for
//! token the constrained target's own, computed by an independent one-token-at-a-time loop
//! over the model and the grammar; sampled and cascade output always follow the grammar.

use super::*;
use crate::constraint::{Grammar, Grammars};
use crate::sampler::argmax_valid;

fn grammars() -> Vec<Grammar> {
    vec![
        Grammar::Regex("(the|a) (cat|dog|mat)( (sat|ran) (on|in) (the|a) (mat|hat))*\\.".into()),
        Grammar::Lark(
            "start: item (\",\" item)*\nitem: /[a-f]+/ | NUMBER\n%import common.NUMBER".into(),
        ),
        Grammar::JsonSchema(serde_json::json!({
            "type": "object",
            "properties": {
                "name": {"enum": ["cat", "dog"]},
                "legs": {"type": "integer", "minimum": 0, "maximum": 9},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2}
            },
            "required": ["name", "legs"],
            "additionalProperties": false
        })),
    ]
}

/// The oracle: the target alone, a token at a time, each argmax taken among the ids the
/// grammar allows (the engine's single-sequence forward, no scheduler).
fn constrained_target(target: &Model, g: &Grammar, prompt: &[u32], max: usize) -> Vec<u32> {
    let grammars = Grammars::new(&target.tokenizer).unwrap();
    let mut c = grammars.start(g).unwrap();
    let mut cache = target.new_cache(prompt.len() + max + 1).unwrap();
    let mut logits = target.forward(prompt, &mut cache, Logits::Last).unwrap();
    let mut out = Vec::new();
    while out.len() < max {
        let mask = c.mask(target.valid_mask()).unwrap();
        let t = argmax_valid(&logits, &mask).expect("the grammar allows some id");
        out.push(t);
        if target.tokenizer.is_eog(t) {
            break;
        }
        c.consume(&[t]).unwrap();
        logits = target.forward(&[t], &mut cache, Logits::Last).unwrap();
    }
    out
}

/// Every emitted token was allowed where it stands, and an end of generation only where the
/// grammar was complete.
fn follows(target: &Model, g: &Grammar, tokens: &[u32]) -> std::result::Result<(), String> {
    let grammars = Grammars::new(&target.tokenizer).unwrap();
    let mut c = grammars.start(g).unwrap();
    for (i, &t) in tokens.iter().enumerate() {
        if !c.allowed().unwrap().allows(t) {
            return Err(format!("token {i} ({t}) is not allowed there"));
        }
        if target.tokenizer.is_eog(t) {
            return Ok(());
        }
        c.consume(&[t]).unwrap();
    }
    Ok(())
}

fn run_constrained(
    e: &Engine,
    prompt: &[u32],
    cfg: GenerateConfig,
    mode: Mode,
    g: &Grammar,
) -> Completion {
    let req = Request {
        prompt: Prompt::Tokens(prompt.to_vec()),
        mode,
        config: cfg,
        grammar: Some(g.clone()),
    };
    e.generate(&req, |_| {}).unwrap()
}

#[test]
fn greedy_constrained_exact_equals_the_constrained_target() {
    let p = Pair::new(DType::Q8_0, false);
    let target = p.target();
    let (other, same) = (p.engine(false, 2), p.engine(true, 2));
    let cfg = GenerateConfig {
        max_tokens: 32,
        ..Default::default()
    };
    for g in grammars() {
        for text in &PROMPTS[..4] {
            let prompt = target.tokenizer.encode(text, true).unwrap();
            let want = constrained_target(&target, &g, &prompt, cfg.max_tokens);
            follows(&target, &g, &want).unwrap();
            let plain = run_constrained(&other, &prompt, cfg, Mode::Target, &g);
            assert_eq!(plain.tokens, want, "{g:?} {text:?}: target-only");
            for len in [
                DraftLen::Fixed(1),
                DraftLen::Fixed(4),
                DraftLen::Auto { max: 8 },
            ] {
                for (name, s) in proposers_and_self(len) {
                    let e = if name == "self" { &same } else { &other };
                    let got = run_constrained(e, &prompt, cfg, Mode::Speculative(s), &g);
                    let what = format!("{g:?} {text:?} {name} {len:?}");
                    assert_eq!(got.tokens, want, "{what}");
                    if name == "self" {
                        assert_eq!(got.stats.accepted, got.stats.drafted, "{what}");
                    }
                    if name == "self" && matches!(len, DraftLen::Fixed(_)) && want.len() > 2 {
                        assert!(got.stats.drafted > 0, "{what}: nothing drafted");
                    }
                }
            }
        }
    }
}

#[test]
fn sampled_and_cascade_output_follows_the_grammar() {
    let p = Pair::new(DType::Q8_0, true);
    let target = p.target();
    let e = p.engine(false, 2);
    let modes = [
        Mode::Target,
        Mode::Draft,
        exact4(),
        cascade_spec(Rule::Chow, 0.5, false),
        cascade_spec(Rule::Token, 0.9, false),
    ];
    for g in grammars() {
        for (i, mode) in modes.iter().enumerate() {
            for seed in 0..6u64 {
                let cfg = GenerateConfig {
                    max_tokens: 24,
                    sampling: SamplingParams {
                        temperature: if seed % 3 == 0 { 0.0 } else { 1.3 },
                        top_k: if seed % 2 == 0 { 0 } else { 20 },
                        seed,
                        ..SamplingParams::greedy()
                    },
                    ..Default::default()
                };
                let prompt = target
                    .tokenizer
                    .encode(PROMPTS[seed as usize % 6], true)
                    .unwrap();
                let got = run_constrained(&e, &prompt, cfg, *mode, &g);
                follows(&target, &g, &got.tokens)
                    .unwrap_or_else(|why| panic!("{g:?} mode {i} seed {seed}: {why}"));
            }
        }
    }
}

#[test]
fn answer_mode_and_ignored_ends_are_refused_with_a_grammar() {
    let p = Pair::new(DType::Q8_0, true);
    let e = p.engine(false, 2);
    let prompt = e.target().tokenizer.encode("a", true).unwrap();
    let g = Grammar::Regex("a+".into());
    let refuse = |mode: Mode, stop_at_eog: bool| {
        let req = Request {
            prompt: Prompt::Tokens(prompt.clone()),
            mode,
            config: GenerateConfig {
                stop_at_eog,
                ..Default::default()
            },
            grammar: Some(g.clone()),
        };
        e.submit(req).map(|_| ())
    };
    assert!(matches!(
        refuse(Mode::answer(None), true),
        Err(EngineError::InvalidParam { .. })
    ));
    assert!(matches!(
        refuse(Mode::Target, false),
        Err(EngineError::InvalidParam { .. })
    ));
    // A bad grammar is an error at submission.
    let req = Request {
        prompt: Prompt::Tokens(prompt.clone()),
        mode: Mode::Target,
        config: GenerateConfig::default(),
        grammar: Some(Grammar::Regex("(".into())),
    };
    assert!(matches!(e.submit(req), Err(EngineError::Grammar { .. })));
}
