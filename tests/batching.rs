//! Continuous batching on fixture models: a sequence's greedy output is bitwise the same whether
//! it runs alone or batched with others (any arrival order, chunked prompts, shared prefixes), in
//! target-only and exact modes; cancellation frees blocks; the queue and the KV budget refuse
//! what does not fit.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cascade::engine::fixture::FixtureSpec;
use cascade::engine::{
    DraftLen, Engine, EngineConfig, EngineError, Event, GenerateConfig, Mode, Prompt, Request,
    SchedulerConfig, SpecConfig, StopReason,
};

fn pair(dir: &Path) -> (PathBuf, PathBuf) {
    common::fixture_pair(dir)
}

fn engine(dir: &Path, sched: SchedulerConfig) -> Engine {
    let (t, d) = pair(dir);
    Engine::load(&EngineConfig {
        target: t,
        draft: Some(d),
        threads: Some(2),
        scheduler: sched,
        ..Default::default()
    })
    .unwrap()
}

/// Sixteen prompts of mixed lengths; 0-5 share a 40-token prefix, 6-9 another of 24.
fn prompts(vocab: u32) -> Vec<(Vec<u32>, usize)> {
    let tok = |i: u32| 3 + (i as u64 * 2654435761 % (vocab as u64 - 40)) as u32;
    let shared_a: Vec<u32> = (0..40).map(|i| tok(i + 1000)).collect();
    let shared_b: Vec<u32> = (0..24).map(|i| tok(i + 5000)).collect();
    (0..16u32)
        .map(|r| {
            let tail: Vec<u32> = (0..(3 + r * 5 % 23)).map(|i| tok(r * 100 + i)).collect();
            let mut p = match r {
                0..=5 => shared_a.clone(),
                6..=9 => shared_b.clone(),
                _ => Vec::new(),
            };
            p.extend(tail);
            (p, 8 + (r as usize * 7) % 25)
        })
        .collect()
}

fn request(prompt: &[u32], max_tokens: usize, mode: Mode) -> Request {
    Request {
        prompt: Prompt::Tokens(prompt.to_vec()),
        mode,
        config: GenerateConfig {
            max_tokens,
            stop_at_eog: false,
            ..Default::default()
        },
    }
}

/// Submits every request in waves of four, each wave once the previous one has streamed tokens;
/// returns each request's tokens and drafted count.
fn run_staggered(e: &Engine, reqs: &[Request], order: &[usize]) -> Vec<(Vec<u32>, usize)> {
    let mut handles: Vec<(usize, _)> = Vec::new();
    for wave in order.chunks(4) {
        for &i in wave {
            handles.push((i, e.submit(reqs[i].clone()).unwrap()));
        }
        // Wait for a token of this wave's first request, so later waves join a running batch.
        let (_, h) = handles.last().unwrap();
        match h.recv_timeout(Duration::from_secs(60)) {
            Ok(Event::Tokens { .. }) | Ok(Event::Done(_)) => {}
            other => panic!("no first event: {other:?}"),
        }
        // The consumed event's tokens are re-read below from the completion.
    }
    let mut out = vec![(Vec::new(), 0); reqs.len()];
    for (i, h) in handles {
        let c = loop {
            match h.recv().expect("events end with Done") {
                Event::Done(c) => break c,
                Event::Failed(e) => panic!("request {i} failed: {e}"),
                Event::Tokens { .. } => {}
            }
        };
        out[i] = (c.tokens, c.stats.drafted);
    }
    out
}

