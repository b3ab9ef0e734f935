//! Speculative decoding on fixture models: greedy output equals the target's own bitwise, and
//! sampled output follows the target's distribution (chi-squared against the exact marginals),
//! while a verifier that accepts every draft fails the same test.

use rand::Rng;
use rayon::prelude::*;

use super::*;
use crate::fixture::{self, FixtureSpec};
use crate::generate::generate;
use crate::sampler::SamplingParams;
use cascade_weights::{DType, OpenOptions, WeightStore};

struct Pair {
    _dir: tempfile::TempDir,
    target: Model,
    draft: Model,
}

fn load(dir: &std::path::Path, name: &str, spec: &FixtureSpec) -> Model {
    let path = dir.join(name);
    fixture::write(spec, &path).unwrap();
    Model::load(&WeightStore::new(), &path, &OpenOptions::default()).unwrap()
}

/// A target and a draft with other random weights; the draft pads its vocabulary further (as
/// Qwen models of different sizes do). `small` makes both one-layer models, for tests that run
/// them hundreds of thousands of times.
fn pair(embd: DType, small: bool) -> Pair {
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
    let target = load(dir.path(), "t.gguf", &t);
    let draft = load(dir.path(), "d.gguf", &d);
    assert_eq!(target.tokenizer.first_difference(&draft.tokenizer), None);
    assert_ne!(target.vocab_size(), draft.vocab_size());
    Pair {
        _dir: dir,
        target,
        draft,
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

#[test]
fn greedy_exact_equals_target_bitwise() {
    let p = pair(DType::Q8_0, false);
    let lens = [
        DraftLen::Fixed(1),
        DraftLen::Fixed(2),
        DraftLen::Fixed(4),
        DraftLen::Fixed(8),
        DraftLen::Auto { max: 8 },
    ];
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            for (i, text) in PROMPTS.iter().enumerate() {
                let prompt = p.target.tokenizer.encode(text, true).unwrap();
                let cfg = GenerateConfig {
                    max_tokens: 40,
                    stop_at_eog: i % 2 == 0,
                    ..Default::default()
                };
                let plain = generate(&p.target, &prompt, &cfg, |_| true).unwrap();
                // Drafts: another model (low acceptance), the target itself (everything accepted:
                // the bonus path), prompt lookup, and lookup before the draft model.
                for len in lens {
                    let new = |m| ModelProposer::new(m, &p.target, 128, cfg.stop_at_eog);
                    let (mut other, mut same, mut other2) =
                        (new(&p.draft), new(&p.target), new(&p.draft));
                    let (mut lookup, mut lookup2) =
                        (NgramProposer::default(), NgramProposer::default());
                    let sets: [(&str, Vec<&mut dyn Proposer>); 4] = [
                        ("draft", vec![&mut other]),
                        ("self", vec![&mut same]),
                        ("ngram", vec![&mut lookup]),
                        ("ngram+draft", vec![&mut lookup2, &mut other2]),
                    ];
                    for (name, mut props) in sets {
                        let s = spec(len);
                        let g =
                            generate_speculative(&p.target, &mut props, &prompt, &cfg, &s, |_| {
                                true
                            })
                            .unwrap();
                        assert_eq!(
                            g.tokens, plain.tokens,
                            "prompt {i}, {name}, {len:?}, {threads} threads"
                        );
                        assert_eq!(g.stop, plain.stop);
                        if name == "self" {
                            assert_eq!(g.stats.accepted, g.stats.drafted, "{len:?}");
                        }
                        let st = &g.stats;
                        assert_eq!(st.generated_tokens, g.tokens.len());
                        // Every pass emits its accepted tokens plus one.
                        assert_eq!(st.accepted + st.target_passes, g.tokens.len() - 1);
                        assert_eq!(st.draft_lengths.iter().sum::<usize>(), st.target_passes);
                    }
                }
            }
        });
    }
}

