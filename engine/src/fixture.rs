//! Tiny random-weight models written as real GGUF files, for tests and benchmarks that must run in
//! milliseconds. The tokenizer is byte-level BPE over the 256 byte tokens, a few merges and
//! ChatML special tokens, so every path of the real loader is exercised.

use std::path::Path;

use cascade_kernels::quant::random_data;
use cascade_weights::{Architecture, DType, GgufWriter, Value};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The shape and types of a fixture model.
#[derive(Debug, Clone)]
pub struct FixtureSpec {
    pub arch: Architecture,
    pub hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub ffn: usize,
    pub context_length: usize,
    /// Type of the layer matrices.
    pub dtype: DType,
    /// Type of the embedding (and output, unless tied).
    pub embd_dtype: DType,
    pub tied: bool,
    /// Extra unused padding rows appended to the vocabulary (like Qwen's).
    pub pad_vocab: usize,
    pub seed: u64,
    /// Multiplies every matrix's scales (1: the type's default magnitude). Below 1 the
    /// activations and attention scores stay small, so that two roundings of one model keep
    /// the same winners (tests comparing the GPU path with the CPU's).
    pub weight_scale: f32,
}

impl Default for FixtureSpec {
    fn default() -> Self {
        FixtureSpec {
            arch: Architecture::Qwen2,
            hidden: 64,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            ffn: 128,
            context_length: 256,
            dtype: DType::Q8_0,
            embd_dtype: DType::Q8_0,
            tied: false,
            pad_vocab: 8,
            seed: 42,
            weight_scale: 1.0,
        }
    }
}

