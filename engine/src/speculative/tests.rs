//! Every speculative mode through the scheduler's decoder, on fixture models: greedy output
//! equals the target's own (the plain single-sequence loop, an independent oracle) bitwise for
//! every proposer, draft length and thread count; sampled exact output follows the target's
//! distribution (chi-squared against the exact marginals), while a verifier that accepts every
//! draft fails the same test; cascades emit only what their rule allows; answer mode is exact
//! without a rule.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::engine::{Completion, Engine, Mode, Prompt, Request};
use crate::error::EngineError;
use crate::fixture::{self, FixtureSpec};
use crate::generate::{generate, GenerateConfig, StopReason};
use crate::model::Logits;
use crate::sampler::SamplingParams;
use crate::scheduler::{Event, SchedulerConfig};
use cascade_weights::{DType, OpenOptions, WeightStore};

mod grammar;

/// A target and a draft with other random weights (files); the draft pads its vocabulary further
/// (as Qwen models of different sizes do). `small` makes both one-layer models, for tests that
/// run them a hundred thousand times.
struct Pair {
    dir: tempfile::TempDir,
}

impl Pair {
    fn new(embd: DType, small: bool) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let t = FixtureSpec {
            embd_dtype: embd,
            seed: 7,
            ..Default::default()
        };
        let t = if small {
            FixtureSpec {
                hidden: 32,
                n_heads: 2,
                n_kv_heads: 1,
                ffn: 64,
                n_layers: 1,
                ..t
            }
        } else {
            t
        };
        let d = FixtureSpec {
            hidden: 32,
            n_heads: 2,
            n_kv_heads: 1,
            ffn: 64,
            n_layers: if small { 1 } else { 2 },
            pad_vocab: 24,
            embd_dtype: embd,
            seed: 8,
            ..Default::default()
        };
        fixture::write(&t, &dir.path().join("t.gguf")).unwrap();
        fixture::write(&d, &dir.path().join("d.gguf")).unwrap();
        Pair { dir }
    }

    fn load(&self, store: &WeightStore, name: &str) -> Model {
        let path = self.dir.path().join(name);
        Model::load(store, &path, &OpenOptions::default()).unwrap()
    }

    fn target(&self) -> Model {
        self.load(&WeightStore::new(), "t.gguf")
    }

    /// An engine over the target and a draft: the other model, or the target itself (`self`:
    /// every drafted token is the target's own choice).
    fn engine(&self, draft_is_target: bool, threads: usize) -> Engine {
        let store = WeightStore::new();
        let t = self.load(&store, "t.gguf");
        let d = self.load(&store, if draft_is_target { "t.gguf" } else { "d.gguf" });
        Engine::with_models(store, t, Some(d), Some(threads), SchedulerConfig::default()).unwrap()
    }
}

const PROMPTS: [&str; 6] = [
    "the cat sat on the mat",
    "fn main() { println!(\"hi\"); }",
    "<|im_start|>user\nwrite a poem<|im_end|>\n<|im_start|>assistant\n",
    "a",
    "in the the the in the the the",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n",
];

fn spec(len: DraftLen) -> SpecConfig {
    SpecConfig {
        draft_len: len,
        ..Default::default()
    }
}

fn run(e: &Engine, prompt: &[u32], cfg: GenerateConfig, mode: Mode) -> Completion {
    let req = Request {
        prompt: Prompt::Tokens(prompt.to_vec()),
        mode,
        config: cfg,
        grammar: None,
    };
    e.generate(&req, |_| {}).unwrap()
}