#[test]
fn batched_greedy_output_is_bitwise_each_request_alone() {
    let dir = tempfile::tempdir().unwrap();
    let sched = SchedulerConfig {
        step_tokens: 13,
        ..Default::default()
    };
    let e = engine(dir.path(), sched);
    let vocab = e.target().tokenizer.n_vocab() as u32;
    let ps = prompts(vocab);
    let target_reqs: Vec<Request> = ps
        .iter()
        .map(|(p, n)| request(p, *n, Mode::Target))
        .collect();
    let alone: Vec<Vec<u32>> = target_reqs
        .iter()
        .map(|r| e.generate(r, |_| {}).unwrap().tokens)
        .collect();
    for (a, (_, n)) in alone.iter().zip(&ps) {
        assert_eq!(a.len(), *n, "every request runs to max_tokens");
    }
    // A request run again finds its whole prompt cached but the last token (which is computed
    // for its logits): two whole blocks shared and the rest copied from the third.
    let again = e.generate(&target_reqs[3], |_| {}).unwrap();
    assert_eq!(again.cached_tokens, ps[3].0.len() - 1);
    assert_eq!(again.tokens, alone[3]);

    let forward: Vec<usize> = (0..16).collect();
    let backward: Vec<usize> = (0..16).rev().collect();
    let mixed: Vec<usize> = (0..16).map(|i| (i * 7) % 16).collect();
    for order in [&forward, &backward, &mixed] {
        let got = run_staggered(&e, &target_reqs, order);
        for i in 0..16 {
            assert_eq!(
                got[i].0, alone[i],
                "target-only request {i}, order {order:?}"
            );
        }
    }
    let exact_reqs: Vec<Request> = ps
        .iter()
        .map(|(p, n)| request(p, *n, Mode::exact()))
        .collect();
    let got = run_staggered(&e, &exact_reqs, &mixed);
    for i in 0..16 {
        assert_eq!(got[i].0, alone[i], "exact request {i}");
    }
    // A fixed draft length drafts every round whatever the plan prices: every request drafts
    // (through the batched draft forwards) and still gives the target's tokens.
    let fixed = Mode::Speculative(SpecConfig {
        draft_len: DraftLen::Fixed(3),
        ..SpecConfig::default()
    });
    let fixed_reqs: Vec<Request> = ps.iter().map(|(p, n)| request(p, *n, fixed)).collect();
    let got = run_staggered(&e, &fixed_reqs, &forward);
    for i in 0..16 {
        assert_eq!(got[i].0, alone[i], "fixed-length exact request {i}");
        assert!(got[i].1 > 0, "request {i} drafted nothing");
    }
    // Answer mode is phases of the same sequences: the draft writes each answer in the step's
    // draft forwards, the target scores it in chunks. Batched with target-only streams (odd
    // requests) and with each other, every request gives the target's tokens.
    let answer = Mode::Speculative(SpecConfig {
        answer: true,
        ..SpecConfig::default()
    });
    let mixed_reqs: Vec<Request> = ps
        .iter()
        .enumerate()
        .map(|(i, (p, n))| request(p, *n, if i % 2 == 0 { answer } else { Mode::Target }))
        .collect();
    let got = run_staggered(&e, &mixed_reqs, &mixed);
    for i in 0..16 {
        assert_eq!(got[i].0, alone[i], "answer-mode batch, request {i}");
        if i % 2 == 0 {
            assert!(got[i].1 > 0, "answer request {i} drafted no answer");
        }
    }
    let answer_alone = e
        .generate(&request(&ps[5].0, ps[5].1, answer), |_| {})
        .unwrap();
    assert_eq!(answer_alone.tokens, alone[5], "answer mode alone");
    assert!(answer_alone.stats.answer_drafted > 0);
    assert!(answer_alone.stats.answer_kept <= answer_alone.stats.answer_drafted);
    // Another engine: no prefix cache, another step budget and block size.
    let dir2 = tempfile::tempdir().unwrap();
    let e2 = engine(
        dir2.path(),
        SchedulerConfig {
            step_tokens: 64,
            block_size: 32,
            prefix_cache: false,
            ..Default::default()
        },
    );
    let got = run_staggered(&e2, &exact_reqs, &backward);
    for i in 0..16 {
        assert_eq!(got[i].0, alone[i], "exact request {i}, second engine");
    }
    let got = run_staggered(&e2, &mixed_reqs, &forward);
    for i in 0..16 {
        assert_eq!(got[i].0, alone[i], "answer-mode batch {i}, second engine");
    }
}