/// Merged tokens the fixture vocabulary adds after the 256 bytes.
const MERGES: [(&str, &str); 6] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("Ġ", "a"),
    ("e", "r"),
];
pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
pub const CHATML_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The byte-level vocabulary: 256 byte tokens, the merges, the specials, then padding.
pub fn vocab(pad: usize) -> (Vec<String>, Vec<i32>) {
    let mut n = 0u32;
    let mut tokens: Vec<String> = (0..256u32)
        .map(|b| {
            let printable =
                (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let c = if printable {
                char::from_u32(b).unwrap_or('?')
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap_or('?')
            };
            c.to_string()
        })
        .collect();
    let mut types = vec![1i32; 256];
    for (a, b) in MERGES {
        tokens.push(format!("{a}{b}"));
        types.push(1);
    }
    for s in SPECIALS {
        tokens.push(s.to_string());
        types.push(3);
    }
    for i in 0..pad {
        tokens.push(format!("[PAD{}]", tokens.len() + i));
        types.push(5);
    }
    (tokens, types)
}

fn scale_for(dtype: DType) -> f32 {
    match dtype {
        DType::Q8_0 => 0.0008,
        DType::Q6K => 0.0004,
        DType::Q5_0 | DType::Q5_1 | DType::Q5K => 0.004,
        DType::Q4_0 | DType::Q4_1 | DType::Q4K => 0.008,
        DType::Q2K | DType::Q3K => 0.02,
        DType::F32 | DType::F16 | DType::BF16 => 0.1,
    }
}

/// Builds the fixture's GGUF file in memory.
pub fn build(spec: &FixtureSpec) -> GgufWriter {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let (tokens, types) = vocab(spec.pad_vocab);
    let n_vocab = tokens.len();
    let a = spec.arch.name();
    let head_dim = spec.hidden / spec.n_heads;
    let kv = spec.n_kv_heads * head_dim;
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String(a.into()))
        .meta("general.name", Value::String("cascade fixture".into()))
        .meta(
            &format!("{a}.block_count"),
            Value::U32(spec.n_layers as u32),
        )
        .meta(
            &format!("{a}.context_length"),
            Value::U32(spec.context_length as u32),
        )
        .meta(
            &format!("{a}.embedding_length"),
            Value::U32(spec.hidden as u32),
        )
        .meta(
            &format!("{a}.feed_forward_length"),
            Value::U32(spec.ffn as u32),
        )
        .meta(
            &format!("{a}.attention.head_count"),
            Value::U32(spec.n_heads as u32),
        )
        .meta(
            &format!("{a}.attention.head_count_kv"),
            Value::U32(spec.n_kv_heads as u32),
        )
        .meta(&format!("{a}.rope.freq_base"), Value::F32(10000.0))
        .meta(
            &format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-6),
        )
        .meta("tokenizer.ggml.model", Value::String("gpt2".into()))
        .meta("tokenizer.ggml.pre", Value::String("qwen2".into()))
        .meta(
            "tokenizer.ggml.tokens",
            Value::Array(tokens.iter().map(|t| Value::String(t.clone())).collect()),
        )
        .meta(
            "tokenizer.ggml.token_type",
            Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
        )
        .meta(
            "tokenizer.ggml.merges",
            Value::Array(
                MERGES
                    .iter()
                    .map(|(a, b)| Value::String(format!("{a} {b}")))
                    .collect(),
            ),
        )
        .meta(
            "tokenizer.ggml.bos_token_id",
            Value::U32(256 + MERGES.len() as u32),
        )
        .meta(
            "tokenizer.ggml.eos_token_id",
            Value::U32(256 + MERGES.len() as u32 + 2),
        )
        .meta("tokenizer.ggml.add_bos_token", Value::Bool(false))
        .meta(
            "tokenizer.chat_template",
            Value::String(CHATML_TEMPLATE.into()),
        );

    let mat = |w: &mut GgufWriter,
               rng: &mut ChaCha8Rng,
               name: &str,
               rows: usize,
               cols: usize,
               dtype: DType| {
        let scale = scale_for(dtype) * spec.weight_scale;
        let data = random_data(dtype, rows * cols, scale, || rng.random());
        w.tensor(name, &[cols as u64, rows as u64], dtype, data);
    };
    let h = spec.hidden;
    mat(
        &mut w,
        &mut rng,
        "token_embd.weight",
        n_vocab,
        h,
        spec.embd_dtype,
    );
    if !spec.tied {
        mat(
            &mut w,
            &mut rng,
            "output.weight",
            n_vocab,
            h,
            spec.embd_dtype,
        );
    }
    let ones = |n: usize, rng: &mut ChaCha8Rng| -> Vec<u8> {
        (0..n)
            .flat_map(|_| (1.0f32 + rng.random_range(-0.1..0.1)).to_le_bytes())
            .collect()
    };
    let norm = ones(h, &mut rng);
    w.tensor("output_norm.weight", &[h as u64], DType::F32, norm);
    for l in 0..spec.n_layers {
        let n = |s: &str| format!("blk.{l}.{s}");
        let an = ones(h, &mut rng);
        let fnn = ones(h, &mut rng);
        w.tensor(&n("attn_norm.weight"), &[h as u64], DType::F32, an);
        w.tensor(&n("ffn_norm.weight"), &[h as u64], DType::F32, fnn);
        mat(&mut w, &mut rng, &n("attn_q.weight"), h, h, spec.dtype);
        mat(&mut w, &mut rng, &n("attn_k.weight"), kv, h, spec.dtype);
        mat(&mut w, &mut rng, &n("attn_v.weight"), kv, h, spec.dtype);
        mat(&mut w, &mut rng, &n("attn_output.weight"), h, h, spec.dtype);
        if spec.arch == Architecture::Qwen2 {
            for (s, len) in [("attn_q.bias", h), ("attn_k.bias", kv), ("attn_v.bias", kv)] {
                let b: Vec<u8> = (0..len)
                    .flat_map(|_| rng.random_range(-0.1f32..0.1).to_le_bytes())
                    .collect();
                w.tensor(&n(s), &[len as u64], DType::F32, b);
            }
        }
        mat(
            &mut w,
            &mut rng,
            &n("ffn_gate.weight"),
            spec.ffn,
            h,
            spec.dtype,
        );
        mat(
            &mut w,
            &mut rng,
            &n("ffn_up.weight"),
            spec.ffn,
            h,
            spec.dtype,
        );
        mat(
            &mut w,
            &mut rng,
            &n("ffn_down.weight"),
            h,
            spec.ffn,
            spec.dtype,
        );
    }
    w
}

/// Writes the fixture to `path`.
pub fn write(spec: &FixtureSpec, path: &Path) -> cascade_weights::Result<()> {
    build(spec).write(path)
}