#[test]
fn cancelling_and_limits_behave_like_plain_decoding() {
    let p = pair(DType::Q8_0, false);
    let prompt = p.target.tokenizer.encode("the cat", true).unwrap();
    let cfg = GenerateConfig {
        max_tokens: 9,
        stop_at_eog: false,
        ..Default::default()
    };
    let s = spec(DraftLen::Fixed(4));
    let mut same = ModelProposer::new(&p.target, &p.target, 64, false);
    let g = generate_speculative(&p.target, &mut [&mut same], &prompt, &cfg, &s, |_| true).unwrap();
    assert_eq!(g.tokens.len(), 9);
    assert_eq!(g.stop, StopReason::MaxTokens);
    let mut seen = 0;
    let mut same = ModelProposer::new(&p.target, &p.target, 64, false);
    let g = generate_speculative(&p.target, &mut [&mut same], &prompt, &cfg, &s, |_| {
        seen += 1;
        seen < 3
    })
    .unwrap();
    assert_eq!((g.tokens.len(), g.stop), (3, StopReason::Cancelled));
    // Bad draft lengths are errors, not panics.
    for bad in [
        DraftLen::Fixed(0),
        DraftLen::Fixed(MAX_DRAFT_LEN + 1),
        DraftLen::Auto { max: 0 },
    ] {
        let mut lookup = NgramProposer::default();
        let s = spec(bad);
        let e = generate_speculative(&p.target, &mut [&mut lookup], &prompt, &cfg, &s, |_| true);
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
    let mut cache = target.new_cache(prompt.len() + 2);
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

/// Second tokens of `draws` seeded runs of exact decoding: the first token comes from the
/// prefill, the second from the first verified round (one drafted token).
fn second_tokens(
    p: &Pair,
    prompt: &[u32],
    params: SamplingParams,
    f: VerifyFn,
    draws: u64,
) -> (Vec<usize>, f64) {
    let counts = (0..draws)
        .into_par_iter()
        .fold(
            || vec![0usize; p.target.vocab_size() + 2],
            |mut acc, seed| {
                let cfg = GenerateConfig {
                    max_tokens: 3,
                    sampling: SamplingParams { seed, ..params },
                    stop_at_eog: false,
                };
                let s = spec(DraftLen::Fixed(1));
                let mut d = ModelProposer::new(&p.draft, &p.target, 16, false);
                let g = run(
                    &p.target,
                    &mut [&mut d],
                    prompt,
                    &cfg,
                    &s,
                    &mut SpecMemory::default(),
                    f,
                    |_| true,
                )
                .unwrap();
                acc[g.tokens[1] as usize] += 1;
                // The last two cells count drafted and accepted tokens.
                let n = acc.len();
                acc[n - 2] += g.stats.drafted;
                acc[n - 1] += g.stats.accepted;
                acc
            },
        )
        .reduce(
            || vec![0usize; p.target.vocab_size() + 2],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        );
    let (drafted, accepted) = (counts[counts.len() - 2], counts[counts.len() - 1]);
    let counts = counts[..counts.len() - 2].to_vec();
    assert_eq!(counts.iter().sum::<usize>(), draws as usize);
    (counts, accepted as f64 / drafted as f64)
}

#[test]
fn sampled_exact_follows_the_target_distribution() {
    // F32 output rows give the fixture sharper distributions than the quantized default.
    let p = pair(DType::F32, true);
    let prompt = p.target.tokenizer.encode("the", true).unwrap();
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
        let exact = second_token_marginal(&p.target, &prompt, &params);
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

fn cascade_spec(rule: Rule, alpha: f32, answer: bool) -> SpecConfig {
    SpecConfig {
        draft_len: DraftLen::Fixed(4),
        cascade: Some(Cascade { rule, alpha }),
        answer,
        ..Default::default()
    }
}

fn run_with_draft(
    p: &Pair,
    draft: &Model,
    prompt: &[u32],
    cfg: &GenerateConfig,
    s: &SpecConfig,
) -> Generation {
    let mut d = ModelProposer::new(draft, &p.target, 256, cfg.stop_at_eog).with_judging(true);
    generate_speculative(&p.target, &mut [&mut d], prompt, cfg, s, |_| true).unwrap()
}

#[test]
fn alpha_zero_is_exact_for_every_rule_greedy_and_sampled() {
    let p = pair(DType::Q8_0, false);
    for (i, text) in PROMPTS.iter().enumerate().take(3) {
        let prompt = p.target.tokenizer.encode(text, true).unwrap();
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
            let exact = run_with_draft(&p, &p.draft, &prompt, &cfg, &spec(DraftLen::Fixed(4)));
            for rule in Rule::ALL {
                let g =
                    run_with_draft(&p, &p.draft, &prompt, &cfg, &cascade_spec(rule, 0.0, false));
                assert_eq!(g.tokens, exact.tokens, "prompt {i}, {rule:?}, {sampling:?}");
                assert_eq!(g.stats.kept_by_rule, 0);
            }
        }
    }
}

/// The target's untempered distribution after each prefix of `out` (teacher-forced).
fn along(model: &Model, prompt: &[u32], out: &[u32]) -> Vec<Distribution> {
    let mut cache = model.new_cache(prompt.len() + out.len() + 1);
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
    let p = pair(DType::Q8_0, false);
    let cfg = GenerateConfig {
        max_tokens: 40,
        stop_at_eog: false,
        ..Default::default()
    };
    for text in PROMPTS.iter().take(4) {
        let prompt = p.target.tokenizer.encode(text, true).unwrap();
        let exact = run_with_draft(&p, &p.draft, &prompt, &cfg, &spec(DraftLen::Fixed(4)));
        for alpha in [0.3f32, 0.6, 0.9] {
            // Token rule: every token is the target's argmax or within (1 − α) of its max.
            let g = run_with_draft(
                &p,
                &p.draft,
                &prompt,
                &cfg,
                &cascade_spec(Rule::Token, alpha, false),
            );
            let pt = along(&p.target, &prompt, &g.tokens);
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
            let g = run_with_draft(
                &p,
                &p.draft,
                &prompt,
                &cfg,
                &cascade_spec(Rule::Chow, alpha, false),
            );
            let pt = along(&p.target, &prompt, &g.tokens);
            let qd = along(&p.draft, &prompt, &g.tokens);
            for (j, &t) in g.tokens.iter().enumerate() {
                let max_q = qd[j].max_prob();
                assert!(
                    t == pt[j].argmax() || (t == qd[j].argmax() && max_q >= 1.0 - alpha),
                    "chow α {alpha}: position {j}"
                );
            }
        }
        // The most lenient setting keeps every drafted token: fewer target passes than exact.
        let g = run_with_draft(
            &p,
            &p.draft,
            &prompt,
            &cfg,
            &cascade_spec(Rule::Chow, 1.0, false),
        );
        assert_eq!(g.stats.accepted, g.stats.drafted);
        assert!(g.stats.kept_by_rule > 0);
        assert!(g.stats.target_passes <= exact.stats.target_passes);
    }
}

#[test]
fn answer_mode_is_exact_without_a_rule_and_passes_whole_from_the_target_itself() {
    let p = pair(DType::Q8_0, false);
    for (i, text) in PROMPTS.iter().enumerate() {
        let prompt = p.target.tokenizer.encode(text, true).unwrap();
        let cfg = GenerateConfig {
            max_tokens: 30,
            stop_at_eog: i % 2 == 0,
            ..Default::default()
        };
        let plain = generate(&p.target, &prompt, &cfg, |_| true).unwrap();
        let answer = SpecConfig {
            answer: true,
            ..spec(DraftLen::Auto { max: 8 })
        };
        let g = run_with_draft(&p, &p.draft, &prompt, &cfg, &answer);
        assert_eq!(g.tokens, plain.tokens, "prompt {i}");
        assert!(g.stats.answer_drafted > 0);
        assert!(g.stats.answer_kept <= g.stats.answer_drafted);
        // The target as its own draft: the answer passes whole.
        let g = run_with_draft(&p, &p.target, &prompt, &cfg, &answer);
        assert_eq!(g.tokens, plain.tokens, "prompt {i}, self");
        assert_eq!(g.stats.answer_kept, g.stats.answer_drafted);
        assert_eq!(g.stats.answer_drafted, plain.tokens.len());
        assert_eq!(
            g.stats.target_passes, 0,
            "one scoring pass, no rounds after it"
        );
        // A lenient rule keeps the draft's whole answer.
        let lenient = SpecConfig {
            cascade: Some(Cascade {
                rule: Rule::Chow,
                alpha: 1.0,
            }),
            ..answer
        };
        let g = run_with_draft(&p, &p.draft, &prompt, &cfg, &lenient);
        assert_eq!(g.stats.answer_kept, g.stats.answer_drafted);
    }
}

#[test]
fn learned_draft_lengths_carry_over_between_requests_and_output_stays_exact() {
    let p = pair(DType::Q8_0, false);
    let cfg = GenerateConfig {
        max_tokens: 30,
        stop_at_eog: false,
        ..Default::default()
    };
    let s = spec(DraftLen::Auto { max: 8 });
    let mut memory = SpecMemory::default();
    assert!(memory.is_empty());
    for text in PROMPTS.iter().take(3) {
        let prompt = p.target.tokenizer.encode(text, true).unwrap();
        let plain = generate(&p.target, &prompt, &cfg, |_| true).unwrap();
        let mut d = ModelProposer::new(&p.draft, &p.target, 128, false);
        let g = generate_speculative_with(
            &p.target,
            &mut [&mut d],
            &prompt,
            &cfg,
            &s,
            &mut memory,
            |_| true,
        )
        .unwrap();
        assert_eq!(g.tokens, plain.tokens, "{text}");
        assert!(!memory.is_empty());
    }
    // The draft's learned acceptance is kept for these settings only: other sampling parameters
    // start from the prior (α = 0.7).
    let props = [true];
    let learned = memory.controllers(&MemoryKey::new(&s, cfg.sampling), &props, s.draft_len);
    let other = SamplingParams {
        temperature: 0.7,
        ..cfg.sampling
    };
    let fresh = memory.controllers(&MemoryKey::new(&s, other), &props, s.draft_len);
    assert_eq!(fresh[0].alpha(), 0.7);
    assert_ne!(learned[0].alpha(), 0.7);
    // Another engine-wide memory absorbs exactly that entry and the pass costs.
    let mut shared = SpecMemory::default();
    shared.absorb(&memory, &s, other);
    assert!(shared.is_empty());
    shared.absorb(&memory, &s, cfg.sampling);
    let again = shared.controllers(&MemoryKey::new(&s, cfg.sampling), &props, s.draft_len);
    assert_eq!(again[0].alpha(), learned[0].alpha());
}