fn wait_for(e: &Engine, what: &str, f: impl Fn(&cascade::engine::SchedulerStats) -> bool) {
    let t = Instant::now();
    while !f(&e.stats()) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}: {:?}",
            e.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn cancelling_frees_blocks_and_the_queue_refuses_past_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(
        dir.path(),
        SchedulerConfig {
            max_batch: 1,
            max_queue: 1,
            ..Default::default()
        },
    );
    let long = request(&[5, 6, 7, 8], 200, Mode::Target);
    let h = e.submit(long.clone()).unwrap();
    assert!(matches!(h.recv(), Some(Event::Tokens { .. })));
    wait_for(&e, "one running", |s| s.running == 1);
    let queued = e.submit(long.clone()).unwrap();
    match e.submit(long.clone()) {
        Err(EngineError::QueueFull { limit: 1 }) => {}
        other => panic!("expected QueueFull, got {other:?}"),
    }
    h.cancel();
    let done = loop {
        match h.recv().unwrap() {
            Event::Done(c) => break c,
            Event::Tokens { .. } => {}
            Event::Failed(e) => panic!("{e}"),
        }
    };
    assert_eq!(done.stop, StopReason::Cancelled);
    assert!(done.tokens.len() < 200);
    // The queued one starts; dropping its handle cancels it, and every block comes back.
    assert!(matches!(queued.recv(), Some(Event::Tokens { .. })));
    drop(queued);
    wait_for(&e, "nothing running", |s| {
        s.running == 0 && s.kv_blocks_used == 0
    });
}