/// The proposer sets a request can ask for: the draft model alone, prompt lookup alone, and
/// lookup before the draft model (the default).
fn proposer_sets(len: DraftLen) -> [(&'static str, SpecConfig); 3] {
    [
        (
            "draft",
            SpecConfig {
                lookup: None,
                ..spec(len)
            },
        ),
        (
            "ngram",
            SpecConfig {
                draft_model: false,
                lookup: Some(NgramProposer::default()),
                ..spec(len)
            },
        ),
        ("ngram+draft", spec(len)),
    ]
}

/// Every proposer set, and a draft that is the target itself (`"self"`: every drafted token is
/// the target's own choice).
fn proposers_and_self(len: DraftLen) -> impl Iterator<Item = (&'static str, SpecConfig)> {
    let self_set = (
        "self",
        SpecConfig {
            lookup: None,
            ..spec(len)
        },
    );
    proposer_sets(len).into_iter().chain([self_set])
}

#[test]
fn greedy_exact_equals_target_bitwise() {
    let p = Pair::new(DType::Q8_0, false);
    let target = p.target();
    let lens = [
        DraftLen::Fixed(1),
        DraftLen::Fixed(2),
        DraftLen::Fixed(4),
        DraftLen::Fixed(8),
        DraftLen::Auto { max: 8 },
    ];
    for threads in [1, 2] {
        let (other, same) = (p.engine(false, threads), p.engine(true, threads));
        for (i, text) in PROMPTS.iter().enumerate() {
            let prompt = target.tokenizer.encode(text, true).unwrap();
            let cfg = GenerateConfig {
                max_tokens: 40,
                stop_at_eog: i % 2 == 0,
                ..Default::default()
            };
            let plain = generate(&target, &prompt, &cfg, |_| true).unwrap();
            for len in lens {
                for (name, s) in proposers_and_self(len) {
                    let e = if name == "self" { &same } else { &other };
                    let g = run(e, &prompt, cfg, Mode::Speculative(s));
                    let what = format!("prompt {i}, {name}, {len:?}, {threads} threads");
                    assert_eq!(g.tokens, plain.tokens, "{what}");
                    assert_eq!(g.stop, plain.stop, "{what}");
                    let st = &g.stats;
                    if name == "self" {
                        assert_eq!(st.accepted, st.drafted, "{what}");
                    }
                    if matches!(len, DraftLen::Fixed(_)) && name != "ngram" {
                        assert!(st.drafted > 0, "{what}: nothing drafted");
                    }
                    assert_eq!(st.generated_tokens, g.tokens.len());
                    // Every pass emits its accepted tokens plus one.
                    assert_eq!(st.accepted + st.target_passes, g.tokens.len() - 1, "{what}");
                    assert_eq!(st.draft_lengths.iter().sum::<usize>(), st.target_passes);
                }
            }
        }
    }
}

#[test]
fn limits_and_bad_draft_lengths_behave_like_plain_decoding() {
    let p = Pair::new(DType::Q8_0, false);
    let e = p.engine(true, 2);
    let prompt = e.target().tokenizer.encode("the cat", true).unwrap();
    let cfg = GenerateConfig {
        max_tokens: 9,
        stop_at_eog: false,
        ..Default::default()
    };
    let g = run(
        &e,
        &prompt,
        cfg,
        Mode::Speculative(spec(DraftLen::Fixed(4))),
    );
    assert_eq!((g.tokens.len(), g.stop), (9, StopReason::MaxTokens));
    // Bad draft lengths are errors at submission, not panics.
    for bad in [
        DraftLen::Fixed(0),
        DraftLen::Fixed(MAX_DRAFT_LEN + 1),
        DraftLen::Auto { max: 0 },
    ] {
        let req = Request {
            prompt: Prompt::Tokens(prompt.clone()),
            mode: Mode::Speculative(spec(bad)),
            config: cfg,
            grammar: None,
        };
        let e = e.submit(req).map(|_| ());
        assert!(
            matches!(e, Err(EngineError::InvalidParam { .. })),
            "{bad:?}"
        );
    }
}

/// Upper critical value of chi-squared with `df` degrees of freedom at significance 0.001
/// (Wilson–Hilferty; accurate to a fraction of a percent for df ≥ 10).
fn chi2_critical(df: f64) -> f64 {
    let z = 3.090_232;
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + z * a.sqrt()).powi(3)
}

/// Pearson's statistic of `counts` against `probs`; cells expected below 5 draws are pooled.
fn chi2(counts: &[usize], probs: &[f64], n: usize) -> (f64, f64) {
    let (mut stat, mut cells) = (0.0, 0usize);
    let (mut pool_c, mut pool_e) = (0.0, 0.0);
    for (&c, &p) in counts.iter().zip(probs) {
        let e = p * n as f64;
        if e < 5.0 {
            pool_c += c as f64;
            pool_e += e;
        } else {
            stat += (c as f64 - e).powi(2) / e;
            cells += 1;
        }
    }
    if pool_e > 0.0 {
        stat += (pool_c - pool_e).powi(2) / pool_e.max(1e-9);
        cells += 1;
    }
    (stat, (cells - 1) as f64)
}

