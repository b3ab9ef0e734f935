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
    let mut caches = [&reference, &cpu, &dev].map(|m| m.new_cache(32));
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

/// Prompts longer than the MMVQ limit go through the tiled MMQ kernels.
#[test]
fn a_long_prefill_through_mmq_matches_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_fixture(dir.path(), "m.gguf", &FixtureSpec::default());
    let cpu = load(&path);
    let mut dev = load(&path);
    dev.place_on(devices().last().unwrap()).unwrap();
    let prompt: Vec<u32> = (0..40).map(|i| (i * 53 + 7) % 256).collect();
    let a = cpu
        .forward(&prompt, &mut cpu.new_cache(64), Logits::All)
        .unwrap();
    let b = dev
        .forward(&prompt, &mut dev.new_cache(64), Logits::All)
        .unwrap();
    let d = rel_diff(&a, &b);
    assert!(d < 0.02, "logits differ by {d}");
}