#[test]
fn a_request_larger_than_the_kv_budget_is_refused_with_the_numbers() {
    // A target with a long context, so a request can need more blocks than 1 MiB holds (the
    // default fixture's 256 positions always fit).
    let dir = tempfile::tempdir().unwrap();
    let spec = FixtureSpec {
        context_length: 8192,
        ..FixtureSpec::default()
    };
    let e = Engine::load(&EngineConfig {
        target: common::write_fixture(dir.path(), "long.gguf", &spec),
        threads: Some(2),
        scheduler: SchedulerConfig {
            kv_budget_mb: 1,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let total = e.stats().kv_blocks_total;
    let positions = total * 16;
    assert!(positions > 0 && positions < 8000, "{total} blocks");
    // Fits: runs. One past the pool: refused, naming the numbers, and the engine goes on.
    let small = request(&[5, 6, 7], positions / 2, Mode::Target);
    assert_eq!(
        e.generate(&small, |_| {}).unwrap().tokens.len(),
        positions / 2
    );
    let big = request(&[5, 6, 7], positions, Mode::Target);
    match e.generate(&big, |_| {}) {
        Err(EngineError::KvBudget {
            needed, total: t, ..
        }) => assert!(needed > t && t == total, "{needed} {t} {total}"),
        other => panic!("expected KvBudget, got {other:?}"),
    }
    assert_eq!(
        e.generate(&small, |_| {}).unwrap().tokens.len(),
        positions / 2
    );
}

/// A long context pair, so an answer of 1024 tokens fits; a wider target than the default
/// fixture, so a step takes long enough (about a millisecond) for the consumers' timestamps to
/// be the step's.
fn long_pair_engine(dir: &Path, sched: SchedulerConfig) -> Engine {
    let spec = FixtureSpec {
        context_length: 2048,
        hidden: 512,
        ffn: 1536,
        n_heads: 8,
        n_kv_heads: 2,
        n_layers: 4,
        ..FixtureSpec::default()
    };
    let draft = common::draft_spec(FixtureSpec {
        context_length: 2048,
        ..FixtureSpec::default()
    });
    Engine::load(&EngineConfig {
        target: common::write_fixture(dir, "t.gguf", &spec),
        draft: Some(common::write_fixture(dir, "d.gguf", &draft)),
        threads: Some(2),
        scheduler: sched,
        ..Default::default()
    })
    .unwrap()
}

/// Seconds between a stream's token events, and when it ended.
fn gaps(h: cascade::engine::RequestHandle) -> (Vec<f64>, Instant) {
    let mut last: Option<Instant> = None;
    let mut out = Vec::new();
    loop {
        match h.recv().expect("events end with Done") {
            Event::Tokens { .. } => {
                let now = Instant::now();
                if let Some(l) = last {
                    out.push((now - l).as_secs_f64());
                }
                last = Some(now);
            }
            Event::Done(_) => return (out, Instant::now()),
            Event::Failed(e) => panic!("{e}"),
        }
    }
}

/// When a request's first tokens arrived, and its completion.
fn first_event(h: cascade::engine::RequestHandle) -> (Instant, cascade::engine::Completion) {
    let mut first = None;
    loop {
        match h.recv().expect("events end with Done") {
            Event::Tokens { .. } => {
                first.get_or_insert_with(Instant::now);
            }
            Event::Done(c) => return (first.expect("tokens came"), *c),
            Event::Failed(e) => panic!("{e}"),
        }
    }
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Answer mode beside target-only streams: the draft writes its 1024-token answer in the
/// step's draft forwards and the target scores it in budgeted chunks, so the streams' inter-token
/// latency keeps its tail (p99 within 3x the median); the answer's blocks are counted while it
/// writes, and cancelling it mid-draft gives them back within a step or two.
#[test]
fn an_answer_beside_streams_keeps_their_latency_and_cancels_within_a_step() {
    let dir = tempfile::tempdir().unwrap();
    let e = long_pair_engine(dir.path(), SchedulerConfig::default());
    let answer = Mode::Speculative(SpecConfig {
        answer: true,
        ..SpecConfig::default()
    });
    let streams: Vec<_> = (0..4)
        .map(|i| {
            e.submit(request(&[5, 6, 7, 8 + i], 400, Mode::Target))
                .unwrap()
        })
        .collect();
    wait_for(&e, "four streams", |s| s.running == 4);
    let long = e.submit(request(&[9, 10, 11], 1024, answer)).unwrap();
    let (runs, (first, c)) = std::thread::scope(|sc| {
        let t: Vec<_> = streams.into_iter().map(|h| sc.spawn(|| gaps(h))).collect();
        let a = sc.spawn(|| first_event(long));
        let runs: Vec<_> = t.into_iter().map(|t| t.join().unwrap()).collect();
        (runs, a.join().unwrap())
    });
    assert_eq!(c.tokens.len(), 1024);
    assert!(c.stats.answer_drafted > 0);
    // The draft writes a token a step beside the streams (1024 steps), so the streams' 400
    // tokens all come before the answer's first: nothing waits for the answer.
    for (_, done) in &runs {
        assert!(*done < first, "a stream waited for the answer");
    }
    let mut all: Vec<f64> = runs.into_iter().flat_map(|(g, _)| g).collect();
    let (median, p99) = (quantile(&mut all, 0.5), quantile(&mut all, 0.99));
    eprintln!(
        "streams' inter-token latency beside an answer: median {median:.5} s, p99 {p99:.5} s"
    );
    assert!(p99 <= 3.0 * median, "p99 {p99} > 3x median {median}");

    // Cancelled while its draft writes: every block comes back within a couple of steps.
    wait_for(&e, "idle", |s| s.running == 0);
    let idle = e.stats().kv_blocks_used;
    let h = e.submit(request(&[9, 10, 12], 1024, answer)).unwrap();
    wait_for(&e, "the answer running", |s| s.running == 1 && s.steps > 0);
    let held = e.stats();
    assert!(
        held.kv_blocks_used > idle,
        "the answer's blocks are counted"
    );
    let at = e.stats().steps;
    drop(h);
    wait_for(&e, "blocks back", |s| {
        s.running == 0 && s.kv_blocks_used == idle
    });
    let steps = e.stats().steps - at;
    assert!(steps <= 2, "blocks came back after {steps} steps");
}