/// The exact marginal distribution of the second generated token under the target:
/// Σ_t1 p(t1 | prompt) · p(t2 | prompt, t1).
fn second_token_marginal(target: &Model, prompt: &[u32], params: &SamplingParams) -> Vec<f64> {
    let valid = target.valid_mask();
    let mut cache = target.new_cache(prompt.len() + 2).unwrap();
    let l = target.forward(prompt, &mut cache, Logits::Last).unwrap();
    let p1 = Distribution::from_logits(&l, params, valid);
    let mut out = vec![0f64; target.vocab_size()];
    for (t1, &w) in p1.to_dense(target.vocab_size()).iter().enumerate() {
        if w > 0.0 {
            cache.rollback_to(prompt.len()).unwrap();
            let l = target
                .forward(&[t1 as u32], &mut cache, Logits::Last)
                .unwrap();
            let p2 = Distribution::from_logits(&l, params, valid);
            for (o, &p) in out.iter_mut().zip(&p2.to_dense(target.vocab_size())) {
                *o += w as f64 * p as f64;
            }
        }
    }
    out
}

/// A verifier that accepts every drafted token: what the draft proposes is what comes out.
fn accept_all(
    p: &[Distribution],
    _: &[DraftProbs],
    drafted: &[u32],
    rng: &mut ChaCha8Rng,
) -> Verdict {
    Verdict {
        accepted: drafted.len(),
        next: verify::sample(&p[drafted.len()], rng),
        kind: NextKind::Bonus,
    }
}

/// Second tokens of `draws` seeded requests of exact decoding through the scheduler (with
/// `f` as its verifier), many at once: the first token comes from the prefill, the second from
/// the first verified round (one drafted token). Returns the counts and the acceptance.
fn second_tokens(
    p: &Pair,
    prompt: &[u32],
    params: SamplingParams,
    f: VerifyFn,
    draws: u64,
) -> (Vec<usize>, f64) {
    let store = WeightStore::new();
    let models = (p.load(&store, "t.gguf"), Some(p.load(&store, "d.gguf")));
    let sched = SchedulerConfig {
        max_batch: 64,
        max_queue: 256,
        ..Default::default()
    };
    let e = Engine::with_verifier(store, models, sched, f).unwrap();
    let vocab = e.target().vocab_size();
    let mut counts = vec![0usize; vocab];
    let (mut drafted, mut accepted) = (0, 0);
    let s = SpecConfig {
        lookup: None,
        ..spec(DraftLen::Fixed(1))
    };
    let seeds: Vec<u64> = (0..draws).collect();
    for wave in seeds.chunks(128) {
        let handles: Vec<_> = wave
            .iter()
            .map(|&seed| {
                let req = Request {
                    prompt: Prompt::Tokens(prompt.to_vec()),
                    mode: Mode::Speculative(s),
                    config: GenerateConfig {
                        max_tokens: 3,
                        sampling: SamplingParams { seed, ..params },
                        stop_at_eog: false,
                    },
                    grammar: None,
                };
                e.submit(req).unwrap()
            })
            .collect();
        for h in handles {
            let c = loop {
                match h.recv().expect("events end with Done") {
                    Event::Done(c) => break c,
                    Event::Failed(e) => panic!("{e}"),
                    Event::Tokens { .. } => {}
                }
            };
            counts[c.tokens[1] as usize] += 1;
            drafted += c.stats.drafted;
            accepted += c.stats.accepted;
        }
    }
    assert_eq!(counts.iter().sum::<usize>(), draws as usize);
    (counts, accepted as f64 / drafted as f64)
}

