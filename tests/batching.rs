//! Continuous batching on fixture models: a sequence's greedy output is bitwise the same whether
//! it runs alone or batched with others (any arrival order, chunked prompts, shared prefixes), in
//! target-only and exact modes; cancellation frees blocks; the queue and the KV budget refuse
//! what does not fit.

mod common;

use common::{request, wait_for};

use std::path::{Path, PathBuf};
use std::time::Duration;

use cascade::engine::fixture::FixtureSpec;
use cascade::engine::{
    DraftLen, Engine, EngineConfig, EngineError, Event, Mode, Request, SchedulerConfig, SpecConfig,
    StopReason,
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
