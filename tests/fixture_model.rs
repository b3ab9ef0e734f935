//! The whole engine on tiny random-weight fixture models written as real GGUF files.

mod common;

use cascade::engine::fixture::FixtureSpec;
use cascade::engine::{
    generate, Engine, EngineConfig, GenerateConfig, Logits, Mode, Model, Precision, Prompt,
    Request, Role, SamplingParams,
};
use cascade::weights::{Architecture, DType, OpenOptions, WeightStore};

fn load(path: &std::path::Path) -> Model {
    Model::load(&WeightStore::new(), path, &OpenOptions::default()).unwrap()
}

fn prompt_ids(model: &Model) -> Vec<u32> {
    model
        .tokenizer
        .encode("the cat sat on the mat in the hat", true)
        .unwrap()
}

#[test]
fn generation_is_deterministic_and_thread_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_fixture(dir.path(), "m.gguf", &FixtureSpec::default());
    let run = |threads| {
        let engine = Engine::load(&EngineConfig {
            target: path.clone(),
            threads: Some(threads),
            ..Default::default()
        })
        .unwrap();
        let req = Request {
            prompt: Prompt::Text("the weather in the hills".into()),
            mode: Mode::Target,
            config: GenerateConfig {
                max_tokens: 24,
                stop_at_eog: false,
                ..Default::default()
            },
            grammar: None,
        };
        engine.generate(&req, |_| {}).unwrap()
    };
    let a = run(1);
    let b = run(2);
    assert_eq!(a.tokens.len(), 24);
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.text, b.text);
}

#[test]
fn rollback_gives_bitwise_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_fixture(dir.path(), "m.gguf", &FixtureSpec::default());
    let model = load(&path);
    let prompt = prompt_ids(&model);
    let n = prompt.len();
    let mut cache = model.new_cache(64).unwrap();
    model.forward(&prompt, &mut cache, Logits::Last).unwrap();
    // Straight decode of 6 tokens, keeping each step's logits.
    let next: Vec<u32> = vec![5, 77, 260, 33, 104, 12];
    let straight: Vec<Vec<f32>> = next
        .iter()
        .map(|&t| model.forward(&[t], &mut cache, Logits::Last).unwrap())
        .collect();
    // Go back to n + 2 after writing other tokens past it, then decode the rest again.
    model.forward(&[9, 9, 9], &mut cache, Logits::Last).unwrap();
    cache.rollback_to(n + 2).unwrap();
    for (i, &t) in next.iter().enumerate().skip(2) {
        let again = model.forward(&[t], &mut cache, Logits::Last).unwrap();
        assert_eq!(again, straight[i], "step {i}");
    }
    // Commit / rollback returns to the checkpoint.
    cache.commit();
    model.forward(&[1, 2], &mut cache, Logits::Last).unwrap();
    cache.rollback();
    assert_eq!(cache.len(), n + next.len());
}

#[test]
fn batched_forward_equals_one_token_at_a_time() {
    // Lossless speculation rests on this: a token's logits are bitwise the same whether it is
    // computed alone, in a batch, after a split, or with another thread count; on both paths.
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for dtype in [
        DType::Q8_0,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
        DType::Q5_0,
        DType::Q4_1,
        DType::F32,
    ] {
        for precision in [Precision::Int8, Precision::F32] {
            let spec = FixtureSpec {
                hidden: 256,
                ffn: 512,
                n_heads: 4,
                n_kv_heads: 2,
                dtype,
                embd_dtype: dtype,
                ..Default::default()
            };
            let dir = tempfile::tempdir().unwrap();
            let path = common::write_fixture(dir.path(), "m.gguf", &spec);
            let mut model = load(&path);
            model.set_precision(precision);
            let tokens = prompt_ids(&model);
            let v = model.vocab_size();
            let mut c1 = model.new_cache(64).unwrap();
            let all = model.forward(&tokens, &mut c1, Logits::All).unwrap();
            let mut c2 = model.new_cache(64).unwrap();
            for (i, &t) in tokens.iter().enumerate() {
                let one = model.forward(&[t], &mut c2, Logits::Last).unwrap();
                assert_eq!(
                    one,
                    all[i * v..(i + 1) * v],
                    "{dtype} {precision:?} position {i}"
                );
            }
            // A split in the middle (prefill 3, then a batch of the rest) gives the same logits.
            let mut c3 = model.new_cache(64).unwrap();
            model.forward(&tokens[..3], &mut c3, Logits::Last).unwrap();
            let rest = model.forward(&tokens[3..], &mut c3, Logits::All).unwrap();
            assert_eq!(rest, all[3 * v..], "{dtype} {precision:?} split");
            let mut c4 = model.new_cache(64).unwrap();
            let single =
                one_thread.install(|| model.forward(&tokens, &mut c4, Logits::All).unwrap());
            assert_eq!(single, all, "{dtype} {precision:?} with one thread");
        }
    }
}

