//! The GPU forward pass run end to end on the host shim (the CUDA kernel sources compiled for
//! the CPU): a fixture model placed on the shim gives the CPU engine's logits within the
//! rounding of its own 8-bit activations, and the same greedy tokens, for every weight type the
//! device kernels read. On a machine with a GPU the same model code runs through the driver.

mod common;

use cascade::engine::fixture::FixtureSpec;
use cascade::engine::{Logits, Model, Precision};
use cascade::gpu::Device;
use cascade::weights::{DType, OpenOptions, WeightStore};

fn load(path: &std::path::Path) -> Model {
    Model::load(&WeightStore::new(), path, &OpenOptions::default()).unwrap()
}

/// The largest |a - b| over the largest |a|.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn argmax(row: &[f32]) -> (usize, f32) {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    let second = row
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .fold(f32::MIN, |m, (_, &x)| m.max(x));
    (best, row[best] - second)
}

/// The host shim, and the first GPU when the machine has one (said when it has none).
fn devices() -> Vec<Device> {
    let mut list = vec![Device::shim()];
    match cascade::gpu::probe() {
        Ok(g) if !g.is_empty() => list.push(Device::cuda(0).expect("open cuda:0")),
        Ok(_) => println!("no GPU: the device half of this test runs on the shim only"),
        Err(e) => println!("no GPU ({e}): the device half of this test runs on the shim only"),
    }
    list
}

/// Per row of `[rows][vocab]` logits: the device's distance from the f32 reference must stay
/// within the CPU's own 8-bit path's (its activations are quantized in blocks of 32 where the
/// CPU's K-quant path uses 256, so it is usually closer). Random fixture weights make some rows
/// chaotic (attention scores of ~100 turn a rounding difference into another winner) for both
/// 8-bit paths; a broken device kernel is far off on every row.
fn within_cpu_error(what: &str, reference: &[f32], cpu: &[f32], dev: &[f32], vocab: usize) {
    assert_eq!(reference.len(), dev.len(), "{what}: logit rows");
    for (r, ((x, c), d)) in reference
        .chunks(vocab)
        .zip(cpu.chunks(vocab))
        .zip(dev.chunks(vocab))
        .enumerate()
    {
        let (ec, ed) = (rel_diff(x, c), rel_diff(x, d));
        assert!(
            ed <= 1.5 * ec + 0.01,
            "{what} row {r}: device off the f32 reference by {ed}, the CPU's int8 path by {ec}"
        );
    }
}

/// Prefill logits of every position, then decode steps (one token on top of the cache): the
/// CPU at f32 precision is the reference, the CPU's int8 path the yardstick.
fn same_model(device: &Device, spec: FixtureSpec) {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_fixture(dir.path(), "m.gguf", &spec);
    let mut reference = load(&path);
    reference.set_precision(Precision::F32);
    let cpu = load(&path);
    let mut dev = load(&path);
    dev.place_on(device).unwrap();
    assert!(dev.on_device() && !cpu.on_device());
    let v = cpu.vocab_size();
    let what = format!("{:?}/{:?}", spec.dtype, spec.embd_dtype);
    let prompt: Vec<u32> = (0..7).map(|i| (i * 37 + 5) % 256).collect();
    let mut caches = [&reference, &cpu, &dev].map(|m| m.new_cache(32).unwrap());
    let mut run = |tokens: &[u32]| -> Vec<Vec<f32>> {
        [&reference, &cpu, &dev]
            .iter()
            .zip(caches.iter_mut())
            .map(|(m, c)| m.forward(tokens, c, Logits::All).unwrap())
            .collect()
    };
    let out = run(&prompt);
    within_cpu_error(&what, &out[0], &out[1], &out[2], v);
    let mut next = argmax(&out[0][out[0].len() - v..]).0 as u32;
    for _ in 0..2 {
        let out = run(&[next]);
        within_cpu_error(&format!("{what} decode"), &out[0], &out[1], &out[2], v);
        next = argmax(&out[0]).0 as u32;
    }
}

#[test]
fn the_shim_runs_the_model_like_the_cpu_for_every_weight_type() {
    // One layer: the types, not the depth, are under test (the shim is slow).
    let t = |dtype, embd_dtype, hidden| FixtureSpec {
        hidden,
        ffn: 2 * hidden,
        n_layers: 1,
        dtype,
        embd_dtype,
        weight_scale: 0.1,
        ..FixtureSpec::default()
    };
    let devices = devices();
    for spec in [
        t(DType::Q8_0, DType::Q8_0, 64),
        t(DType::Q4K, DType::Q4K, 256),
        t(DType::Q6K, DType::Q6K, 256),
        t(DType::Q5_0, DType::Q5_0, 64),
        t(DType::Q4_0, DType::Q4_0, 64),
        t(DType::Q4_1, DType::Q4_1, 64),
        t(DType::F16, DType::F16, 64),
        t(DType::BF16, DType::BF16, 64),
        t(DType::F32, DType::F32, 64),
    ] {
        for d in &devices {
            same_model(d, spec.clone());
        }
    }
}