#[test]
fn sampled_exact_follows_the_target_distribution() {
    // F32 output rows give the fixture sharper distributions than the quantized default.
    let p = Pair::new(DType::F32, true);
    let target = p.target();
    let prompt = target.tokenizer.encode("the", true).unwrap();
    for (name, params) in [
        (
            "temperature 0.7",
            SamplingParams {
                temperature: 0.7,
                ..SamplingParams::greedy()
            },
        ),
        (
            "temperature 0.7, top-p 0.9",
            SamplingParams {
                temperature: 0.7,
                top_p: 0.9,
                ..SamplingParams::greedy()
            },
        ),
    ] {
        let exact = second_token_marginal(&target, &prompt, &params);
        let (good, rate) = second_tokens(&p, &prompt, params, verify::<ChaCha8Rng>, 100_000);
        // Both the acceptance and the correction paths must be exercised.
        assert!((0.1..0.95).contains(&rate), "{name}: acceptance {rate}");
        let (stat, df) = chi2(&good, &exact, 100_000);
        let crit = chi2_critical(df);
        eprintln!(
            "{name}: chi2 {stat:.1} on {df} df (critical {crit:.1} at 0.001), acceptance {rate:.3}"
        );
        assert!(stat < crit, "{name}: chi2 {stat:.1} ≥ {crit:.1} on {df} df");

        // The broken verifier fails by orders of magnitude; fewer draws show it.
        let (broken, _) = second_tokens(&p, &prompt, params, accept_all, 20_000);
        let (stat, df) = chi2(&broken, &exact, 20_000);
        let crit = chi2_critical(df);
        eprintln!("{name}, accept-all verifier: chi2 {stat:.1} on {df} df");
        assert!(
            stat > crit,
            "{name}: the broken verifier passed ({stat:.1} < {crit:.1})"
        );
    }
}

#[test]
fn chi2_helpers_accept_a_fair_sample() {
    // Sanity of the statistic itself: draws from the stated distribution pass.
    let probs: Vec<f64> = (1..=50).map(|i| i as f64 / 1275.0).collect();
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5);
    let mut counts = vec![0usize; 50];
    for _ in 0..100_000 {
        let u: f64 = rng.random();
        let mut cum = 0.0;
        let i = probs
            .iter()
            .position(|p| {
                cum += p;
                u < cum
            })
            .unwrap_or(49);
        counts[i] += 1;
    }
    let (stat, df) = chi2(&counts, &probs, 100_000);
    assert_eq!(df, 49.0);
    assert!(stat < chi2_critical(df), "{stat}");
    assert!(
        (chi2_critical(49.0) - 85.35).abs() < 0.5,
        "{}",
        chi2_critical(49.0)
    );
}

fn cascade_spec(rule: Rule, alpha: f32, answer: bool) -> Mode {
    Mode::Speculative(SpecConfig {
        draft_len: DraftLen::Fixed(4),
        cascade: Some(Cascade { rule, alpha }),
        answer,
        lookup: None,
        ..Default::default()
    })
}

fn exact4() -> Mode {
    Mode::Speculative(SpecConfig {
        lookup: None,
        ..spec(DraftLen::Fixed(4))
    })
}

#[test]
fn alpha_zero_is_exact_for_every_rule_greedy_and_sampled() {
    let p = Pair::new(DType::Q8_0, false);
    let e = p.engine(false, 2);
    for (i, text) in PROMPTS.iter().enumerate().take(3) {
        let prompt = e.target().tokenizer.encode(text, true).unwrap();
        for sampling in [
            SamplingParams::greedy(),
            SamplingParams {
                temperature: 0.8,
                top_p: 0.9,
                seed: 3,
                ..SamplingParams::greedy()
            },
        ] {
            let cfg = GenerateConfig {
                max_tokens: 30,
                sampling,
                stop_at_eog: false,
            };
            let exact = run(&e, &prompt, cfg, exact4());
            for rule in Rule::ALL {
                let g = run(&e, &prompt, cfg, cascade_spec(rule, 0.0, false));
                assert_eq!(g.tokens, exact.tokens, "prompt {i}, {rule:?}, {sampling:?}");
                assert_eq!(g.stats.kept_by_rule, 0);
            }
        }
    }
}

/// The target's untempered distribution after each prefix of `out` (teacher-forced).
fn along(model: &Model, prompt: &[u32], out: &[u32]) -> Vec<Distribution> {
    let mut cache = model.new_cache(prompt.len() + out.len() + 1).unwrap();
    let mut input = prompt.to_vec();
    input.extend_from_slice(out);
    let logits = model
        .forward(&input, &mut cache, Logits::From(prompt.len() - 1))
        .unwrap();
    logits
        .chunks_exact(model.vocab_size())
        .map(|row| {
            Distribution::from_logits(row, &SamplingParams::untempered(), model.valid_mask())
        })
        .collect()
}