#[test]
fn padding_rows_are_never_sampled() {
    let dir = tempfile::tempdir().unwrap();
    let spec = FixtureSpec {
        pad_vocab: 40,
        ..Default::default()
    };
    let path = common::write_fixture(dir.path(), "m.gguf", &spec);
    let model = load(&path);
    let real = model.tokenizer.n_vocab() - 40;
    assert!(model.vocab_size() > real);
    let prompt = prompt_ids(&model);
    for seed in 0..4 {
        let cfg = GenerateConfig {
            max_tokens: 60,
            sampling: SamplingParams {
                temperature: 5.0,
                top_k: 0,
                top_p: 1.0,
                seed,
            },
            stop_at_eog: false,
        };
        let g = generate(&model, &prompt, &cfg, |_| true).unwrap();
        assert!(
            g.tokens.iter().all(|&t| (t as usize) < real),
            "{:?}",
            g.tokens
        );
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_fixture(dir.path(), "m.gguf", &FixtureSpec::default());
    let model = load(&path);
    let prompt = prompt_ids(&model);
    let cfg = |seed| GenerateConfig {
        max_tokens: 30,
        sampling: SamplingParams {
            temperature: 0.9,
            top_k: 40,
            top_p: 0.95,
            seed,
        },
        stop_at_eog: false,
    };
    let a = generate(&model, &prompt, &cfg(7), |_| true).unwrap();
    let b = generate(&model, &prompt, &cfg(7), |_| true).unwrap();
    let c = generate(&model, &prompt, &cfg(8), |_| true).unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_ne!(a.tokens, c.tokens);
}

#[test]
fn hugging_face_folder_gives_the_same_logits_as_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let spec = FixtureSpec {
        dtype: DType::F32,
        embd_dtype: DType::F32,
        ..Default::default()
    };
    let gguf = common::write_fixture(dir.path(), "m.gguf", &spec);
    let folder = common::hf_folder_from_gguf(&gguf, &spec, &dir.path().join("hf"));
    let a = load(&gguf);
    let b = load(&folder);
    assert_eq!(a.config, b.config);
    let ids = prompt_ids(&a);
    assert_eq!(
        ids,
        b.tokenizer
            .encode("the cat sat on the mat in the hat", true)
            .unwrap()
    );
    let mut ca = a.new_cache(32).unwrap();
    let mut cb = b.new_cache(32).unwrap();
    assert_eq!(
        a.forward(&ids, &mut ca, Logits::All).unwrap(),
        b.forward(&ids, &mut cb, Logits::All).unwrap()
    );
}

#[test]
fn llama_architecture_and_tied_embeddings_load_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let spec = FixtureSpec {
        arch: Architecture::Llama,
        tied: true,
        ..Default::default()
    };
    let path = common::write_fixture(dir.path(), "m.gguf", &spec);
    let model = load(&path);
    assert!(model.config.tied_embeddings && !model.config.qkv_bias);
    assert_eq!(
        model.config.rope_style,
        cascade::weights::RopeStyle::Interleaved
    );
    assert!(model.files.get("output.weight").is_none());
    let cfg = GenerateConfig {
        max_tokens: 12,
        stop_at_eog: false,
        ..Default::default()
    };
    let g = generate(&model, &prompt_ids(&model), &cfg, |_| true).unwrap();
    // The greedy tokens are a plain argmax loop's over the forward pass.
    let mut cache = model.new_cache(64).unwrap();
    let mut logits = model
        .forward(&prompt_ids(&model), &mut cache, Logits::Last)
        .unwrap();
    let mut want = Vec::new();
    while want.len() < 12 {
        let t = common::argmax(&logits, model.valid_mask());
        want.push(t);
        logits = model.forward(&[t], &mut cache, Logits::Last).unwrap();
    }
    assert_eq!(g.tokens, want);
}