/// Prompts longer than the MMVQ limit go through the tiled MMQ kernels as generated rows, and
/// through the tensor-core ones as a prompt's.
#[test]
fn a_long_prefill_through_mmq_and_the_tensor_cores_matches_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_fixture(dir.path(), "m.gguf", &FixtureSpec::default());
    let cpu = load(&path);
    let mut dev = load(&path);
    dev.place_on(devices().last().unwrap()).unwrap();
    let prompt: Vec<u32> = (0..40).map(|i| (i * 53 + 7) % 256).collect();
    let a = cpu
        .forward(&prompt, &mut cpu.new_cache(64).unwrap(), Logits::All)
        .unwrap();
    let b = dev
        .forward(&prompt, &mut dev.new_cache(64).unwrap(), Logits::All)
        .unwrap();
    let d = rel_diff(&a, &b);
    assert!(d < 0.02, "logits differ by {d}");
    // The same tokens as a prompt: the tensor-core products where the device has them.
    let c = dev
        .forward_prompt(&prompt, &mut dev.new_cache(64).unwrap(), Logits::All)
        .unwrap();
    let d = rel_diff(&a, &c);
    assert!(d < 0.02, "logits of the prompt's rows differ by {d}");
}

/// Each request alone, then all of them submitted at once (one batch per step), to completion.
fn tokens_of(e: &cascade::engine::Engine, reqs: &[cascade::engine::Request]) -> [Vec<Vec<u32>>; 2] {
    use cascade::engine::Event;
    let alone = reqs
        .iter()
        .map(|r| e.generate(r, |_| {}).unwrap().tokens)
        .collect();
    let handles: Vec<_> = reqs.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
    let batched = handles
        .into_iter()
        .map(|h| loop {
            match h.recv().expect("events end with Done") {
                Event::Done(c) => break c.tokens,
                Event::Failed(e) => panic!("request failed: {e}"),
                Event::Tokens { .. } => {}
            }
        })
        .collect();
    [alone, batched]
}

/// The scheduler over models placed on the shim (and on the GPU when there is one): greedy
/// steps come back as the device's argmax, a request batched gives bitwise its tokens alone,
/// and exact speculation (the draft on the device, or on the CPU) gives the target-only tokens.
#[test]
fn the_scheduler_runs_on_the_shim_and_exact_equals_target_only() {
    for dev in devices() {
        scheduler_on(&dev);
    }
}