#[test]
fn greedy_cascades_emit_the_target_argmax_or_what_the_rule_allows() {
    let p = Pair::new(DType::Q8_0, false);
    let e = p.engine(false, 2);
    let (target, draft) = (p.target(), p.load(&WeightStore::new(), "d.gguf"));
    let cfg = GenerateConfig {
        max_tokens: 40,
        stop_at_eog: false,
        ..Default::default()
    };
    for text in PROMPTS.iter().take(4) {
        let prompt = target.tokenizer.encode(text, true).unwrap();
        let exact = run(&e, &prompt, cfg, exact4());
        for alpha in [0.3f32, 0.6, 0.9] {
            // Token rule: every token is the target's argmax or within (1 − α) of its max.
            let g = run(&e, &prompt, cfg, cascade_spec(Rule::Token, alpha, false));
            let pt = along(&target, &prompt, &g.tokens);
            for (j, &t) in g.tokens.iter().enumerate() {
                let d = &pt[j];
                let max = d.max_prob();
                assert!(
                    t == d.argmax() || d.prob(t) >= (1.0 - alpha) * max,
                    "token rule α {alpha}: position {j} token {t} has p {} of max {max}",
                    d.prob(t)
                );
            }
            // Chow: every token is the target's argmax or the draft's where the draft was sure.
            let g = run(&e, &prompt, cfg, cascade_spec(Rule::Chow, alpha, false));
            let pt = along(&target, &prompt, &g.tokens);
            let qd = along(&draft, &prompt, &g.tokens);
            for (j, &t) in g.tokens.iter().enumerate() {
                let max_q = qd[j].max_prob();
                assert!(
                    t == pt[j].argmax() || (t == qd[j].argmax() && max_q >= 1.0 - alpha),
                    "chow α {alpha}: position {j}"
                );
            }
        }
        // The most lenient setting keeps every drafted token: fewer target passes than exact.
        let g = run(&e, &prompt, cfg, cascade_spec(Rule::Chow, 1.0, false));
        assert_eq!(g.stats.accepted, g.stats.drafted);
        assert!(g.stats.kept_by_rule > 0);
        assert!(g.stats.target_passes <= exact.stats.target_passes);
    }
}

#[test]
fn answer_mode_is_exact_without_a_rule_and_passes_whole_from_the_target_itself() {
    let p = Pair::new(DType::Q8_0, false);
    let target = p.target();
    let (other, same) = (p.engine(false, 2), p.engine(true, 2));
    let answer = SpecConfig {
        answer: true,
        ..spec(DraftLen::Auto { max: 8 })
    };
    for (i, text) in PROMPTS.iter().enumerate() {
        let prompt = target.tokenizer.encode(text, true).unwrap();
        for sampling in [
            SamplingParams::greedy(),
            SamplingParams {
                top_k: 20,
                seed: 9,
                ..SamplingParams::greedy()
            },
        ] {
            let cfg = GenerateConfig {
                max_tokens: 30,
                stop_at_eog: i % 2 == 0,
                sampling,
            };
            let plain = generate(&target, &prompt, &cfg, |_| true).unwrap();
            let g = run(&other, &prompt, cfg, Mode::Speculative(answer));
            if sampling.is_greedy() {
                assert_eq!(g.tokens, plain.tokens, "prompt {i}");
            }
            assert!(g.stats.answer_drafted > 0);
            assert!(g.stats.answer_kept <= g.stats.answer_drafted);
            // The target as its own draft: the answer passes whole, with no round after it.
            let g = run(&same, &prompt, cfg, Mode::Speculative(answer));
            if sampling.is_greedy() {
                assert_eq!(g.tokens, plain.tokens, "prompt {i}, self");
                assert_eq!(g.stats.answer_drafted, plain.tokens.len());
            }
            assert_eq!(g.stats.answer_kept, g.stats.answer_drafted, "prompt {i}");
            assert_eq!(g.stats.target_passes, 1, "one scoring, no rounds after it");
        }
        // A lenient rule keeps the draft's whole answer.
        let cfg = GenerateConfig {
            max_tokens: 30,
            stop_at_eog: i % 2 == 0,
            ..Default::default()
        };
        let lenient = SpecConfig {
            cascade: Some(Cascade {
                rule: Rule::Chow,
                alpha: 1.0,
            }),
            ..answer
        };
        let g = run(&other, &prompt, cfg, Mode::Speculative(lenient));
        assert_eq!(g.stats.answer_kept, g.stats.answer_drafted);
    }
}
