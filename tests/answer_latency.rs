//! Answer mode beside target-only streams on fixture models (its own test binary, so no other
//! test's work shares the two cores while it times the streams): the draft writes a 1024-token
//! answer in the step's draft forwards, so the streams finish before its first token and keep
//! their inter-token latency's tail; cancelled mid-draft, its blocks come back within two steps.

mod common;

use common::{request, wait_for};

use std::path::Path;
use std::time::Instant;

use cascade::engine::fixture::FixtureSpec;
use cascade::engine::{Engine, EngineConfig, Event, Mode, SchedulerConfig, SpecConfig};

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