fn scheduler_on(dev: &Device) {
    use cascade::engine::{
        DraftLen, Engine, GenerateConfig, Mode, Prompt, Request, SchedulerConfig, SpecConfig,
    };
    let dir = tempfile::tempdir().unwrap();
    let (t, d) = common::fixture_pair(dir.path());
    let open = |store: &WeightStore, p: &std::path::Path, on_device: bool| {
        let mut m = Model::load(store, p, &OpenOptions::default()).unwrap();
        if on_device {
            m.place_on(dev).unwrap();
        }
        m
    };
    let sched = SchedulerConfig {
        step_tokens: 24,
        ..Default::default()
    };
    let engine = |draft: Option<bool>| {
        let store = WeightStore::new();
        let (tm, dm) = (open(&store, &t, true), draft.map(|s| open(&store, &d, s)));
        Engine::with_models(store, tm, dm, Some(2), sched).unwrap()
    };
    let reqs = |mode: Mode| -> Vec<Request> {
        (0..4u32)
            .map(|r| Request {
                prompt: Prompt::Tokens(
                    (0..5 + 7 * r)
                        .map(|i| 3 + (i * 37 + r * 11) % 200)
                        .collect(),
                ),
                mode,
                config: GenerateConfig {
                    max_tokens: 12,
                    stop_at_eog: false,
                    ..Default::default()
                },
                grammar: None,
            })
            .collect()
    };
    let target_only = engine(None);
    assert!(target_only.target().on_device());
    let [alone, batched] = tokens_of(&target_only, &reqs(Mode::Target));
    assert!(
        alone.iter().all(|t| t.len() == 12),
        "every request runs to max_tokens"
    );
    assert_eq!(batched, alone, "target-only, batched against alone");
    // The steps ran as CUDA graphs (kept while a batch's shapes hold, updated as they change);
    // kernel by kernel they give the same tokens.
    let g = target_only.target().device_graph_stats().unwrap();
    assert!(g.reused > 0 && g.updated + g.instantiated > 1, "{g:?}");
    let direct = {
        let store = WeightStore::new();
        let mut tm = open(&store, &t, true);
        tm.set_device_graphs(false);
        Engine::with_models(store, tm, None, Some(2), sched).unwrap()
    };
    assert_eq!(
        tokens_of(&direct, &reqs(Mode::Target)),
        [alone.clone(), alone.clone()]
    );
    assert_eq!(direct.target().device_graph_stats().unwrap().kernels, 0);
    // The device's argmax is the greedy choice of the logits the same model returns whole.
    let m = target_only.target();
    let Prompt::Tokens(p0) = &reqs(Mode::Target)[0].prompt else {
        unreachable!()
    };
    let mut cache = m.new_cache(64).unwrap();
    let mut input = p0.clone();
    for (i, &tok) in alone[0].iter().enumerate() {
        // The prompt's rows as the scheduler computes them (as a prompt's), then one each.
        let logits = if i == 0 {
            m.forward_prompt(&input, &mut cache, Logits::Last)
        } else {
            m.forward(&input, &mut cache, Logits::Last)
        }
        .unwrap();
        let best = (0..logits.len())
            .filter(|&id| m.is_valid_token(id as u32))
            .fold(None, |b: Option<usize>, id| match b {
                Some(b) if logits[b] >= logits[id] => Some(b),
                _ => Some(id),
            });
        assert_eq!(Some(tok as usize), best, "token {i} of request 0");
        input = vec![tok];
    }
    // A fixed draft length drafts every round, so the draft model's forwards run.
    let exact = Mode::Speculative(SpecConfig {
        draft_len: DraftLen::Fixed(3),
        ..SpecConfig::default()
    });
    for draft_on_device in [true, false] {
        let e = engine(Some(draft_on_device));
        assert_eq!(e.draft().unwrap().on_device(), draft_on_device);
        let [exact_alone, exact_batched] = tokens_of(&e, &reqs(exact));
        assert_eq!(
            exact_alone, alone,
            "exact alone, draft on the device: {draft_on_device}"
        );
        assert_eq!(
            exact_batched, alone,
            "exact batched, draft on the device: {draft_on_device}"
        );
        let drafted = e.generate(&reqs(exact)[3], |_| {}).unwrap().stats.drafted;
        assert!(
            drafted > 0,
            "nothing drafted, draft on the device: {draft_on_device}"
        );
    }
}

/// On a device whose prompt rows take other kernels than generated ones (the shim's tensor-core
/// products), only prompt positions are cached prefixes: a second turn whose prompt holds the
/// first turn's prompt and answer reuses the prompt alone, and gives the tokens it gives with
/// nothing cached. On the CPU (one kernel for every row) the answer is reused too.
#[test]
fn only_prompt_positions_are_reused_where_prompt_rows_take_other_kernels() {
    use cascade::engine::{Engine, GenerateConfig, Mode, Prompt, Request, SchedulerConfig};
    let dir = tempfile::tempdir().unwrap();
    let (t, _) = common::fixture_pair(dir.path());
    let engine = |dev: Option<&Device>| {
        let store = WeightStore::new();
        let mut m = Model::load(&store, &t, &OpenOptions::default()).unwrap();
        if let Some(d) = dev {
            m.place_on(d).unwrap();
        }
        let sched = SchedulerConfig {
            block_size: 8,
            ..Default::default()
        };
        Engine::with_models(store, m, None, Some(2), sched).unwrap()
    };
    let req = |prompt: Vec<u32>, max_tokens| Request {
        prompt: Prompt::Tokens(prompt),
        mode: Mode::Target,
        config: GenerateConfig {
            max_tokens,
            stop_at_eog: false,
            ..Default::default()
        },
        grammar: None,
    };
    let first: Vec<u32> = (0..20).map(|i| 5 + (i * 29) % 200).collect();
    for dev in [Some(Device::shim()), None] {
        let e = engine(dev.as_ref());
        let differ = e.target().prompt_kernels_differ();
        assert_eq!(differ, dev.is_some());
        let answer = e.generate(&req(first.clone(), 12), |_| {}).unwrap().tokens;
        let mut second = first.clone();
        second.extend(&answer);
        second.extend([7, 8, 9]);
        let warm = e.generate(&req(second.clone(), 6), |_| {}).unwrap();
        let cold = engine(dev.as_ref())
            .generate(&req(second.clone(), 6), |_| {})
            .unwrap();
        assert_eq!(cold.cached_tokens, 0);
        assert_eq!(
            warm.tokens, cold.tokens,
            "a cached prefix changed the tokens"
        );
        if differ {
            assert_eq!(
                warm.cached_tokens,
                first.len(),
                "only the first prompt is reused"
            );
        } else {
            // Every computed position: the answer's last token was never fed.
            assert_eq!(warm.cached_tokens, first.len() + answer.len() - 1);
        }
    }
}