#[test]
fn weights_are_views_into_one_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_fixture(dir.path(), "m.gguf", &FixtureSpec::default());
    let store = WeightStore::new();
    let a = Model::load(&store, &path, &OpenOptions::default()).unwrap();
    let b = Model::load(&store, &path, &OpenOptions::default()).unwrap();
    assert_eq!(
        store.mapped_files(),
        1,
        "the same file opened twice is mapped once"
    );
    let ta = a.files.tensor("blk.0.attn_q.weight").unwrap();
    let tb = b.files.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(ta.bytes().as_ptr(), tb.bytes().as_ptr());
}

#[test]
fn chat_prompt_uses_the_template() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_fixture(dir.path(), "m.gguf", &FixtureSpec::default());
    let engine = Engine::load(&EngineConfig {
        target: path,
        ..Default::default()
    })
    .unwrap();
    let chat = engine
        .encode(
            Role::Target,
            &Prompt::Chat(vec![cascade::engine::Message::user("hi")]),
        )
        .unwrap();
    let text = engine
        .encode(
            Role::Target,
            &Prompt::Text("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n".into()),
        )
        .unwrap();
    assert_eq!(chat, text);
    let im_start = engine
        .target()
        .tokenizer
        .encode("<|im_start|>", false)
        .unwrap();
    assert_eq!(
        im_start.len(),
        1,
        "special tokens in text are parsed as special tokens"
    );
}

/// FR-Spec: a model whose output layer is restricted to some tokens gives, for those tokens,
/// bitwise the full model's logits, -inf for every other, for every weight type of the output
/// matrix (including a repacked, interleaved one); speculative decoding with such a draft still
/// emits exactly the target's greedy tokens.
#[test]
fn a_restricted_output_layer_gives_the_full_logits_of_its_tokens() {
    let dir = tempfile::tempdir().unwrap();
    for (name, embd_dtype) in [
        ("q8", DType::Q8_0),
        ("q6k", DType::Q6K),
        ("q4k", DType::Q4K),
    ] {
        let spec = FixtureSpec {
            hidden: 256,
            ffn: 512,
            n_layers: 1,
            embd_dtype,
            // 272 vocabulary rows: whole groups of eight, so the output matrix interleaves.
            pad_vocab: 7,
            ..FixtureSpec::default()
        };
        let path = common::write_fixture(dir.path(), &format!("{name}.gguf"), &spec);
        // K-quant output matrices through their repacked (interleaved) copy.
        let path = if embd_dtype == DType::Q8_0 {
            path
        } else {
            let r = dir.path().join(format!("{name}.r8.gguf"));
            cascade::engine::repack::repack_gguf(&path, &r).unwrap();
            r
        };
        let full = load(&path);
        let mut sub = load(&path);
        let ids: Vec<u32> = (0..full.vocab_size() as u32)
            .filter(|i| i % 3 != 1)
            .collect();
        sub.restrict_output(&ids).unwrap();
        assert_eq!(sub.output_tokens(), ids.len());
        let prompt = [5u32, 77, 140, 201];
        let a = full
            .forward(&prompt, &mut full.new_cache(16).unwrap(), Logits::All)
            .unwrap();
        let b = sub
            .forward(&prompt, &mut sub.new_cache(16).unwrap(), Logits::All)
            .unwrap();
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let id = (i % full.vocab_size()) as u32;
            if id % 3 != 1 {
                assert_eq!(x.to_bits(), y.to_bits(), "{name}: token {id}");
            } else {
                assert_eq!(*y, f32::NEG_INFINITY, "{name}: token {id}");
            }
        }
    }
    assert!(load(&common::write_fixture(
        dir.path(),
        "m.gguf",
        &FixtureSpec::default()
    ))
    .restrict_output(&[1, 100_000])
    .is_err());
}