/// Sampled requests with a top-k cut: the scheduler has their rows reduced to the top k (on a
/// device, by the device) and draws, token for token, what whole rows give the single-request
/// loop; batched as alone. Exact speculation drafts and verifies on reduced rows too, and gives
/// the single-request speculative loop's tokens. On the CPU, the shim and a GPU when there is one.
#[test]
fn sampled_top_k_rows_reduced_by_the_scheduler_draw_what_whole_rows_draw() {
    let dir = tempfile::tempdir().unwrap();
    let pair = common::fixture_pair(dir.path());
    let mut places: Vec<Option<Device>> = vec![None];
    places.extend(devices().into_iter().map(Some));
    for dev in &places {
        let on = if dev.is_some() { "device" } else { "CPU" };
        let engine = |with_draft: bool| sampling_engine(&pair, dev.as_ref(), with_draft);
        sampled_plain(&engine(false), on);
        sampled_exact(&engine(true), on);
    }
}

use cascade::engine::{Engine, Mode, Prompt, Request, SpecConfig};

/// The fixture pair's target (and draft) on `dev` (the CPU when none), under the scheduler.
fn sampling_engine(
    (t, d): &(std::path::PathBuf, std::path::PathBuf),
    dev: Option<&Device>,
    with_draft: bool,
) -> Engine {
    let open = |store: &WeightStore, p: &std::path::Path| {
        let mut m = Model::load(store, p, &OpenOptions::default()).unwrap();
        if let Some(dev) = dev {
            m.place_on(dev).unwrap();
        }
        m
    };
    let store = WeightStore::new();
    let (tm, dm) = (open(&store, t), with_draft.then(|| open(&store, d)));
    let sched = cascade::engine::SchedulerConfig {
        step_tokens: 24,
        ..Default::default()
    };
    Engine::with_models(store, tm, dm, Some(2), sched).unwrap()
}

/// Three sampled requests with top-k cuts of 12, 40 and 64.
fn sampled_requests(mode: Mode) -> Vec<Request> {
    use cascade::engine::{GenerateConfig, SamplingParams};
    (0..3u32)
        .map(|r| Request {
            prompt: Prompt::Tokens((0..4 + 6 * r).map(|i| 3 + (i * 41 + r * 7) % 200).collect()),
            mode,
            config: GenerateConfig {
                max_tokens: 10,
                stop_at_eog: false,
                sampling: SamplingParams {
                    temperature: 1.5,
                    top_k: [12, 40, 64][r as usize],
                    top_p: 0.97,
                    seed: 5 + r as u64,
                },
            },
            grammar: None,
        })
        .collect()
}

fn prompt_of(req: &Request) -> &[u32] {
    match &req.prompt {
        Prompt::Tokens(p) => p,
        _ => unreachable!("token prompts"),
    }
}

/// Target-only: reduced rows, batched as alone, and the single-request loop's tokens on whole
/// rows.
fn sampled_plain(e: &Engine, on: &str) {
    let reqs = sampled_requests(Mode::Target);
    let [alone, batched] = tokens_of(e, &reqs);
    assert_eq!(batched, alone, "{on}: batched against alone");
    let rows = e.stats().logit_rows;
    assert!(rows.top_k > 0 && rows.whole == 0, "{on}: {rows:?}");
    for (r, req) in reqs.iter().enumerate() {
        let g =
            cascade::engine::generate(e.target(), prompt_of(req), &req.config, |_| true).unwrap();
        assert_eq!(g.tokens, alone[r], "{on}: request {r}, whole rows alone");
    }
    let distinct: std::collections::HashSet<_> = alone.iter().flatten().collect();
    assert!(
        distinct.len() > 10,
        "{on}: sampling drew few ids: {alone:?}"
    );
}

/// Exact speculation with a fixed draft length: reduced rows (the draft's too), batched as
/// alone, drafting every round. (That a reduced row draws bitwise what its whole row draws is
/// the sampler's test, `a_row_reduced_to_its_top_k_*`; that sampled exact through the
/// scheduler follows the target's distribution, the chi-squared test in the engine.)
fn sampled_exact(e: &Engine, on: &str) {
    use cascade::engine::DraftLen;
    let spec = SpecConfig {
        draft_len: DraftLen::Fixed(3),
        ..SpecConfig::default()
    };
    let reqs = sampled_requests(Mode::Speculative(spec));
    let [spec_alone, spec_batched] = tokens_of(e, &reqs);
    assert_eq!(
        spec_batched, spec_alone,
        "{on}: exact, batched against alone"
    );
    let rows = e.stats().logit_rows;
    assert!(rows.top_k > 0 && rows.whole == 0, "{on}: exact: {rows:?}");
    for req in &reqs {
        let c = e.generate(req, |_| {}).unwrap();
        assert!(c.stats.drafted > 0, "{on}: nothing drafted");
    }
}
